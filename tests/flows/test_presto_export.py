"""Presto exported from the command line on the fake Sentinel-2 + Sentinel-1 catalog of
tests/flows/test_tessera_otf_export.py, beside tessera_otf: both read the same two monthly
series (one inputs group per sensor), and each point's patch is embedded pixel by pixel."""

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from embedders.spec import Status
from flows.cli import main
from tasks.store.layout import read_meta
from tests.flows.test_tessera_otf_export import INSIDE, PATCH
from tests.flows.test_tessera_otf_export import catalog as catalog  # the fixture


def test_presto_export__beside_tessera_otf_from_the_same_series(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, catalog: Path
) -> None:
    out, work = tmp_path / "p.zarr", tmp_path / "work"
    west, south, east, north = INSIDE
    code = main(["--catalog", str(catalog), "--out", str(out), "--work-dir", str(work),
                 "--models", "presto,tessera_otf", "--weights", "random", "--output", "grid",
                 "--start", "2024-01-01", "--end", "2024-12-31",
                 "--bbox", f"{west},{south},{east},{north}", "--spacing", "400",
                 "--patch-size", str(PATCH), "--batch-size", "64"])  # fmt: skip
    assert code == 0, capsys.readouterr()
    ds = xr.open_zarr(out)
    n = ds.sizes["point"]
    grid = ds["presto"].values[0]
    assert n >= 4 and grid.shape == (n, 128, PATCH, PATCH)
    assert (ds["presto_status"].values == Status.OK).all() and np.isfinite(grid).all()
    pooled = grid.mean(axis=(2, 3))
    assert not np.allclose(pooled[0], pooled[1], atol=1e-4)  # each point its own
    model = read_meta(str(out))["models"]["presto"]
    assert "sentinel-1-rtc" in str(model) and "series_latlon" in str(model)
    inputs = zarr.open_group(str(next(work.rglob("inputs.zarr"))), mode="r")
    assert len(list(inputs.group_keys())) == 2  # presto and tessera_otf share both series
