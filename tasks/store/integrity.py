"""A done mark stands for data that is there.

When a chunk's region of one model is written, the values of its arrays (embeddings, reason,
valid fraction) are read back from the store and their CRC-32, with the status about to be
written, goes into `<model>_checksum` (time, chunk) just before the status, the done mark.
A rerun checks that checksum for every chunk it would skip, and `--verify` checks it for a
whole store: a chunk whose file was deleted, truncated or changed no longer matches, and is
redone.

The checksum is over values, not encoded bytes, so it does not depend on the codec. A deleted
chunk file reads as fill values (NaN embeddings), which do not match the values that were
written. Only a chunk that was all fill values to begin with (every point failed or had no
data) reads the same without its file, and then nothing is lost.
"""

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import zarr

from embedders.spec import Status

CHECKSUM_DIM = "chunk"  # one entry per chunk of the plan: chunk i covers points i*cs...
CHECKSUM_FILL = 0  # no checksum recorded: a chunk is not done without one
# Reading a damaged file: zarr's sharding codec raises ValueError for a shard too short to
# hold its index (a truncated or emptied file), its zstd codec (the default, used by every
# swath store) RuntimeError("Zstd decompression error: ...") for a corrupted inner chunk, and
# the bytes codec ValueError for one that decodes to the wrong size.
UNREADABLE = (RuntimeError, ValueError)


class ChunkRegion(Protocol):
    """A chunk's place on the store's point axis (tasks.plan.chunks.Chunk is one)."""

    @property
    def index(self) -> int: ...
    @property
    def start(self) -> int: ...
    @property
    def stop(self) -> int: ...
    @property
    def key(self) -> str: ...


@dataclass(frozen=True)
class Damage:
    """A chunk marked done whose data is not what was written."""

    key: str
    why: str


class WriteNotKept(Exception):
    """Data read back right after a write differs from what was written."""


def checksum_name(model: str) -> str:
    return f"{model}_checksum"


def data_names(model: str) -> tuple[str, ...]:
    """The arrays a checksum covers, in order; the status comes after them."""
    return (model, f"{model}_reason", f"{model}_valid_fraction")


def checksum_variable(model: str, n_chunks: int) -> tuple[tuple[str, ...], np.ndarray, int]:
    """The store's `<model>_checksum` for one time entry: dims, fill values, inner Zarr chunk
    length along `chunk` (1: one per plan chunk; shards hold a write block's,
    tasks/plan/shards.py)."""
    return ("time", CHECKSUM_DIM), np.full((1, n_chunks), CHECKSUM_FILL, dtype="int32"), 1


CHECKSUM_ATTRS = {
    "long_name": "CRC-32 of each chunk's values as written (signed int32), checked on resume",
    "covers": "embeddings (and their scales when int8), reason, valid_fraction, status "
    "(NaN canonical), in this order",
}


def checksum(arrays: Iterable[np.ndarray]) -> int:
    """CRC-32 of the arrays' values in order, as a signed int32 (netCDF-3 has no uint32).

    NaNs count as one value whatever their bits: a chunk left all NaN is not stored, and
    reads back as the fill value's NaN."""
    crc = 0
    for a in arrays:
        if a.dtype.kind == "f":
            a = np.where(np.isnan(a), np.array(np.nan, dtype=a.dtype), a)
        crc = zlib.crc32(np.ascontiguousarray(a).tobytes(), crc)
    return int(np.array(crc, dtype=np.uint32).view(np.int32))


def seal(path: str, model: str, chunk: ChunkRegion, t: int, written: Sequence[np.ndarray]) -> None:
    """Record the checksum of a chunk's region of `model`, once its data is written and before
    its status: `written` holds the data arrays as given to the store, then the status.

    Raises WriteNotKept when the store does not hold what was just written."""
    seal_chunks(path, model, t, [(chunk, written)])


def seal_chunks(
    path: str,
    model: str,
    t: int,
    sealed: Sequence[tuple[ChunkRegion, Sequence[np.ndarray]]],
) -> None:
    """`seal` for several chunks of one write block (in plan order): each chunk's data is read
    back and checked, then the checksums of each run of consecutive chunks are written in one
    call (one read-modify-write of their shard, not one per chunk).

    Raises WriteNotKept, before any checksum is written, when the store does not hold what
    was just written."""
    arrays = _Arrays(path, model, mode="r+")
    sums: dict[int, int] = {}
    for chunk, written in sealed:
        expected = checksum(written)
        if checksum([*arrays.read_data(t, chunk), written[-1]]) != expected:
            raise WriteNotKept(
                f"{model} {chunk.key}: the data read back from store {path} right after "
                "writing it differs from what was written (another writer, or storage that "
                "lost the write); check the store's storage, then rerun the export"
            )
        sums[chunk.index] = expected
    indices = sorted(sums)
    runs: list[list[int]] = []
    for i in indices:
        if runs and runs[-1][-1] + 1 == i:
            runs[-1].append(i)
        else:
            runs.append([i])
    for run in runs:
        values = np.array([sums[i] for i in run], dtype="int32")
        arrays.checksums[t, run[0] : run[-1] + 1] = values


