"""Compact storage (--dtype float16 | int8): values, the store, its checksums, other readers."""

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from embedders.naming import named_as
from embedders.spec import Status
from tasks.plan.chunks import make_chunks
from tasks.store import compact
from tasks.store.compatibility import check_store
from tasks.store.integrity import check_done
from tasks.store.layout import StoreLayout, StoreMismatch, open_store
from tests.stores import write_store


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize(("dtype", "floor"), [("float16", 0.99999), ("int8", 0.9998)])
def test_encode__keeps_each_vectors_direction(dtype: str, floor: float) -> None:
    rng = np.random.default_rng(1)
    emb = (rng.standard_normal((500, 128)) * rng.uniform(0.01, 50, (500, 1))).astype("f4")
    stored, scale = compact.encode(emb, dtype)
    assert stored.dtype == np.dtype(dtype)
    back = compact.decode(stored, scale)
    cos = _cosines(emb.astype("f8"), back.astype("f8"))
    assert cos.min() >= floor
    assert compact.worst_cosine(emb, back) == pytest.approx(cos.min())
    assert not np.array_equal(back, emb)  # it is lossy: the cosine above measured something


def test_encode_int8__per_vector_scale_missing_and_zero_vectors() -> None:
    emb = np.array([[1.0, -2.0, 0.5], [np.nan, 1.0, 2.0], [0.0, 0.0, 0.0]], dtype="f4")
    q, scale = compact.encode(emb, "int8")
    assert scale is not None
    assert q[0].tolist() == [64, -127, 32] and scale[0] == pytest.approx(2 / 127)
    assert (q[1] == compact.INT8_MISSING).all() and np.isnan(scale[1])
    back = compact.decode(q, scale)
    assert np.isnan(back[1]).all() and (back[2] == 0).all()
    np.testing.assert_allclose(back[0], emb[0], atol=float(scale[0]) / 2)


def test_encode_int8__grid_vectors_are_per_cell() -> None:
    rng = np.random.default_rng(2)
    emb = rng.standard_normal((3, 16, 2, 2)).astype("f4")
    emb[0, :, 1, 1] *= 100  # one loud cell must not coarsen its neighbours
    q, scale = compact.encode(emb, "int8")
    assert q.shape == emb.shape and scale is not None and scale.shape == (3, 2, 2)
    back = compact.decode(q, scale)
    assert compact.worst_cosine(emb, back) >= 0.999
    np.testing.assert_allclose(back[0, :, 0, 0], emb[0, :, 0, 0], atol=float(scale[0, 0, 0]))


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_store__compact_values_decode_and_stay_checked(tmp_path: Path, dtype: str) -> None:
    w = write_store(tmp_path / "s.zarr", dtype=dtype)  # type: ignore[arg-type]
    raw = xr.open_zarr(w.path)
    assert raw.pooled_model.dtype == np.dtype(dtype)
    assert ("pooled_model_scale" in raw) == (dtype == "int8")
    assert dtype in raw.pooled_model.attrs["quantization"]
    with open_store(w.path) as ds:
        assert "pooled_model_scale" not in ds and ds.pooled_model.dtype == np.float32
        for name in ("pooled_model", "grid_model"):
            ok = w.status[name] == Status.OK
            got, want = ds[name].isel(time=0).values, w.embeddings[name]
            assert _cosines(vectors(got[ok]), vectors(want[ok])).min() >= 0.999
            assert np.isnan(got[~ok & (w.status[name] != Status.PENDING)]).all()
    chunks = make_chunks(w.points, 8)
    done, damaged = check_done(w.path, "pooled_model", chunks, 0)
    assert all(done) and not damaged
    if dtype == "int8":  # the scales are covered by the checksum
        scales = zarr.open_array(w.path, path="pooled_model_scale", mode="r+")
        scales[0, 0] = scales[0, 0] * 2
        done, damaged = check_done(w.path, "pooled_model", chunks, 0)
        assert not done[0] and damaged[0].key == chunks[0].key


def vectors(a: np.ndarray) -> np.ndarray:
    """(point, dim[, y, x]) -> (vector, dim) in float64: a grid's cells are vectors too."""
    return np.moveaxis(a, 1, -1).reshape(-1, a.shape[1]).astype("f8")


def test_store__a_dtype_change_on_resume_is_refused_naming_it(tmp_path: Path) -> None:
    w = write_store(tmp_path / "s.zarr", dtype="int8")
    layout = StoreLayout(w.layout.points, w.layout.chunk_size, w.layout.models, "float32")
    message = r'dtype: store has "int8", this run has "float32", to resume give --dtype int8'
    with named_as("flags"), pytest.raises(StoreMismatch, match=message):
        check_store(w.path, layout)
    with pytest.raises(StoreMismatch, match="to resume give output › Stored number type: int8"):
        check_store(w.path, layout)
    assert check_store(w.path, w.layout)  # the same dtype resumes


def test_store__a_second_reader_reads_the_compact_arrays(tmp_path: Path) -> None:
    tensorstore = pytest.importorskip("tensorstore")
    w = write_store(tmp_path / "s.zarr", dtype="int8")
    for name in ("pooled_model", "pooled_model_scale"):
        spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": f"{w.path}/{name}"}}
        got = tensorstore.open(spec, read=True).result().read().result()
        np.testing.assert_array_equal(got, zarr.open_array(w.path, path=name, mode="r")[...])


def test_store__float32_stores_keep_their_fingerprint() -> None:
    """Stores written before --dtype existed resume: float32 adds nothing to the fingerprint."""
    from tests.stores import MODELS

    a = StoreLayout((), 8, MODELS)
    b = StoreLayout((), 8, MODELS, "float32")
    c = StoreLayout((), 8, MODELS, "float16")
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
