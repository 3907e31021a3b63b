"""Time steps: how a model that reads a time series splits the run's window into steps.

A model declares its steps in its spec (`ModelSpec.steps`); the sensor configuration it
fetches carries them (tasks/sources/registry.py `SensorConfig.steps`), so they are part of
the inputs group's name and of the store's identity. Each step is fetched as one composite of
its own span (the sensor configuration's `composite`, over the step's days only).

Imports nothing heavy: the registry lists models without loading them.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

from embedders.naming import given

StepKind = Literal["monthly", "spans"]
STEP_KINDS: tuple[StepKind, ...] = ("monthly", "spans")


@dataclass(frozen=True)
class TimeSteps:
    """How a window becomes steps.

    `monthly`: the window's calendar months (the first and last clipped to the window), one
    composite each; `count` is how many months the model takes (0: as many as the window
    holds). `spans`: the window cut into `count` spans of whole days, as equal as days allow.
    """

    kind: StepKind
    count: int = 0

    def __post_init__(self) -> None:
        if self.kind not in STEP_KINDS:
            raise ValueError(f"time steps of kind {self.kind!r}: the kinds are {STEP_KINDS}")
        if self.count < 0 or (self.kind == "spans" and self.count < 1):
            raise ValueError(
                f"time steps {self.kind} need a count of at least "
                f"{1 if self.kind == 'spans' else 0}, got {self.count}"
            )

    def describe(self) -> str:
        """In words: `12 monthly steps`, `monthly steps`, `4 equal spans`."""
        if self.kind == "spans":
            return f"{self.count} equal spans"
        return f"{self.count} monthly steps" if self.count else "monthly steps"

    def spans(self, start: date, end: date) -> tuple[tuple[date, date], ...]:
        """Each step's first and last day (inclusive) in the window start..end (inclusive).

        Raises ValueError, naming the window and what fits, when the window does not hold
        the steps: fewer days than spans, or another number of months than `count`."""
        if end < start:
            raise ValueError(f"the window {start}..{end} ends before it starts")
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