def check_done(
    path: str, model: str, chunks: Sequence[ChunkRegion], t: int, *, unmarked: bool = False
) -> tuple[list[bool], list[Damage]]:
    """For each chunk, whether its region of `model` is done: its status marks every point
    done and its values match the checksum recorded with that mark. Chunks marked done that
    do not match are damaged: they count as not done, and are returned.

    `unmarked` also returns as damaged the chunks whose checksum is recorded while their
    status is pending: a status file lost (deleted or emptied), or an export stopped between
    the two writes. Either way a rerun redoes them; `--verify` names them."""
    arrays = _Arrays(path, model, mode="r")
    done, damaged = [], []
    for chunk in chunks:
        try:
            status = arrays.read_status(t, chunk)
        except UNREADABLE as e:
            damaged.append(Damage(chunk.key, f"its status is unreadable ({e})"))
            done.append(False)
            continue
        done.append(False)
        if (status == Status.PENDING).any():
            if unmarked and (status == Status.PENDING).all() and arrays.sealed(t, chunk):
                damaged.append(Damage(chunk.key, UNMARKED))
            continue
        why = _mismatch(arrays, t, chunk, status)
        if why:
            damaged.append(Damage(chunk.key, why))
        done[-1] = why is None
    return done, damaged


UNMARKED = (
    "its checksum is recorded but its status reads pending (its status file deleted or "
    "damaged, or an export stopped between the two writes)"
)


def open_array(path: str, name: str, *, mode: Literal["r", "r+"]) -> "zarr.Array[Any]":
    """An array of a store, by its own zarr.json or, where that is missing or damaged, by the
    root's consolidated copy of it (which xarray reads too)."""
    try:
        return zarr.open_array(path, path=name, mode=mode)
    except (*UNREADABLE, FileNotFoundError, zarr.errors.BaseZarrError) as e:
        group = zarr.open_group(path, mode=mode, use_consolidated=True)
        try:
            array = group[name]
        except KeyError:
            raise e from None
        if not isinstance(array, zarr.Array):
            raise e from None
        return array


def _mismatch(arrays: "_Arrays", t: int, chunk: ChunkRegion, status: np.ndarray) -> str | None:
    try:
        data = arrays.read_data(t, chunk)
        recorded = int(np.asarray(arrays.checksums[t, chunk.index]))
    except UNREADABLE as e:
        return f"unreadable ({e})"
    if checksum([*data, status]) != recorded:
        return "its values do not match their checksum (a file deleted or changed)"
    return None


class _Arrays:
    """One model's arrays in a store, opened once for many chunks."""

    def __init__(self, path: str, model: str, *, mode: Literal["r", "r+"]) -> None:
        names = list(data_names(model))
        group = zarr.open_group(path, mode="r")
        if f"{model}_scale" in group:  # int8 storage: the scales sit after the values
            names.insert(1, f"{model}_scale")
        self.data = [open_array(path, name, mode="r") for name in names]
        self.status = open_array(path, f"{model}_status", mode="r")
        self.checksums = open_array(path, checksum_name(model), mode=mode)
        self._status_row: tuple[int, np.ndarray | None] | None = None

    def sealed(self, t: int, chunk: ChunkRegion) -> bool:
        """Whether a checksum is recorded for the chunk (an unreadable one counts as not)."""
        try:
            return int(np.asarray(self.checksums[t, chunk.index])) != CHECKSUM_FILL
        except UNREADABLE:
            return False

    def read_data(self, t: int, chunk: ChunkRegion) -> list[np.ndarray]:
        return [np.asarray(a[t, chunk.start : chunk.stop]) for a in self.data]

    def read_status(self, t: int, chunk: ChunkRegion) -> np.ndarray:
        """A chunk's status, from the whole time entry's status read at once (one byte a
        point: a plan of millions of chunks is checked without a read per chunk). A row
        that cannot be read whole is read chunk by chunk, to name the damaged ones."""
        if self._status_row is None or self._status_row[0] != t:
            try:
                self._status_row = (t, np.asarray(self.status[t, :]))
            except UNREADABLE:
                self._status_row = (t, None)
        row = self._status_row[1]
        if row is None:
            return np.asarray(self.status[t, chunk.start : chunk.stop])
        return row[chunk.start : chunk.stop]
