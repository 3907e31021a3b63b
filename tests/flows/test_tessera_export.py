"""Tessera and an on-the-fly model into one store: a Tessera store in geotessera's layout
over the demo region, served on 127.0.0.1, beside the demo STAC catalog."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from embedders.spec import Status
from flows.export import export
from flows.params import Imagery, Inference, Output, Region, Window
from tasks.store.layout import open_store, read_meta
from tests.fakes import Request, serve_directory
from tests.tessera_data import DEMO, TesseraStore, build_tessera_store, expected_patch

INSIDE = (-67.655, -47.858, -67.63, -47.850)
PATCH = 32


@pytest.fixture(scope="module")
def tessera_demo(tmp_path_factory) -> Iterator[tuple[TesseraStore, str, list[Request]]]:
    root = tmp_path_factory.mktemp("tessera-demo")
    store = build_tessera_store(root, DEMO)
    log: list[Request] = []
    with serve_directory(root, log=log) as base:
        yield store, f"{base}/tessera.zarr", log


def params(tmp_path: Path, catalog: str, tessera_url: str, models: list[str]) -> dict:
    return {
        "region": Region(bbox=INSIDE, spacing_m=400),
        "window": Window(),
        "imagery": Imagery(catalog=catalog, patch_px=PATCH, tessera_store=tessera_url),
        "inference": Inference(models=models, weights="random", batch_size=4),
        "output": Output(
            store=str(tmp_path / "e.zarr"), work_dir=str(tmp_path / "work"), chunk_size=4
        ),
    }


def test_tessera_export__with_a_model_writes_one_store_of_hand_computed_means(
    tmp_path, served_demo, tessera_demo
):
    store, url, log = tessera_demo
    p = params(tmp_path, served_demo.url, url, ["tessera", "ssl4eo_resnet18_rgb"])
    summary = export(**p)
    assert summary["all_ok"], summary
    with open_store(summary["store"]) as ds:
        assert ds["tessera"].shape == (1, ds.sizes["point"], 128)
        assert (ds["tessera_status"].values == Status.OK).all()
        assert np.isfinite(ds["ssl4eo_resnet18_rgb"].values).all()
        ids = ds.point_id.values
        vectors = ds["tessera"].values[0]
    identity = read_meta(summary["store"])["models"]["tessera"]
    for pid, vector in zip(ids, vectors, strict=True):
        epsg, x, y = (int(v) for v in pid.split("-"))
        patch = expected_patch(store, epsg, x, y, PATCH).reshape(-1, 128).astype(np.float64)
        by_hand = np.nanmean(patch, axis=0)
        np.testing.assert_allclose(vector, by_hand, rtol=1e-6, atol=1e-7, err_msg=pid)
    assert identity["dataset"] == "https://geotessera.org/model/1.1"
    assert identity["store"] == url
    # A rerun resumes: Tessera is not read again.
    before = len(log)
    again = export(**p)
    assert again["all_ok"] and len(log) == before
