"""GDAL (rasterio's) reads a store written with `shards="none"`: every variable of a model,
value for value as xarray reads it. The sharded default stays the default; a GDAL without the
sharding codec (before 3.13) cannot read it."""

import json
import shutil
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from rasterio.errors import RasterioIOError

from embedders.naming import named_as
from flows.params import Output
from tasks.plan.chunks import Chunk, make_chunks
from tasks.results import ChunkResult
from tasks.store import compact
from tasks.store.compatibility import check_store
from tasks.store.integrity import check_done
from tasks.store.layout import StoreLayout, StoreMismatch, add_window
from tasks.write import write_chunk
from tests.stores import MODELS, write_store

# GDAL reads Zarr v3 shards (`sharding_indexed`) from 3.13 on (its Zarr driver's docs).
SHARDING_GDAL = (3, 13)


def gdal_version() -> tuple[int, int]:
    major, minor = rasterio.__gdal_version__.split(".")[:2]
    return int(major), int(minor)


def gdal_read(store: str, name: str) -> np.ndarray:
    """One array as GDAL's classic raster API reads it: its last two dims are the raster's
    rows and columns, the dims before them its bands, in C order."""
    with rasterio.open(f'ZARR:"{store}":/{name}') as r:
        return r.read()


def model_variables(ds: xr.Dataset) -> list[str]:
    return [str(n) for n in ds.data_vars if str(n).split("_")[0] in ("pooled", "grid", "tessera")]


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_gdal__reads_every_variable_of_an_unsharded_store_as_xarray_does(tmp_path, dtype):
    w = write_store(tmp_path / "s.zarr", dtype=dtype, shards="none")
    with rasterio.open(w.path) as root:
        listed = {s.rsplit(":/", 1)[1] for s in root.subdatasets}
    with xr.open_zarr(w.path) as ds:
        names = model_variables(ds)
        assert {"pooled_model_status", "grid_model_reason", "grid_model_valid_fraction"} < set(
            names
        )
        assert ("pooled_model_scale" in names) == (dtype == "int8")
        assert set(names) <= listed
        for name in names:
            want = ds[name].values
            got = gdal_read(w.path, name)
            assert got.dtype == want.dtype, name
            np.testing.assert_array_equal(got.reshape(want.shape), want, err_msg=name)
        for name in ("point_id", "lon", "lat"):  # ids as UTF-8 bytes; 1-D arrays as one row
            want = ds[name].values
            np.testing.assert_array_equal(gdal_read(w.path, name).reshape(want.shape), want)
    for m in ("pooled_model", "grid_model"):  # what was written, not only what xarray read
        stored, _ = compact.encode(w.embeddings[m], dtype)  # NaN (int8: -128) where not ok
        np.testing.assert_array_equal(gdal_read(w.path, m).reshape(stored.shape), stored)
        np.testing.assert_array_equal(gdal_read(w.path, f"{m}_status").ravel(), w.status[m])


def test_gdal__an_unsharded_store_has_one_plain_zarr_chunk_per_file(tmp_path):
    w = write_store(tmp_path / "s.zarr", shards="none")
    chunks = len(make_chunks(w.points, 8))
    for name in ("pooled_model", "pooled_model_status", "pooled_model_checksum", "grid_model"):
        meta = json.loads(Path(w.path, name, "zarr.json").read_text())
        assert "sharding_indexed" not in json.dumps(meta["codecs"]), name
        files = [p for p in Path(w.path, name, "c").rglob("*") if p.is_file()]
        assert len(files) == (chunks if name != "grid_model" else chunks - 1), name
    assert read_layout(w.path)["shards"] == "none"


def read_layout(store: str) -> dict:
    with xr.open_zarr(store) as ds:
        return json.loads(ds.attrs["swath"])["layout"]


