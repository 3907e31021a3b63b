"""Acquisitions: the scenes of a window one by one, for time steps of kind `acquisitions`
(embedders/steps.py).

A source that serves them lists, for each point of a chunk, its valid acquisitions in the
window (those whose scenes cover its patch, within the cloud-cover limit, of the orbit pass
asked for), and reads any one of them per point as its own image: no composite over dates,
masked as the source masks every read (clouds by scene classes, nodata, radar border noise).
The store (tasks/acquisitions.py) draws each point's steps from the list and records them.

An acquisition is every scene of one UTC day (and orbit pass, where scenes state it) that
covers the patch: the tiles of one overpass are one acquisition, read as one image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from embedders.naming import given
from tasks.sources.registry import ImagerySourceError, Patches

if TYPE_CHECKING:
    from tasks.plan.points import Point
    from tasks.sources.registry import ImagerySource, SensorConfig


@dataclass(frozen=True)
class Acquisition:
    """One acquisition: its UTC date, its orbit pass ("" where its scenes state none) and
    the scenes (item or image ids) it is made of."""

    date: str  # ISO date, UTC
    ids: tuple[str, ...]
    orbit: str = ""

    @property
    def key(self) -> str:
        """What tells it from another acquisition of the same place: its date and pass. The
        draw of steps ranks acquisitions by it (TimeSteps.choose)."""
        return f"{self.date} {self.orbit}" if self.orbit else self.date

    @property
    def day_of_year(self) -> int:
        return date.fromisoformat(self.date).timetuple().tm_yday

    def record(self) -> list[str | list[str]]:
        """As the inputs store keeps it: [date, orbit, [ids]]."""
        return [self.date, self.orbit, list(self.ids)]

    @classmethod
    def from_record(cls, value: object) -> Acquisition:
        if (
            not isinstance(value, list)
            or len(value) != 3
            or not isinstance(value[2], list)
            or not all(isinstance(v, str) for v in [value[0], value[1], *value[2]])
        ):
            raise ValueError(f"{value!r} is not an acquisition ([date, orbit, [ids]])")
        return cls(value[0], tuple(value[2]), value[1])


class Listing(Protocol):
    """A chunk's acquisitions as a source listed them, and the means to read them."""

    # per point of the chunk (in its order), its valid acquisitions in date order
    acquisitions: tuple[tuple[Acquisition, ...], ...]
    requests: int  # requests the listing took (searches)

    def read(self, chosen: Sequence[Acquisition | None], bands: Sequence[str]) -> Patches:
        """Each point's chosen acquisition as its own image (NaN where masked, and for a
        point whose choice is None). Raises ImagerySourceError when one of its scenes is
        not in the listing, TransientSourceError as a fetch does."""
        ...


@runtime_checkable
class AcquisitionSource(Protocol):
    """An imagery source that lists and reads single acquisitions."""

    def acquisitions(
        self, points: Sequence[Point], bands: Sequence[str], config: SensorConfig
    ) -> Listing: ...


# The sources that serve time steps of kind acquisitions (for the error that names them).
SERVING = ("stac-catalog", "stac-api", "earthengine")


def acquisition_source(source: ImagerySource, config: SensorConfig) -> AcquisitionSource:
    """The source as one that lists acquisitions; ImagerySourceError when it does not."""
    if not isinstance(source, AcquisitionSource):
        raise ImagerySourceError(
            f"source {config.source} does not list single acquisitions, and "
            f"{config.steps.describe() if config.steps else 'these steps'} need them; "
            f"use {given(source=' or '.join(SERVING))}"
        )
    return source


def merge_reads(
    point_ids: tuple[str, ...], bands: Sequence[str], patch_px: int, reads: Sequence[Read]
) -> Patches:
    """One Patches for the chunk from the reads of its acquisitions, each of some points:
    NaN for points none read; each note says which acquisition it is about."""
    shape = (len(point_ids), patch_px, patch_px)
    out = {b: np.full(shape, np.nan, np.float32) for b in bands}
    merged = Patches(point_ids=point_ids, bands=out)
    for read in reads:
        for row, i in enumerate(read.indices):
            for b in bands:
                out[b][i] = read.patches.bands[b][row]
        merged.notes |= {
            p: f"acquisition {read.acquisition.key}: {why}" for p, why in read.patches.notes.items()
        }
        merged.requests += read.patches.requests
        merged.bytes_read += read.patches.bytes_read
        merged.resampled += read.patches.resampled
        merged.flags |= read.patches.flags
    return merged


@dataclass(frozen=True)
class Read:
    """One acquisition read for some points of a chunk (their indices in it)."""

    acquisition: Acquisition
    indices: tuple[int, ...]
    patches: Patches
