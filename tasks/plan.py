"""Plan: a region and a spacing become points on a regular UTM grid, then chunks of points."""

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Point:
    """A point to embed: a stable id, its lon/lat, its UTM zone (EPSG code) and UTM x/y."""

    id: str
    lon: float
    lat: float
    epsg: int
    x: float
    y: float


@dataclass(frozen=True)
class Chunk:
    """A unit of work, retry and resume: consecutive points of the plan."""

    index: int
    start: int  # position of the first point on the store's point axis
    points: tuple[Point, ...]

    @property
    def key(self) -> str:
        digest = hashlib.sha256("\n".join(p.id for p in self.points).encode()).hexdigest()[:8]
        return f"chunk-{self.index:05d}-{digest}"

    @property
    def stop(self) -> int:
        return self.start + len(self.points)
