"""CROMA's joint radar-optical encoder end to end: the command line exports `croma_base_s1s2`
from a static catalog of Sentinel-2 (the demo sample with CROMA's other bands made up) and one
Sentinel-1 RTC scene; beside `croma_base` in one run, the Sentinel-2 inputs are fetched once."""

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from embedders.spec import Status
from flows.cli import main
from flows.export import export
from flows.params import Imagery, Inference, Output, Region, Window
from tasks.sources.demo import build_demo_catalog
from tasks.store.layout import read_meta
from tests.flows.test_tessera_otf_export import _add_s1_scene, _add_s2_bands

INSIDE = (-67.655, -47.858, -67.63, -47.850)  # inside the demo sample: 10 points at 400 m
# CROMA's bands the demo sample lacks, made up (B8A replaces the asset it matches to B8A)
CROMA_MISSING = ("B01", "B05", "B06", "B07", "B08", "B8A", "B09")


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = build_demo_catalog(tmp_path_factory.mktemp("croma")).parent
    rng = np.random.default_rng(24)
    _add_s2_bands(root, rng, CROMA_MISSING)
    _add_s1_scene(root, rng)
    return root / "catalog.json"


def test_croma_s1s2_export__the_command_line_exports_the_joint_embedding(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, catalog: Path
) -> None:
    out = tmp_path / "croma.zarr"
    west, south, east, north = INSIDE
    code = main(["--catalog", str(catalog), "--out", str(out), "--work-dir",
                 str(tmp_path / "work"), "--models", "croma_base_s1s2", "--weights", "random",
                 "--bbox", f"{west},{south},{east},{north}", "--spacing", "400",
                 "--patch-size", "32", "--batch-size", "4"])  # fmt: skip
    assert code == 0, capsys.readouterr()
    ds = xr.open_zarr(out)
    n = ds.sizes["point"]
    assert n >= 4 and ds["croma_base_s1s2"].shape == (1, n, 768)
    assert (ds["croma_base_s1s2_status"].values == Status.OK).all()
    assert np.isfinite(ds["croma_base_s1s2"].values).all()
    model = str(read_meta(str(out))["models"]["croma_base_s1s2"])
    assert "sentinel-2-l2a" in model and "sentinel-1-rtc" in model


def test_croma_s1s2_export__shares_the_sentinel_2_fetch_with_croma_base(
    tmp_path: Path, catalog: Path
) -> None:
    work = tmp_path / "work"
    summary = export(
        region=Region(bbox=INSIDE, spacing_m=400),
        window=Window(),
        imagery=Imagery(catalog=str(catalog), patch_px=32),
        inference=Inference(
            models=["croma_base", "croma_base_s1s2"], weights="random", batch_size=4
        ),
        output=Output(store=str(tmp_path / "both.zarr"), work_dir=str(work), chunk_size=4),
    )
    ds = xr.open_zarr(summary["store"])
    for name in ("croma_base", "croma_base_s1s2"):
        assert ds[name].shape == (1, ds.sizes["point"], 768)
        assert (ds[f"{name}_status"].values == Status.OK).all(), name
    assert not np.allclose(ds["croma_base"].values, ds["croma_base_s1s2"].values)
    inputs = zarr.open_group(str(next(work.rglob("inputs.zarr"))), mode="r")
    groups = sorted(inputs.group_keys())
    assert [g.split("-")[1] for g in groups] == ["1", "2"], groups  # one S1, one S2 group
    s2 = inputs[groups[1]]
    chunk = next(iter(s2.group_keys()))  # type: ignore[union-attr]
    done = set(s2[chunk].attrs["bands_done"])  # type: ignore[index]
    assert {"B01", "B12"} <= done and "VV" not in done
