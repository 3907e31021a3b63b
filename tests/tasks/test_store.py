"""The output store as other programs read it: the README's examples, other Zarr v3 readers
(tensorstore), netCDF; and its attributes through `read_meta`. Stores are written by swath's
own `create_store` + `write_chunk`."""

import dataclasses
import json
import re
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from embedders.spec import Status
from tasks.plan.chunks import make_chunks
from tasks.plan.points import Point
from tasks.results import ChunkResult, ModelOutput
from tasks.store.compatibility import check_store
from tasks.store.layout import (
    REASON_BYTES,
    StoreLayout,
    StoreMismatch,
    create_store,
    open_store,
    read_meta,
)
from tasks.write import write_chunk
from tests.stores import facts

README = Path(__file__).parents[2] / "README.md"
WINDOW = (date(2024, 1, 1), date(2024, 12, 31))
POINTS = tuple(
    Point(f"32719-{600000 + 250 * i}-4698000", -67.65 + 0.003 * i, -47.85, 32719, 0.0, 0.0)
    for i in range(5)
)
MODELS = (
    ModelOutput(
        "dofa_base",
        4,
        None,
        identity={"weights": {"kind": "random", "seed": 0}},
        facts=facts(4, 16),
        patch_px=8,
    ),
    ModelOutput(
        "tiny_grid", 3, (2, 2), identity={"weights": {"kind": "pretrained"}}, facts=facts(3, 1)
    ),
)
LAYOUT = StoreLayout(points=POINTS, chunk_size=2, models=MODELS)
LONG = "source said: " + "x" * 400
REASONS = ["", "no item covers it", "", "", LONG]
NON_ASCII = ["", "échec: nuage à 100 %", "", "", "timeout"]


def write_store(path: Path, reasons: list[str], *, shards: str = "auto") -> str:
    """A finished store: point 1 has no data, point 4 failed, the others are ok; its files
    laid out as `shards` asks."""
    store = str(path)
    layout = dataclasses.replace(LAYOUT, shards=shards)
    create_store(store, layout, WINDOW, attrs={"region": {"bbox": [-67.66, -47.86, -67.6, -47.84]}})
    rng = np.random.default_rng(0)
    status = np.array([1, 3, 1, 1, 2], dtype="int8")
    for m in MODELS:
        shape = (m.embed_dim, *(m.grid_shape or ()))
        for c in make_chunks(list(POINTS), layout.chunk_size):
            n, s = len(c.points), slice(c.start, c.stop)
            emb = rng.standard_normal((n, *shape)).astype("float32")
            emb[status[s] != Status.OK] = np.nan
            valid = np.where(status[s] == Status.OK, 1.0, 0.0).astype("float32")
            write_chunk(store, c, m.name, ChunkResult(emb, status[s], reasons[s], valid), 0)
    return store


@pytest.fixture
def store(tmp_path: Path) -> str:
    return write_store(tmp_path / "embeddings.zarr", REASONS)


