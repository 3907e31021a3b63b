"""The README's first command, exactly as a user runs it: `python -m flows.export`, no arguments,
on a machine with no network and an empty cache."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import xarray as xr

from embedders.spec import Status
from tests.waiting import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[2]


def test_demo__runs_offline_with_no_arguments(tmp_path):
    env = {
        **os.environ,
        "HOME": str(tmp_path / "home"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "PYTHONPATH": str(ROOT),
    }
    env.pop("PREFECT_API_URL", None)  # the embedded API, as a user gets it
    proc = subprocess.run(
        [sys.executable, "-m", "flows.export"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "RANDOM WEIGHTS" in out  # no hub here: said loudly, never silent
    assert "open_store" in out
    # Quiet by default: no torch hub "Downloading:" line offline, each weights reason once,
    # no Prefect log lines, and a progress bar.
    assert "Downloading" not in out
    assert out.count("download failed") == 2, out  # once per model
    assert "| INFO" not in out and "| WARNING" not in out
    assert "swath: written" in out and "4/4 (chunk, model) pairs" in out
    assert " left" not in out, "a finished bar has no time left to tell"
    # One duration: the bar ends on the summary's (both from the command's start).
    bar = re.search(r"pairs in (\d+):(\d\d):(\d\d)", out)
    said = re.search(r"swath: 59 points, 2 chunks, ([\d.]+) s", out)
    assert bar and said, out[-2000:]
    h, m, s = (int(g) for g in bar.groups())
    assert h * 3600 + m * 60 + s == round(float(said.group(1))), out[-2000:]
    assert not (tmp_path / "swath-demo.zarr.lock").exists(), "the lock file outlived the run"
    ds = xr.open_zarr(tmp_path / "swath-demo.zarr")
    assert ds.sizes["point"] == 59
    for model in ("dofa_base", "ssl4eo_resnet18_rgb"):
        assert np.isfinite(ds[model].values).all()
        assert (ds[f"{model}_status"].values == Status.OK).all()
    assert (tmp_path / "cache" / "swath" / "demo-catalog-v1" / "catalog.json").exists()
