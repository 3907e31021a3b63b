"""The store's shards: write blocks of K plan chunks in one file per array, the values as
written chunk by chunk, read by other Zarr v3 readers, and damage found and repaired."""

import shutil
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from embedders.spec import Status
from tasks.plan.chunks import make_chunks
from tasks.plan.points import Point
from tasks.plan.shards import SHARD_BYTES, block_chunks, choose_block_chunks, split_blocks
from tasks.results import ChunkResult, ModelOutput
from tasks.store.integrity import check_done
from tasks.store.layout import StoreLayout, create_store
from tasks.write import Block, write_chunks

WINDOW = (date(2024, 1, 1), date(2024, 12, 31))
POINTS = tuple(
    Point(f"32719-{600000 + 250 * i}-4698000", -67.65 + 0.001 * i, -47.85, 32719, 0.0, 0.0)
    for i in range(198)
)
MODELS = (
    ModelOutput("pooled", 8, None, identity={"weights": {"kind": "random", "seed": 0}}),
    ModelOutput("grid", 3, (2, 2), identity={"weights": {"kind": "random", "seed": 1}}),
)
LAYOUT = StoreLayout(POINTS, 4, MODELS, "int8")  # 50 chunks, the last of 2 points
CHUNKS = make_chunks(list(POINTS), LAYOUT.chunk_size)


def results(model: ModelOutput) -> list[ChunkResult]:
    rng = np.random.default_rng(len(model.name))
    out = []
    for c in CHUNKS:
        n = c.stop - c.start
        emb = rng.standard_normal((n, model.embed_dim, *(model.grid_shape or ()))).astype("f4")
        status = np.full(n, Status.OK, dtype="int8")
        if c.index % 7 == 3:  # a point with no data now and then
            status[0], emb[0] = Status.NODATA, np.nan
        reasons = ["no item covers it" if s == Status.NODATA else "" for s in status]
        out.append(ChunkResult(emb, status, reasons, (status == Status.OK).astype("f4")))
    return out


def write(path: Path, k: int | None) -> str:
    """The store with K = `k` (None: the default), written per block as the export does."""
    store = str(path)
    create_store(store, LAYOUT, WINDOW, attrs={}, block_chunks=k)
    for m in MODELS:
        res = results(m)
        for block in split_blocks(CHUNKS, block_chunks(store, [m.name]), lambda c: c.index):
            write_chunks(store, m.name, 0, [(c, res[c.index]) for c in block])
    return store


def files(store: str, name: str) -> int:
    return sum(1 for p in Path(store, name, "c").rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> tuple[str, str]:
    tmp = tmp_path_factory.mktemp("shards")
    return write(tmp / "sharded.zarr", None), write(tmp / "per-chunk.zarr", 1)


def test_shards__a_store_has_about_chunks_over_k_files_per_variable(stores):
    sharded, per_chunk = stores
    assert block_chunks(sharded, ["pooled", "grid"]) == 12  # at least 4 blocks
    for name in ("pooled", "pooled_scale", "pooled_status", "pooled_checksum", "grid"):
        assert files(per_chunk, name) == len(CHUNKS) == 50, name
        assert files(sharded, name) == 5, name  # ceil(50 / 12)
    # reasons: only chunks with a point not ok hold any (3, 10, ..., 45: blocks 0-3)
    assert files(sharded, "pooled_reason") == 4 < files(per_chunk, "pooled_reason") == 7
    array = zarr.open_array(sharded, path="grid", mode="r")
    assert array.chunks == (1, 4, 3, 2, 2) and array.shards == (1, 48, 3, 2, 2)


def test_shards__hold_the_values_of_a_store_with_one_chunk_per_file(stores):
    sharded, per_chunk = stores  # K = 1: each chunk written on its own, as before shards
    with xr.open_zarr(sharded) as got, xr.open_zarr(per_chunk) as want:
        assert set(got.variables) == set(want.variables)
        for name in want.variables:
            np.testing.assert_array_equal(got[name].values, want[name].values, err_msg=name)


def test_shards__tensorstore_reads_a_sharded_variable(stores):
    ts = pytest.importorskip("tensorstore", reason="a dev dependency: pip install -e '.[dev]'")
    sharded, _ = stores
    for name in ("grid", "pooled_scale", "pooled_reason", "pooled_checksum"):
        spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": f"{sharded}/{name}"}}
        got = ts.open(spec, read=True).result().read().result()
        np.testing.assert_array_equal(got, zarr.open_array(sharded, path=name, mode="r")[...])


def test_shards__a_deleted_shard_damages_its_block_and_a_rewrite_repairs_it(stores, tmp_path):
    store = shutil.copytree(stores[0], tmp_path / "e.zarr")
    (store / "pooled/c/0/1/0").unlink()  # block 1: chunks 12-23
    done, damaged = check_done(str(store), "pooled", CHUNKS, 0)
    assert [c.index for c, d in zip(CHUNKS, done, strict=True) if not d] == list(range(12, 24))
    assert [d.key for d in damaged] == [c.key for c in CHUNKS[12:24]]
    res = results(MODELS[0])
    write_chunks(str(store), "pooled", 0, [(c, res[c.index]) for c in CHUNKS[12:24]])
    assert check_done(str(store), "pooled", CHUNKS, 0) == ([True] * len(CHUNKS), [])


def test_shards__a_truncated_last_shard_is_rewritten_whole(stores, tmp_path):
    store = str(shutil.copytree(stores[0], tmp_path / "e.zarr"))
    path = Path(store) / "grid/c/0/4/0/0/0"  # block 4: chunks 48-49, its shard past the end
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _, damaged = check_done(store, "grid", CHUNKS, 0)
    assert [d.key for d in damaged] == [c.key for c in CHUNKS[48:]]
    assert "unreadable" in damaged[0].why
    res = results(MODELS[1])
    write_chunks(store, "grid", 0, [(c, res[c.index]) for c in CHUNKS[48:]])
    assert check_done(store, "grid", CHUNKS, 0) == ([True] * len(CHUNKS), [])


def test_choose_block_chunks__16_at_most_a_quarter_of_the_chunks_and_bounded_in_bytes():
    assert choose_block_chunks(10_000, 100_000) == 16
    assert choose_block_chunks(40, 100_000) == 10  # at least 4 blocks
    assert choose_block_chunks(3, 100_000) == 1
    assert choose_block_chunks(10_000, SHARD_BYTES // 3) == 3
    assert choose_block_chunks(10_000, 2 * SHARD_BYTES) == 1
    assert choose_block_chunks(10_000, 100_000, at_most=5) == 5


def test_block__label_names_its_chunks_first_to_last_for_task_run_names():
    assert Block(1, CHUNKS[4:8]).label == "c00004-c00007"
    assert Block(1, (CHUNKS[4], CHUNKS[6])).label == "c00004-c00006"  # the chunks it redoes
    assert Block(12, CHUNKS[49:]).label == "c00049"
