"""`python -m flows.to_parquet`: one time entry's pooled embeddings as GeoParquet, read back by
geopandas and by GDAL (through pyogrio)."""

import ctypes
import json
import os
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyogrio
import pytest

from embedders.spec import Status
from flows.to_parquet import main
from tasks.store import add_window
from tests.stores import MODELS, WINDOW, Written, write_store


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Written:
    return write_store(tmp_path_factory.mktemp("parquet") / "e.zarr")


@pytest.fixture(scope="module")
def parquet(written: Written, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("parquet-out") / "e.parquet"
    assert main([written.path, str(out)]) == 0
    return out


def pooled_want(written: Written, name: str) -> np.ndarray:
    emb = written.embeddings[name]
    return emb.mean(axis=(2, 3)) if emb.ndim == 4 else emb


def test_to_parquet__geopandas_reads_points_in_epsg_4326_with_the_store_values(written, parquet):
    df = gpd.read_parquet(parquet)
    assert df.crs.to_epsg() == 4326
    assert list(df.point_id) == [p.id for p in written.points]
    np.testing.assert_array_equal(df.geometry.x, [p.lon for p in written.points])
    np.testing.assert_array_equal(df.geometry.y, [p.lat for p in written.points])
    np.testing.assert_array_equal(df.lon, df.geometry.x)
    for m in MODELS:
        status = written.status[m.name]
        np.testing.assert_array_equal(df[f"{m.name}_status"], status)
        assert df[f"{m.name}_status"].dtype == np.int8
        assert list(df[f"{m.name}_reason"]) == written.reasons[m.name]
        ok = status == Status.OK
        want = pooled_want(written, m.name)
        for i in np.flatnonzero(ok):
            np.testing.assert_allclose(df[m.name].iloc[i], want[i], rtol=1e-6)
        assert df[m.name][~ok].isna().all(), "a point that is not ok has no vector"


def test_to_parquet__embeddings_are_fixed_size_float32_lists_and_attrs_are_kept(parquet):
    schema = pq.read_schema(parquet)
    for m in MODELS:
        assert schema.field(m.name).type == pa.list_(pa.float32(), m.embed_dim)
    meta = json.loads(schema.metadata[b"swath"])
    assert set(meta["models"]) == {m.name for m in MODELS}
    assert meta["swath"]["region"]["spacing_m"] == 250.0
    assert meta["time"] == {"index": 0, "start": "2024-01-01", "end": "2024-12-31"}
    geo = json.loads(schema.metadata[b"geo"])
    assert geo["primary_column"] == "geometry"
    assert geo["columns"]["geometry"]["encoding"] == "WKB"


# Where `.ci/run` puts DuckDB's library (from the npm registry: DuckDB's Node bindings carry
# libduckdb.so); a user may point SWATH_LIBDUCKDB at their own.
LIBDUCKDB = Path(__file__).resolve().parents[2] / ".venv" / "duckdb" / "package" / "libduckdb.so"


def gdal_cannot_read_parquet() -> str | None:
    """Why the GDAL here cannot read GeoParquet, or None when it can. GDAL reads Parquet with
    its Parquet driver (built against Arrow) or, since 3.11, with its ADBC driver through
    DuckDB's libduckdb.so. pyogrio's wheels have the ADBC driver but no DuckDB: loaded here
    first (RTLD_GLOBAL), the library is found by its soname when GDAL asks for it."""
    drivers = pyogrio.list_drivers()
    if "Parquet" in drivers:
        return None
    if "ADBC" in drivers:
        for candidate in (os.environ.get("SWATH_LIBDUCKDB"), str(LIBDUCKDB), "libduckdb.so"):
            if not candidate:
                continue
            try:
                ctypes.CDLL(candidate, mode=ctypes.RTLD_GLOBAL)
                return None
            except OSError:
                continue
    return (
        f"GDAL {pyogrio.__gdal_version_string__} (pyogrio's) has no Parquet driver and its "
        "ADBC driver finds no libduckdb.so (.ci/run installs one into .venv/duckdb)"
    )


@pytest.mark.skipif(gdal_cannot_read_parquet() is not None, reason=str(gdal_cannot_read_parquet()))
def test_to_parquet__gdal_reads_the_layer_its_features_and_crs(written, parquet):
    info = pyogrio.read_info(parquet)
    assert info["features"] == len(written.points)
    assert info["crs"] == "EPSG:4326"
    assert info["geometry_type"] == "Point"
    assert {f"{m.name}_status" for m in MODELS} <= set(info["fields"])
    df = pyogrio.read_dataframe(parquet, use_arrow=True)  # list fields need the Arrow path
    assert df.crs.to_epsg() == 4326
    assert list(df.point_id) == [p.id for p in written.points]
    np.testing.assert_allclose(df.pooled_model.iloc[0], written.embeddings["pooled_model"][0])


def test_to_parquet__takes_the_last_time_entry_or_the_one_named(written, tmp_path):
    store = str(tmp_path / "two.zarr")
    two = write_store(Path(store))
    add_window(store, two.layout, (WINDOW[1].replace(year=2025, month=1, day=1), WINDOW[1]))
    last, first = tmp_path / "last.parquet", tmp_path / "first.parquet"
    assert main([store, str(last)]) == 0
    assert main([store, str(first), "--time", "2024-01-01"]) == 0
    assert (gpd.read_parquet(last).pooled_model_status == Status.PENDING).all()
    np.testing.assert_array_equal(
        gpd.read_parquet(first).pooled_model_status, written.status["pooled_model"]
    )


def test_to_parquet__a_time_entry_the_store_lacks_exits_2(written, tmp_path, capsys):
    assert main([written.path, str(tmp_path / "x.parquet"), "--time", "2023-01-01"]) == 2
    assert "no time entry starting 2023-01-01; it has 2024-01-01" in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists()


def test_to_parquet__a_path_that_is_not_a_store_exits_2_with_one_line(tmp_path, capsys):
    assert main([str(tmp_path), str(tmp_path / "x.parquet")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a swath store" in err
