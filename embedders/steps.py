"""Time steps: how a model that reads a time series splits the run's window into steps.

A model declares its steps in its spec (`ModelSpec.steps`); the sensor configuration it
fetches carries them (tasks/sources/registry.py `SensorConfig.steps`), so they are part of
the inputs group's name and of the store's identity. A `monthly` or `spans` step is fetched
as one composite of its own span (the sensor configuration's `composite`, over the step's
days only); an `acquisitions` step is one acquisition of the window, read as it is (no
composite), with its date.

Imports nothing heavy: the registry lists models without loading them.
"""

from __future__ import annotations

import calendar
import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from typing import Literal

from embedders.naming import given

StepKind = Literal["monthly", "spans", "acquisitions"]
STEP_KINDS: tuple[StepKind, ...] = ("monthly", "spans", "acquisitions")


@dataclass(frozen=True)
class TimeSteps:
    """How a window becomes steps.

    `monthly`: the window's calendar months (the first and last clipped to the window), one
    composite each; `count` is how many months the model takes (0: as many as the window
    holds). `spans`: the window cut into `count` spans of whole days, as equal as days allow.
    `acquisitions`: `count` of each point's own acquisitions in the window, each read as it
    is, chosen by `choose` with `seed` (a point with fewer has its last steps padded).
    """

    kind: StepKind
    count: int = 0
    seed: int = 0  # acquisitions: which ones are drawn (`choose`); the other kinds have none

    def __post_init__(self) -> None:
        if self.kind not in STEP_KINDS:
            raise ValueError(f"time steps of kind {self.kind!r}: the kinds are {STEP_KINDS}")
        least = 0 if self.kind == "monthly" else 1
        if self.count < least:
            raise ValueError(
                f"time steps {self.kind} need a count of at least {least}, got {self.count}"
            )
        if self.seed and self.kind != "acquisitions":
            raise ValueError(
                f"time steps {self.kind} take no seed (only acquisitions are drawn); "
                f"leave seed out, got {self.seed}"
            )

    def describe(self) -> str:
        """In words: `12 monthly steps`, `monthly steps`, `4 equal spans`, `40 acquisitions
        drawn with seed 0`."""
        if self.kind == "acquisitions":
            return f"{self.count} acquisitions drawn with seed {self.seed}"
        if self.kind == "spans":
            return f"{self.count} equal spans"
        return f"{self.count} monthly steps" if self.count else "monthly steps"

    def record(self) -> dict[str, object]:
        """The fields a configuration's key and identity hold: the seed only for
        acquisitions, so that the keys of monthly and spans steps stay theirs."""
        fields = asdict(self)
        if self.kind != "acquisitions":
            del fields["seed"]
        return fields

    def choose(self, keys: Sequence[str]) -> list[int]:
        """Which of a point's acquisitions (their keys, in date order) are its steps: the
        indices of `count` of them drawn at random without replacement with `seed`, in date
        order; every one, when there are no more than `count`.

        Each acquisition's rank is a hash of the seed and its key alone, and the `count`
        lowest are taken: a uniform draw that is the same in every run, on every machine,
        whatever the order of the points, and that gives points seeing the same
        acquisitions the same steps (their patches are read together)."""
        if self.kind != "acquisitions":
            raise ValueError(f"{self.describe()} are not drawn from acquisitions")
        ranked = sorted(range(len(keys)), key=lambda i: (_rank(self.seed, keys[i]), i))
        return sorted(ranked[: self.count])

    def spans(self, start: date, end: date) -> tuple[tuple[date, date], ...]:
        """Each step's first and last day (inclusive) in the window start..end (inclusive);
        for acquisitions, the whole window for every step (its acquisition's date is known
        only once the source lists them).

        Raises ValueError, naming the window and what fits, when the window does not hold
        the steps: fewer days than spans, or another number of months than `count`."""
        if end < start:
            raise ValueError(f"the window {start}..{end} ends before it starts")
        if self.kind == "acquisitions":  # any acquisition of the window may be any step
            return ((start, end),) * self.count
        if self.kind == "spans":
            return _equal_spans(start, end, self.count)
        months = _months(start, end)
        if self.count and len(months) != self.count:
            raise ValueError(
                f"{self.describe()} need a window of {self.count} calendar months, and "
                f"{start}..{end} touches {len(months)}; give a window of {self.count} months, "
                f"e.g. {given(start=start.replace(day=1), end=_month_end(start, self.count))}"
            )
        return months


def _rank(seed: int, key: str) -> bytes:
    return hashlib.sha256(f"{seed}\n{key}".encode()).digest()


def _months(start: date, end: date) -> tuple[tuple[date, date], ...]:
    out = []
    first = start
    while first <= end:
        last = first.replace(day=calendar.monthrange(first.year, first.month)[1])
        out.append((first, min(last, end)))
        first = last + timedelta(days=1)
    return tuple(out)


def _month_end(start: date, months: int) -> date:
    """The last day of the `months`-th calendar month from start's month."""
    index = start.year * 12 + start.month - 1 + months - 1
    year, month = divmod(index, 12)
    return date(year, month + 1, calendar.monthrange(year, month + 1)[1])


def _equal_spans(start: date, end: date, count: int) -> tuple[tuple[date, date], ...]:
    days = (end - start).days + 1
    if days < count:
        raise ValueError(
            f"{count} equal spans need at least {count} days, and the window {start}..{end} "
            f"has {days}; give a longer window"
        )
    bounds = [start + timedelta(days=i * days // count) for i in range(count + 1)]
    return tuple((bounds[i], bounds[i + 1] - timedelta(days=1)) for i in range(count))
