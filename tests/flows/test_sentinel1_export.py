"""Sentinel-1 end to end: the command line exports `dofa_base_s1` from a static catalog of S1
COGs (Planetary Computer's shape: linear power, -32768 nodata), and one store holds an S2 model
and the S1 model side by side, each sensor fetched once into its own inputs group."""

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pystac
import pytest
import xarray as xr
import zarr

from embedders.spec import Status
from flows.cli import main
from flows.export import export
from flows.params import Imagery, Inference, Output, Region, Window
from tasks.sources.demo import (
    DEMO_BBOX,
    DEMO_EPSG,
    DEMO_GEOMETRY,
    build_demo_catalog,
    demo_footprint_utm,
)
from tasks.store.layout import read_meta
from tests.rasters import write_cog
from tests.stac_api_server import S1_NODATA, Scene, s1_item

INSIDE = (-67.655, -47.858, -67.63, -47.850)  # inside the demo sample: 10 points at 400 m


@pytest.fixture(scope="module")
def s1_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo catalog (Sentinel-2) with a Sentinel-1 RTC item over the same footprint."""
    root = build_demo_catalog(tmp_path_factory.mktemp("s1demo")).parent
    box = demo_footprint_utm()
    width, height = round((box.right - box.left) / 10), round((box.top - box.bottom) / 10)
    rng = np.random.default_rng(24)
    scene = Scene("S1A_IW_GRDH_1SDV_20240419_fake_rtc", 19, sensor="s1")
    item = pystac.Item.from_dict(s1_item(scene, "http://unused", "http://unused"))
    when = datetime(2024, 4, 19, 10, tzinfo=UTC)  # in the default window, 2024
    item.datetime = item.common_metadata.start_datetime = item.common_metadata.end_datetime = when
    item.geometry, item.bbox = DEMO_GEOMETRY.json, list(DEMO_BBOX)
    item.clear_links()
    folder = root / scene.id
    folder.mkdir()
    for k, key in enumerate(("vv", "vh")):
        db = rng.normal(-12.0 - 8.0 * k, 3.0, (height, width))
        power = np.power(10.0, db / 10.0).astype(np.float32)
        power[:4, :4] = S1_NODATA
        write_cog(folder / f"{key}.tif", power, epsg=DEMO_EPSG, x0=box.left, y0=box.top,
                  res=10.0, nodata=S1_NODATA)  # fmt: skip
        item.assets[key].href = str(folder / f"{key}.tif")
    catalog = pystac.read_file(str(root / "catalog.json"))
    assert isinstance(catalog, pystac.Catalog)
    catalog.add_item(item)
    catalog.normalize_and_save(str(root), pystac.CatalogType.SELF_CONTAINED)
    return root / "catalog.json"


def test_s1_export__the_command_line_exports_dofa_on_sentinel_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, s1_catalog: Path
) -> None:
    out = tmp_path / "s1.zarr"
    west, south, east, north = INSIDE
    code = main(["--catalog", str(s1_catalog), "--out", str(out), "--work-dir",
                 str(tmp_path / "work"), "--models", "dofa_base_s1", "--weights", "random",
                 "--bbox", f"{west},{south},{east},{north}", "--spacing", "400",
                 "--patch-size", "32", "--batch-size", "4"])  # fmt: skip
    assert code == 0, capsys.readouterr()
    ds = xr.open_zarr(out)
    n = ds.sizes["point"]
    assert n >= 4 and ds["dofa_base_s1"].shape == (1, n, 768)
    assert (ds["dofa_base_s1_status"].values == Status.OK).all()
    assert np.isfinite(ds["dofa_base_s1"].values).all()
    model = read_meta(str(out))["models"]["dofa_base_s1"]
    assert "sentinel-1" in str(model) and "sentinel-1-rtc" in str(model)


def test_s1_export__one_store_holds_an_s2_and_an_s1_model_one_fetch_per_sensor(
    tmp_path: Path, s1_catalog: Path
) -> None:
    work = tmp_path / "work"
    summary = export(
        region=Region(bbox=INSIDE, spacing_m=400),
        window=Window(),
        imagery=Imagery(catalog=str(s1_catalog), patch_px=32),
        inference=Inference(models=["dofa_base", "dofa_base_s1"], weights="random", batch_size=4),
        output=Output(store=str(tmp_path / "both.zarr"), work_dir=str(work), chunk_size=4),
    )
    ds = xr.open_zarr(summary["store"])
    for name in ("dofa_base", "dofa_base_s1"):
        assert ds[name].shape == (1, ds.sizes["point"], 768)
        assert (ds[f"{name}_status"].values == Status.OK).all(), name
    assert not np.allclose(ds["dofa_base"].values, ds["dofa_base_s1"].values)
    inputs = next(work.rglob("inputs.zarr"))
    groups = sorted(zarr.open_group(str(inputs), mode="r").group_keys())
    assert [g.split("-")[1] for g in groups] == ["1", "2"], groups  # sentinel-1-..., -2-l2a-...
    s1 = zarr.open_group(str(inputs), mode="r")[groups[0]]
    chunk = next(iter(s1.group_keys()))
    vv = s1[chunk]["VV"]  # type: ignore[index]
    assert vv.dtype == np.dtype("int16") and vv.attrs["encoding"]["scale"] == 0.01
    assert -20.0 < float(np.nanmedian(np.where(vv[:] == -32768, np.nan, vv[:] * 0.01))) < -4.0
