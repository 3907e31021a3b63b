"""Write blocks: runs of consecutive plan chunks that share one Zarr shard in every array of a
product, so that a store of millions of points holds thousands of files, not millions.

Inside a shard each plan chunk stays one inner Zarr chunk (a reader of one chunk reads one
inner chunk). Zarr changes part of a shard by reading the whole shard file and writing it
back, so a shard must only ever be written by one task at a time: the export writes each
(block, product) in one task. The block length K is recorded in the store as its arrays'
shard shape (`<model>_checksum` holds K chunks per shard); a run on an existing store reads
it there, never recomputes it.

A store made with `--shards none` has no shards: every array keeps one file per plan chunk
(plain Zarr v3 chunks, which GDAL before 3.13 and other readers without the sharding codec
read); its K is 1.
"""

from collections.abc import Callable, Sequence
from typing import Literal

import zarr

from embedders.naming import setting
from tasks.store.integrity import checksum_name

# A shard holds at most this many plan chunks: 10M points in chunks of 256 are 2,500 shards
# per array instead of 40,000 files.
SHARD_CHUNKS = 16
# ... and at most this many bytes of its largest array (uncompressed): a write task holds a
# whole block's results in memory, and a partial write reads and rewrites the whole shard.
SHARD_BYTES = 256 * 2**20
# A store has at least this many blocks where it has chunks enough: small stores keep one
# chunk per shard, so their writes run in parallel and a damaged file costs one chunk.
MIN_BLOCKS = 4

# How a new store's arrays are laid out: "auto", in shards of K plan chunks; "none", one file
# per plan chunk (`--shards`, recorded in the store's layout).
Shards = Literal["auto", "none"]


def choose_block_chunks(n_chunks: int, chunk_bytes: int, *, at_most: int | None = None) -> int:
    """K, the plan chunks per shard of a new store of `n_chunks` chunks whose largest array
    takes `chunk_bytes` per chunk; at most `at_most` (the chunks one flow run carries)."""
    by_bytes = SHARD_BYTES // max(1, chunk_bytes)
    k = min(SHARD_CHUNKS, n_chunks // MIN_BLOCKS, by_bytes, at_most or SHARD_CHUNKS)
    return max(1, k)


def chunk_encoding(chunks: tuple[int, ...], k: int | None) -> dict[str, tuple[int, ...]]:
    """Zarr's `chunks` (and `shards`) encoding of an array whose plan chunk is `chunks` (the
    plan chunk along axis 1): shards of `k` plan chunks, or with `k` None none at all."""
    if k is None:
        return {"chunks": chunks}
    return {"chunks": chunks, "shards": (*chunks[:1], chunks[1] * k, *chunks[2:])}


def block_chunks(path: str, models: Sequence[str]) -> int:
    """The store's K: its `<model>_checksum` shard length along `chunk` (1 for a store
    written before shards, whose arrays have one file per chunk)."""
    found = {}
    for model in models:
        array = zarr.open_array(path, path=checksum_name(model), mode="r")
        found[model] = array.shards[1] if array.shards is not None else 1
    if len(set(found.values())) > 1:
        raise ValueError(
            f"store {path}: its products are sharded by different chunk counts ({found}); "
            f"swath did not write it so: export into another {setting('store')}"
        )
    return next(iter(found.values()), 1)


def split_blocks[T](items: Sequence[T], k: int, index: Callable[[T], int]) -> list[list[T]]:
    """`items` (in plan order) grouped by the block of their chunk: chunk i is in block i // k."""
    blocks: list[list[T]] = []
    for item in items:
        if blocks and index(blocks[-1][0]) // k == index(item) // k:
            blocks[-1].append(item)
        else:
            blocks.append([item])
    return blocks


def contiguous_runs[T](items: Sequence[T], index: Callable[[T], int]) -> list[list[T]]:
    """`items` (in plan order) in runs of consecutive chunk indices: one zarr call each."""
    runs: list[list[T]] = []
    for item in items:
        if runs and index(runs[-1][-1]) + 1 == index(item):
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


def group_blocks[T](blocks: Sequence[Sequence[T]], limit: int) -> list[list[Sequence[T]]]:
    """Consecutive whole blocks packed into groups of at most `limit` items each (a block
    larger than `limit` is a group of its own): the work of one child flow run each."""
    groups: list[list[Sequence[T]]] = []
    size = 0
    for block in blocks:
        if groups and size + len(block) <= limit:
            groups[-1].append(block)
            size += len(block)
        else:
            groups.append([block])
            size = len(block)
    return groups
