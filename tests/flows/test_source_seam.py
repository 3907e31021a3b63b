"""The imagery-source seam, end to end through the public seam only: a package that swath
does not know declares a source (`swath.sources` entry point: one module, one line), with a
setting of its own; `python -m flows.export --source toy` offers its flag, hands it the
setting and stores embeddings of what it served."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from tests.plugin_site import install
from tests.waiting import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[2]

TOY_SOURCE = '''
from typing import Annotated

import numpy as np
from pydantic import Field

from tasks.options import Flag, Options
from tasks.sources.registry import Patches, SourceEntry, own_options


class ToyOptions(Options):
    toy_value: Annotated[float, Flag("--toy-value", "DN", "toy: every pixel's value")] = Field(
        500.0, description="toy: the value of every pixel it serves"
    )


class ToySource:
    """Serves a constant raster: every pixel of every band is `toy_value`."""

    def fetch(self, points, bands, config):
        value = own_options(config, ToyOptions).toy_value
        n = config.patch_px
        pixels = {b: np.full((len(points), n, n), value, np.float32) for b in bands}
        return Patches(tuple(p.id for p in points), pixels)

    def check(self, bands, config):
        return None

    def plain_http(self, config):
        return set()


ENTRY = SourceEntry("toy_source:ToySource", ToyOptions, {"sentinel-2-l2a": "toy-s2"})
'''


def _run(site: Path, tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{site}"}
    env.pop("PREFECT_API_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "flows.export", *flags],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )


def test_source_seam__a_toy_source_installed_by_another_package_runs_an_export(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    install(site, "toy_source", "swath.sources", {"toy": "toy_source:ENTRY"}, TOY_SOURCE)

    helped = _run(site, tmp_path, "--help")
    assert "--toy-value DN" in helped.stdout and "toy: every pixel's value (500)" in helped.stdout

    out, work = tmp_path / "toy.zarr", tmp_path / "work"
    proc = _run(
        site,
        tmp_path,
        *("--source", "toy", "--toy-value", "1234", "--models", "ssl4eo_resnet18_rgb"),
        *("--weights", "random", "--bbox", "-67.660,-47.861,-67.652,-47.857"),
        *("--out", str(out), "--work-dir", str(work), "--patch-size", "32"),
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]

    # The toy's setting reached it: every band the model read holds the toy's value.
    inputs = zarr.open_group(str(work / "inputs.zarr"), mode="r")
    (config,) = list(inputs.groups())
    assert config[1].attrs["config"]["source"] == "toy"
    assert config[1].attrs["config"]["collection"] == "toy-s2"
    bands = [a for _, chunk in config[1].groups() for _, a in chunk.arrays()]
    assert {b.name.rsplit("/", 1)[-1] for b in bands} == {"B02", "B03", "B04"}
    assert all(np.unique(b[:]).tolist() == [1234] for b in bands)

    # Every point is ok, and a constant raster gives every point the same embedding.
    ds = xr.open_zarr(out)
    emb = ds["ssl4eo_resnet18_rgb"].isel(time=0).values
    assert len(emb) > 1 and np.isfinite(emb).all()
    np.testing.assert_allclose(emb, np.broadcast_to(emb[0], emb.shape), rtol=1e-5, atol=1e-6)


def test_source_seam__another_sources_setting_is_refused_with_the_toy(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    install(site, "toy_source", "swath.sources", {"toy": "toy_source:ENTRY"}, TOY_SOURCE)
    proc = _run(site, tmp_path, "--source", "toy", "--catalog", "x.json", "--dry-run")
    assert proc.returncode == 2
    assert "--catalog is for --source stac-catalog, and the source is toy" in proc.stderr
    assert "Traceback" not in proc.stderr
