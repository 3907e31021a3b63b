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
from flows.to_parquet import main, write_parquet
from tasks.store.layout import add_window
from tests.stores import MODELS, WINDOW, Written, write_store, write_wide_store


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


def test_write_parquet__row_groups_hold_the_rows_and_metadata_of_one_group(
    written, parquet, tmp_path
):
    out = tmp_path / "groups.parquet"
    assert write_parquet(written.path, str(out), None, group_bytes=1_000) == (
        41,
        [m.name for m in MODELS],
    )
    assert pq.ParquetFile(out).num_row_groups > 1
    assert pq.ParquetFile(parquet).num_row_groups == 1
    assert pq.read_table(out).equals(pq.read_table(parquet))
    assert pq.read_schema(out).metadata == pq.read_schema(parquet).metadata
    assert not list(tmp_path.glob("*.partial"))


PARQUET_SCRIPT = """
import sys
from flows.to_parquet import write_parquet
from tests.memory import peak_kib

write_parquet(sys.argv[1], sys.argv[2], None, group_bytes=2**20)
print(peak_kib())
"""


def test_write_parquet__memory_does_not_grow_with_the_store(tmp_path):
    # before, the whole table was built in memory: the process peaked 1.5x higher for
    # 200,000 points of 64 dims than for 20,000 (and the point ids were decoded a stored
    # chunk of 262,144 at a time: 1.2x, with row groups)
    import subprocess
    import sys

    small = write_wide_store(
        tmp_path / "s.zarr", 20_000, 64, lambda lon, lat: np.ones((len(lon), 64))
    )
    large = write_wide_store(
        tmp_path / "l.zarr", 200_000, 64, lambda lon, lat: np.ones((len(lon), 64))
    )
    assert large >= 9.5 * small
    root = Path(__file__).resolve().parents[2]
    peaks = []
    for name in ("s", "l"):
        args = [str(tmp_path / f"{name}.zarr"), str(tmp_path / f"{name}.parquet")]
        run = subprocess.run(
            [sys.executable, "-c", PARQUET_SCRIPT, *args],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        )
        peaks.append(int(run.stdout.split()[-1]))
    assert pq.ParquetFile(tmp_path / "l.parquet").metadata.num_rows == large
    assert peaks[1] <= 1.2 * peaks[0], f"{peaks[1] / 1024:.0f} MiB vs {peaks[0] / 1024:.0f} MiB"