def test_gdal__the_default_store_is_sharded_which_gdal_reads_from_3_13(tmp_path):
    assert Output().shards == "auto"
    w = write_store(tmp_path / "s.zarr")
    meta = json.loads(Path(w.path, "pooled_model", "zarr.json").read_text())
    assert meta["codecs"][0]["name"] == "sharding_indexed"
    assert read_layout(w.path)["shards"] == "auto"
    if gdal_version() >= SHARDING_GDAL:
        with xr.open_zarr(w.path) as ds:
            want = ds["pooled_model"].values
        np.testing.assert_array_equal(gdal_read(w.path, "pooled_model").reshape(want.shape), want)
    else:
        with pytest.raises(RasterioIOError, match="sharding_indexed"):
            gdal_read(w.path, "pooled_model")


def test_gdal__the_crs_scalar_does_not_stop_gdal_opening_the_store(tmp_path):
    """GDAL's classic API opens no 0-d array (`crs`); the store and every other variable open,
    and the embeddings carry its EPSG:4326 (their `grid_mapping`)."""
    w = write_store(tmp_path / "s.zarr", shards="none")
    with rasterio.open(w.path) as root:
        assert not any(s.endswith(":/crs") for s in root.subdatasets)
    with rasterio.open(f'ZARR:"{w.path}":/pooled_model') as r:
        assert r.crs is not None and r.crs.to_epsg() == 4326


@pytest.mark.parametrize(("store", "run"), [("none", "auto"), ("auto", "none")])
def test_gdal__resuming_with_other_shards_is_refused_naming_the_flag(tmp_path, store, run):
    w = write_store(tmp_path / "s.zarr", shards=store)
    other = StoreLayout(w.layout.points, w.layout.chunk_size, MODELS, shards=run)
    message = rf'shards: store has "{store}", this run has "{run}", to resume give --shards {store}'
    with named_as("flags"), pytest.raises(StoreMismatch, match=message):
        check_store(w.path, other)
    with pytest.raises(
        StoreMismatch, match=rf"give output › Store file layout \(shards\): {store}"
    ):
        check_store(w.path, other)
    assert check_store(w.path, w.layout)  # the same setting resumes


def test_gdal__a_damaged_chunk_file_of_an_unsharded_store_is_found_and_rewritten(tmp_path):
    w = write_store(tmp_path / "s.zarr", shards="none")
    store = str(shutil.copytree(w.path, tmp_path / "e.zarr"))
    chunks = make_chunks(w.points, 8)
    path = Path(store, "pooled_model", "c", "0", "2", "0")  # chunk 2 alone
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    done, damaged = check_done(store, "pooled_model", chunks, 0)
    assert [c.index for c, d in zip(chunks, done, strict=True) if not d] == [2]
    assert [d.key for d in damaged] == [chunks[2].key]
    with xr.open_zarr(w.path) as ds:
        result = chunk_result(ds, "pooled_model", chunks[2], w.reasons["pooled_model"])
    write_chunk(store, chunks[2], "pooled_model", result, 0)
    assert check_done(store, "pooled_model", chunks, 0) == ([True] * len(chunks), [])


def chunk_result(ds: xr.Dataset, model: str, chunk: Chunk, reasons: list[str]) -> ChunkResult:
    s = slice(chunk.start, chunk.stop)
    return ChunkResult(
        ds[model].values[0, s],
        ds[f"{model}_status"].values[0, s],
        reasons[s],
        ds[f"{model}_valid_fraction"].values[0, s],
    )


def test_gdal__a_window_added_to_an_unsharded_store_stays_unsharded_and_readable(tmp_path):
    w = write_store(tmp_path / "s.zarr", shards="none")
    t = add_window(w.path, w.layout, (date(2025, 1, 1), date(2025, 12, 31)))
    assert t == 1
    meta = json.loads(Path(w.path, "pooled_model_status", "zarr.json").read_text())
    assert meta["shape"][0] == 2 and "sharding_indexed" not in json.dumps(meta["codecs"])
    with xr.open_zarr(w.path) as ds:
        for name in ("pooled_model", "pooled_model_status"):
            want = ds[name].values
            np.testing.assert_array_equal(gdal_read(w.path, name).reshape(want.shape), want)
