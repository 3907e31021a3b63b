"""Write: a write block's results for one model into the store, one task per (block, model).

A write block is a run of consecutive plan chunks sharing one shard of every array of the
model (tasks/plan/shards.py); only its task ever writes that shard.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from prefect import task
from zarr.core.sync import sync

from tasks.plan.chunks import Chunk
from tasks.plan.shards import contiguous_runs
from tasks.prefetch import TRANSIENT_RETRIES
from tasks.results import ChunkResult, load_result
from tasks.sources.failures import classify_error
from tasks.sources.registry import TransientSourceError
from tasks.store import compact
from tasks.store.integrity import UNREADABLE, seal_chunks
from tasks.store.layout import REASON_BYTES
from tasks.store.text import encode_text


@dataclass(frozen=True)
class WriteReport:
    chunk: str
    model: str
    worst_cosine: float | None  # stored vs float32, for a compact store (tasks/store/compact.py)


@dataclass(frozen=True)
class Block:
    """A write block's chunks that a run redoes (in plan order), `index` the block's own."""

    index: int
    chunks: tuple[Chunk, ...]

    @property
    def key(self) -> str:
        return f"block-{self.index:05d} ({self.chunks[0].key}..{self.chunks[-1].key})"

    @property
    def label(self) -> str:
        """Its chunks' short names, first-last (`c00004-c00007`; `c00004` for one chunk)."""
        first, last = self.chunks[0].label, self.chunks[-1].label
        return first if first == last else f"{first}-{last}"


@dataclass(frozen=True)
class NotProduced:
    """A chunk's produce task failed: the write task leaves the chunk out (not done)."""

    why: str


@dataclass(frozen=True)
class BlockReport:
    """What a write task did: the chunks written, and those it could not write (their
    produce task failed: they stay not done and rerun next time), with why."""

    model: str
    written: tuple[WriteReport, ...]
    failed: tuple[tuple[str, str], ...]  # (chunk key, why)


def write_chunk(path: str, chunk: Chunk, model: str, result: ChunkResult, t: int) -> float | None:
    """Write one chunk's region of one model (see `write_chunks`). Returns the worst cosine
    between a stored vector and its float32 value (None for a float32 store, or a chunk
    with no vector)."""
    return write_chunks(path, model, t, [(chunk, result)])[0]


def write_chunks(
    path: str, model: str, t: int, parts: Sequence[tuple[Chunk, ChunkResult]]
) -> list[float | None]:
    """Write chunks of one model that lie in one write block (in plan order): for each run of
    consecutive chunks, each array's data in one zarr call (one read-modify-write of a shard,
    not one per chunk); then each chunk's checksum (of the data as read back); the statuses,
    the done marks, last. Embeddings are stored in the store's own dtype (tasks/store/compact.py).

    Returns per chunk the worst cosine between a stored vector and its float32 value."""
    dtype = str(zarr.open_array(path, path=model, mode="r").dtype)
    for chunk, result in parts:
        if len(result.status) != chunk.stop - chunk.start:
            raise ValueError(
                f"{model} {chunk.key}: {len(result.status)} results for a chunk of "
                f"{chunk.stop - chunk.start} points"
            )
    encoded = [_encode(result, dtype) for _, result in parts]
    names = [model, *([compact.scale_name(model)] if dtype == "int8" else [])]
    names += [f"{model}_reason", f"{model}_valid_fraction", f"{model}_status"]
    arrays = [zarr.open_array(path, path=name, mode="r+") for name in names]
    runs = contiguous_runs(range(len(parts)), lambda i: parts[i][0].index)
    regions = [(parts[run[0]][0].start, parts[run[-1]][0].stop) for run in runs]
    for j, array in enumerate(arrays):
        if j == len(arrays) - 1:  # the statuses, once every chunk's checksum is recorded
            seal_chunks(path, model, t, [(c, encoded[i]) for i, (c, _) in enumerate(parts)])
        for run, (start, stop) in zip(runs, regions, strict=True):
            values = np.concatenate([encoded[i][j] for i in run])
            _write_region(array, t, start, stop, values)
    if dtype == "float32":
        return [None] * len(parts)
    cosines: list[float | None] = []
    for (_, result), stored in zip(parts, encoded, strict=True):
        scale = stored[1] if dtype == "int8" else None
        emb = result.embeddings.astype("float32")
        cosines.append(compact.worst_cosine(emb, compact.decode(stored[0], scale)))
    return cosines