def test_readme__every_python_example_runs_against_a_real_store(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks, "the README has no Python example"
    # Unsharded, as "Reading with GDAL" exports it: rasterio's GDAL reads no shards.
    store = write_store(tmp_path / "embeddings.zarr", REASONS, shards="none")
    monkeypatch.chdir(Path(store).parent)  # the examples open "embeddings.zarr"
    for i, code in enumerate(blocks):
        exec(compile(code, f"README.md python block {i + 1}", "exec"), {"__name__": "readme"})


def test_open_store__gives_point_ids_and_reasons_as_strings(store):
    ds = open_store(store)
    assert list(ds.point_id.values) == [p.id for p in POINTS]
    reasons = list(ds.dofa_base_reason.values[0])
    assert reasons[:4] == REASONS[:4]
    assert len(reasons[4].encode()) <= REASON_BYTES and reasons[4].endswith("...")
    assert LONG.startswith(reasons[4][:-3])
    assert set(ds.sizes) == {"time", "point", "chunk", "bnds", "dofa_base_dim", "tiny_grid_dim"} | {
        "tiny_grid_y",
        "tiny_grid_x",
    }


def test_open_store__decodes_utf8_reasons(tmp_path):
    ds = open_store(write_store(tmp_path / "e.zarr", NON_ASCII))
    assert list(ds.tiny_grid_reason.values[0]) == NON_ASCII


def test_store__tensorstore_reads_every_array_as_xarray_does(tmp_path):
    ts = pytest.importorskip("tensorstore", reason="a dev dependency: pip install -e '.[dev]'")
    store = write_store(tmp_path / "e.zarr", NON_ASCII)
    names = sorted(zarr.open_group(store, mode="r").array_keys())
    read = {
        name: ts.open({"driver": "zarr3", "kvstore": f"file://{store}/{name}"}).result()
        for name in names
    }
    raw = xr.open_zarr(store, decode_cf=False)
    text = open_store(store)
    assert set(names) == set(raw.variables)
    for name, array in read.items():
        got = array.read().result()
        if raw[name].attrs.get("text_encoding") == "utf-8":
            decoded = [bytes(row).rstrip(b"\0").decode() for row in got.reshape(-1, got.shape[-1])]
            assert decoded == list(text[name].values.ravel()), name
        else:
            want = raw[name].values
            assert got.dtype == want.dtype and got.shape == want.shape, name
            assert got.tobytes() == want.tobytes(), name
    assert list(text.point_id.values) == [p.id for p in POINTS]
    assert list(text.dofa_base_reason.values[0]) == NON_ASCII


def test_store__open_store_saves_as_netcdf_with_its_values_and_parseable_attrs(store, tmp_path):
    nc = tmp_path / "e.nc"
    ds = open_store(store)
    ds.to_netcdf(nc, engine="scipy")  # netCDF-3: the engine installed with swath (scipy)
    with xr.open_dataset(nc, engine="scipy") as back:
        assert set(back.variables) == set(ds.variables)
        for name, var in ds.variables.items():
            np.testing.assert_array_equal(back[name].values, var.values, err_msg=str(name))
        assert json.loads(back.attrs["models"])["dofa_base"]["weights"]["kind"] == "random"
        assert json.loads(back.attrs["swath"])["fingerprint"] == LAYOUT.fingerprint()
        # the geoemb: objects and lists of the Zarr store, as JSON text
        layout = json.loads(back.dofa_base.attrs["geoemb:chip_layout"])
        assert layout == {"layout_type": "irregular", "chip_size": [8, 8]}
        assert json.loads(back.tiny_grid.attrs["zarr_conventions"])[0]["name"] == "geoemb:"


def test_store__xarray_alone_cannot_save_the_nested_attributes_as_netcdf(store, tmp_path):
    """What `open_store` is for: `xr.open_zarr` gives the geoemb: objects as they are."""
    with pytest.raises(TypeError, match="geoemb:"):
        xr.open_zarr(store).to_netcdf(tmp_path / "e.nc", engine="scipy")


def test_read_meta__parses_swath_and_models(store):
    meta = read_meta(store)
    assert meta["swath"]["fingerprint"] == LAYOUT.fingerprint()
    assert meta["swath"]["region"] == {"bbox": [-67.66, -47.86, -67.6, -47.84]}
    assert meta["models"]["tiny_grid"]["weights"] == {"kind": "pretrained"}
    assert check_store(store, LAYOUT) is True


def old_form(store: str) -> None:
    """Rewrite a store's root attributes as swath's format 1 wrote them: nested objects."""
    group = zarr.open_group(store, mode="r+")
    meta = {**json.loads(str(group.attrs["swath"])), "format": 1}
    models = json.loads(str(group.attrs["models"]))
    kept = {k: v for k, v in group.attrs.items() if k not in ("swath_sums", "swath_seal")}
    group.attrs.put({**kept, "swath": meta, "models": models})  # format 1 recorded no sums


def test_read_meta__reads_a_store_of_format_1_with_nested_attributes(store):
    old_form(store)
    meta = read_meta(store)
    assert meta["swath"]["format"] == 1
    assert meta["models"]["dofa_base"]["weights"]["kind"] == "random"


def test_check_store__refuses_to_resume_a_store_of_format_1(store):
    old_form(store)
    with pytest.raises(
        StoreMismatch, match=r"older swath \(store format 1.*remove it to start over"
    ):
        check_store(store, LAYOUT)


def test_read_meta__refuses_attributes_that_are_not_json(store):
    zarr.open_group(store, mode="r+").attrs["models"] = "{not json"
    with pytest.raises(StoreMismatch, match="'models' is not JSON"):
        read_meta(store)


def _reseal_above_int32(path: str, *, unsigned: bool) -> None:
    """Give the store's root attributes a seal whose CRC-32 is 2**31 or more (an extra
    attribute picks it), recorded signed as swath writes it, or unsigned as it once did."""
    from tasks.store.soundness import SEAL_ATTR, seal

    group = zarr.open_group(path, mode="r+")
    attrs = dict(group.attrs)
    for i in range(1000):
        attrs["note"] = f"picked {i}"
        if seal(attrs) % 2**32 >= 2**31:
            break
    crc = seal(attrs)
    group.attrs.update({"note": attrs["note"], SEAL_ATTR: crc % 2**32 if unsigned else crc})


def test_store__a_seal_of_2_31_or_more_saves_to_netcdf_3(store, tmp_path):
    from tasks.store.soundness import read_root

    _reseal_above_int32(store, unsigned=False)
    assert read_root(store).sums is not None  # sealed, not taken as changed
    open_store(store).to_netcdf(tmp_path / "e.nc", engine="scipy")  # int32 attributes only


def test_store__a_seal_written_unsigned_by_an_older_swath_still_holds(store):
    from tasks.store.soundness import read_root

    _reseal_above_int32(store, unsigned=True)
    assert read_root(store).sums is not None
