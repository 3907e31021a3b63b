"""OlmoEarth v1 Nano exported by the command line from 12 monthly Sentinel-2 composites of a
static catalog (the demo's sample, which spans every month, with the bands it lacks made up,
as tests/flows/test_tessera_otf_export.py builds it), with random weights: the tile-series
path from the catalog to the store, pooled and grid."""

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from embedders.spec import Status
from flows.cli import main
from tasks.sources.demo import build_demo_catalog
from tasks.store.layout import read_meta
from tests.flows.test_tessera_otf_export import INSIDE, MISSING, _add_s1_scene, _add_s2_bands

PATCH = 64  # one OlmoEarth tile


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = build_demo_catalog(tmp_path_factory.mktemp("olmoearth")).parent
    rng = np.random.default_rng(24)
    _add_s2_bands(root, rng, (*MISSING, "B01", "B09"))
    _add_s1_scene(root, rng)  # one Sentinel-1 scene, in April
    return root / "catalog.json"


def _export(
    catalog: Path, out: Path, work: Path, output: str, model: str = "olmoearth_nano"
) -> int:
    west, south, east, north = INSIDE
    return main(["--catalog", str(catalog), "--out", str(out), "--work-dir", str(work),
                 "--models", model, "--weights", "random", "--output", output,
                 "--start", "2024-01-01", "--end", "2024-12-31",
                 "--bbox", f"{west},{south},{east},{north}", "--spacing", "400",
                 "--patch-size", str(PATCH), "--batch-size", "3"])  # fmt: skip


def test_olmoearth_export__grid_and_pooled_from_monthly_sentinel2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, catalog: Path
) -> None:
    work = tmp_path / "work"
    grid_out, pooled_out = tmp_path / "grid.zarr", tmp_path / "pooled.zarr"
    assert _export(catalog, grid_out, work, "grid") == 0, capsys.readouterr()
    assert _export(catalog, pooled_out, work, "pooled") == 0, capsys.readouterr()
    grid_ds, pooled_ds = xr.open_zarr(grid_out), xr.open_zarr(pooled_out)
    n = grid_ds.sizes["point"]
    grid, pooled = grid_ds["olmoearth_nano"].values[0], pooled_ds["olmoearth_nano"].values[0]
    assert n >= 4 and grid.shape == (n, 128, 8, 8) and pooled.shape == (n, 128)
    for ds in (grid_ds, pooled_ds):
        assert (ds["olmoearth_nano_status"].values == Status.OK).all()
    assert np.isfinite(grid).all() and np.isfinite(pooled).all()
    # one tile a patch: pooled is the mean of its grid
    np.testing.assert_allclose(pooled, grid.mean(axis=(2, 3)), rtol=1e-4, atol=1e-4)
    assert not np.allclose(pooled[0], pooled[1], atol=1e-4)
    model = read_meta(str(grid_out))["models"]["olmoearth_nano"]
    assert "monthly" in str(model) and "tile-series" in str(model) and "random" in str(model)
    inputs = zarr.open_group(str(next(work.rglob("inputs.zarr"))), mode="r")
    (group,) = inputs.group_keys()  # the second export reads the fetch of the first
    chunk = next(iter(inputs[group].group_keys()))  # type: ignore[union-attr]
    assert len(inputs[group][chunk].attrs["steps"]) == 12  # type: ignore[index]


def test_olmoearth_export__sentinel1_as_a_second_modality(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, catalog: Path
) -> None:
    """April's Sentinel-1 scene fills the other months at each pixel (tile_series)."""
    out, work = tmp_path / "s2s1.zarr", tmp_path / "work"
    code = _export(catalog, out, work, "pooled", "olmoearth_nano_s2s1")
    assert code == 0, capsys.readouterr()
    ds = xr.open_zarr(out)
    pooled = ds["olmoearth_nano_s2s1"].values[0]
    assert pooled.shape == (ds.sizes["point"], 128) and np.isfinite(pooled).all()
    assert (ds["olmoearth_nano_s2s1_status"].values == Status.OK).all()
    model = read_meta(str(out))["models"]["olmoearth_nano_s2s1"]
    assert "sentinel-1" in str(model)
    inputs = zarr.open_group(str(next(work.rglob("inputs.zarr"))), mode="r")
    assert len(list(inputs.group_keys())) == 2  # one series per sensor