def _encode(result: ChunkResult, dtype: str) -> list[np.ndarray]:
    """A chunk's arrays as the store holds them, in checksum order (tasks/store/integrity.py): the
    embeddings (and their scales when int8), reason, valid fraction, then the status."""
    stored, scale = compact.encode(result.embeddings.astype("float32"), dtype)
    return [
        stored,
        *([scale] if scale is not None else []),
        encode_text(result.reason, REASON_BYTES),
        result.valid_fraction.astype("float32"),
        result.status.astype("int8"),
    ]


def _write_region(
    array: zarr.Array[Any], t: int, start: int, stop: int, values: np.ndarray
) -> None:
    """`array[t, start:stop] = values`. A shard that cannot be read (a truncated file) cannot
    be changed in part either: its chunks were all found damaged and are being redone, so it
    is removed and the write made again."""
    try:
        array[t, start:stop] = values
    except UNREADABLE:
        try:
            array[t, start:stop]
        except UNREADABLE:
            _remove_shards(array, t, start, stop)
            array[t, start:stop] = values
        else:
            raise


def _remove_shards(array: zarr.Array[Any], t: int, start: int, stop: int) -> None:
    length = (array.shards or array.chunks)[1]
    for s in range(start // length, (stop - 1) // length + 1):
        key = array.metadata.encode_chunk_key((t, s, *[0] * (array.ndim - 2)))
        sync((array.store_path / key).delete())


def write_block(
    store: str,
    model: str,
    block: Block,
    results_path: str,
    produced: Sequence[str | NotProduced],
    t: int,
) -> BlockReport:
    """Copy the results of a block's chunks into the output store. `produced` holds, per
    chunk, its results' group path, or why its produce task failed: those chunks are left
    out, and reported."""
    parts, failed = [], []
    for chunk, group_path in zip(block.chunks, produced, strict=True):
        if isinstance(group_path, str):
            result = load_result(results_path, group_path)
            if len(result.status) != chunk.stop - chunk.start:
                raise ValueError(
                    f"results {group_path} hold {len(result.status)} points, chunk {chunk.key} "
                    f"has {chunk.stop - chunk.start}; remove {results_path}/{group_path} and rerun"
                )
            parts.append((chunk, result))
        else:
            failed.append((chunk.key, f"produce {model} {chunk.key} failed: {group_path.why}"))
    cosines = write_chunks(store, model, t, parts) if parts else []
    written = tuple(
        WriteReport(chunk.key, model, cosine)
        for (chunk, _), cosine in zip(parts, cosines, strict=True)
    )
    return BlockReport(model, written, tuple(failed))


# Not cached: the store's status (its done mark) decides which chunks the flow submits.
# Writes to object storage fail transiently too (throttling, 5xx, dropped connections):
# those are retried like the source's, the whole block again with the done marks last.
@task(
    name="write",
    task_run_name="write {block.label} {model}",
    **TRANSIENT_RETRIES,
)
def write_task(
    store: str,
    model: str,
    block: Block,
    results_path: str,
    produced: list[str | NotProduced],
    t: int,
) -> BlockReport:
    try:
        return write_block(store, model, block, results_path, produced, t)
    except (OSError, TimeoutError) as e:
        error = classify_error(e, f"writing {model} {block.key} into {store}")
        if isinstance(error, TransientSourceError):
            raise error from e
        raise
