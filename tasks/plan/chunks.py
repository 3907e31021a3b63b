"""Chunks: the unit of work, retry and resume, as small keys.

A chunk is consecutive points of a plan (tasks/plan/points.py). It is passed to a task as its
index, point range, a digest of its points and the plan file's path (about 150 bytes), and
the task reads its own points from the plan file.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tasks.plan.points import BLOCK_POINTS, Point, PointTable, coords_digest, read_points
from tasks.plan.regions import PlanError


@dataclass(frozen=True)
class Chunk:
    """A unit of work, retry and resume: points start..stop of the plan, as a small key.

    A task derives the chunk's points from it: they are read from the plan file (`plan`),
    or, for a chunk of an in-memory plan, held in `inline`."""

    index: int
    start: int  # position of the first point on the store's point axis
    stop: int
    digest: str  # of its points' zones and coordinates
    plan: str = ""
    inline: tuple[Point, ...] = field(default=(), repr=False)

    @classmethod
    def of(cls, index: int, start: int, points: Sequence[Point]) -> "Chunk":
        """A chunk that holds its points (tests, and small plans kept in memory)."""
        epsg = np.array([p.epsg for p in points], dtype="int32")
        x = np.array([p.x for p in points], dtype="float64")
        y = np.array([p.y for p in points], dtype="float64")
        digest = coords_digest(epsg, x, y).hexdigest()[:8]
        return cls(index, start, start + len(points), digest, inline=tuple(points))

    @property
    def key(self) -> str:
        """Its name: its index and a digest of its points (`chunk-00001-1a2b3c4d`)."""
        return chunk_key(self.index, self.digest)

    @property
    def label(self) -> str:
        """Its short name in a run, where indices are unique (`c00001`): task run names."""
        return f"c{self.index:05d}"

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def points(self) -> tuple[Point, ...]:
        if self.inline or not self.plan:
            return self.inline
        return read_points(self.plan, self.start, self.stop)


def chunk_key(index: int, digest: str) -> str:
    return f"chunk-{index:05d}-{digest}"


def make_chunks(points: PointTable | Sequence[Point], chunk_size: int) -> list[Chunk]:
    """Consecutive runs of `chunk_size` points; the last chunk may be shorter. The table is
    read a block at a time to name the chunks; a chunk of a plan file carries only its key."""
    if chunk_size < 1:
        raise PlanError(f"chunk size must be at least 1, got {chunk_size}")
    table = points if isinstance(points, PointTable) else PointTable.from_points(points)
    per_block = max(1, BLOCK_POINTS // chunk_size) * chunk_size
    chunks: list[Chunk] = []
    for block in range(0, table.n, per_block):
        c = table.columns(block, min(block + per_block, table.n))
        for s in range(0, len(c["epsg"]), chunk_size):
            sl = slice(s, s + chunk_size)
            digest = coords_digest(c["epsg"][sl], c["x"][sl], c["y"][sl]).hexdigest()[:8]
            start = block + s
            stop = start + len(c["epsg"][sl])
            inline = table._points(start, stop) if not table.path else ()
            chunks.append(Chunk(len(chunks), start, stop, digest, table.path, inline))
    return chunks
