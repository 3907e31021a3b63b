"""The model and product seams, through their public form only: an installed distribution
declares a toy model and a toy precomputed product as entry points (swath.models,
swath.products), and `python -m flows.export` exports both into one store."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from embedders.spec import Status
from tasks.store.layout import open_store
from tests.plugin_toys import TOY_MODEL, TOY_PRODUCT
from tests.waiting import HANG_GUARD_S

ROOT = Path(__file__).parents[2]
BIAS = [1.0, 2.0, 3.0, 4.0]


def install_toys(site: Path) -> None:
    """The toys' modules and a dist-info naming them as entry points, as pip leaves them."""
    (site / "toy_swath_model.py").write_text(TOY_MODEL)
    (site / "toy_swath_product.py").write_text(TOY_PRODUCT)
    info = site / "toy_swath-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy_swath\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[swath.models]\ntoy_model = toy_swath_model:ENTRY\n\n"
        "[swath.products]\ntoy_product = toy_swath_product:ENTRY\n"
    )


def write_checkpoint(hub: Path) -> None:
    """The toy model's pretrained weights: zero kernels, so each cell is the bias."""
    state = {"weight": torch.zeros(4, 3, 16, 16), "bias": torch.tensor(BIAS)}
    path = hub / "checkpoints" / "toy_model-v1.pt"
    path.parent.mkdir(parents=True)
    torch.save(state, path)


def test_plugins__a_toy_model_and_product_export_end_to_end(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    install_toys(site)
    write_checkpoint(tmp_path / "torch" / "hub")
    store = tmp_path / "e.zarr"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]),
        "TORCH_HOME": str(tmp_path / "torch"),
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "flows.export", "--models", "toy_model,toy_product",
         "--spacing", "500", "--out", str(store), "--work-dir", str(tmp_path / "work")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "RANDOM WEIGHTS" not in out, out[-3000:]
    with open_store(str(store)) as ds:
        n = ds.sizes["point"]
        assert ds["toy_model"].shape == (1, n, 4) and ds["toy_product"].shape == (1, n, 3)
        ok = ds["toy_model_status"].values[0] == Status.OK
        assert ok.any()
        np.testing.assert_allclose(ds["toy_model"].values[0][ok], np.tile(BIAS, (ok.sum(), 1)))
        assert (ds["toy_product_status"].values[0] == Status.OK).all()
        lonlat = np.stack([ds.lon.values, ds.lat.values, np.ones(n)], axis=1)
        np.testing.assert_allclose(ds["toy_product"].values[0], lonlat, rtol=1e-6)
        assert ds["toy_product"].attrs["geoemb:model"] == "https://example.org/toy/dataset"
    item = json.loads((tmp_path / "e.zarr.stac" / "toy_model" / "item.json").read_text())
    links = {link["rel"]: link["href"] for link in item["links"]}
    assert links["emb:model"] == "https://example.org/toy/toy_model-v1.pt"
