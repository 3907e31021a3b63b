"""Quick-look maps: a PNG per model and time entry, PCA colours of the ok points, the region's
outline and a legend of status counts."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.quicklook import SIZE_PX, pca_rgb, quicklook_dir, read_maps, write_quicklooks
from tasks.reading import pooled
from tasks.store import open_store
from tests.stores import MODELS, Written, write_store


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Written:
    return write_store(tmp_path_factory.mktemp("ql") / "e.zarr")


@pytest.fixture(scope="module")
def pngs(written: Written, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Image.Image]:
    out = tmp_path_factory.mktemp("ql-out")
    paths = write_quicklooks(written.path, str(out), 0)
    assert [os.path.basename(p) for p in paths] == [f"{m.name}-2024-01-01.png" for m in MODELS]
    return {m.name: Image.open(p).convert("RGB") for m, p in zip(MODELS, paths, strict=True)}


def saturated(image: Image.Image) -> int:
    """How many pixels have a clear colour (not black, white or grey)."""
    rgb = np.asarray(image, dtype=np.int16)
    return int(((rgb.max(axis=-1) - rgb.min(axis=-1)) > 60).sum())


def test_write_quicklooks__one_png_per_model_of_the_right_size_and_not_blank(written, pngs):
    for name, image in pngs.items():
        assert image.size == (SIZE_PX, SIZE_PX), name
        assert np.asarray(image, dtype=np.float64).var() > 100.0, f"{name} is blank"


def test_write_quicklooks__png_files_are_small(written, tmp_path):
    for path in write_quicklooks(written.path, str(tmp_path), 0):
        assert os.path.getsize(path) < 300_000, path


def test_write_quicklooks__ok_points_are_coloured(pngs):
    # pooled_model: 38 of 41 points ok; their PCA colours cover much of the map
    assert saturated(pngs["pooled_model"]) > 20_000


def test_write_quicklooks__a_model_with_no_ok_point_gets_the_legend_only(written, pngs):
    # tessera: every point is nodata (grey outlines): no PCA colour, only the legend's swatches
    assert (written.status["tessera"] == 3).all()
    assert saturated(pngs["tessera"]) < 500


def test_read_maps__grid_model_is_pooled_by_the_nanmean_over_y_x(written):
    with open_store(written.path) as ds:
        got = pooled(ds, "grid_model", 0)
    ok = written.status["grid_model"] == 1
    want = written.embeddings["grid_model"][ok].mean(axis=(2, 3))
    np.testing.assert_allclose(got[ok], want, rtol=1e-6)
    assert np.isnan(got[~ok]).all()
    grid = next(m for m in read_maps(written.path, 0) if m.model == "grid_model")
    assert (grid.status == written.status["grid_model"]).all()
    assert grid.outline is not None and grid.spacing_m == 250.0
    assert grid.note == "  (RANDOM WEIGHTS)"


def test_pca_rgb__stretches_three_components_to_0_1_the_same_way_each_time():
    vectors = np.random.default_rng(1).standard_normal((200, 16)).astype("float32")
    rgb = pca_rgb(vectors)
    assert rgb.shape == (200, 3)
    assert rgb.min() == 0.0 and rgb.max() == 1.0
    np.testing.assert_array_equal(rgb, pca_rgb(vectors.copy()))
    # the first component follows the direction of largest variance
    vectors[:, 3] *= 10
    rgb = pca_rgb(vectors)
    assert abs(np.corrcoef(rgb[:, 0], vectors[:, 3])[0, 1]) > 0.9


def test_pca_rgb__one_point_is_mid_grey():
    np.testing.assert_array_equal(pca_rgb(np.ones((1, 8))), np.full((1, 3), 0.5))


def test_quicklook_dir__beside_a_local_store_none_for_a_url(tmp_path: Path):
    assert quicklook_dir(str(tmp_path / "e.zarr/")) == f"{tmp_path}/e.zarr.quicklook"
    assert quicklook_dir("s3://bucket/e.zarr") is None
