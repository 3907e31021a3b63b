"""Quick-look maps: a PNG per model and time entry, PCA colours of the ok points, the region's
outline and a legend of status counts."""

import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from embedders.spec import Status
from tasks.store.layout import open_store
from tasks.store.quicklook import (
    SIZE_PX,
    pca_rgb,
    quicklook_dir,
    read_maps,
    render,
    write_quicklooks,
)
from tasks.store.reading import pooled
from tests.stores import MODELS, Written, write_store, write_wide_store


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
    assert grid.counts == {"pending": 1, "ok": 38, "failed": 1, "nodata": 1}  # of 41 points
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


def test_read_maps__colours_read_a_block_at_a_time_equal_those_of_one_read(written):
    # blocks of one stored chunk (8 points) each: the PCA is fitted from summed outer
    # products over 6 blocks, and the colours are the same as from all vectors at once
    with open_store(written.path) as ds:
        vectors = pooled(ds, "pooled_model", 0)
    ok = written.status["pooled_model"] == Status.OK
    (m,) = [m for m in read_maps(written.path, 0, block_bytes=1) if m.model == "pooled_model"]
    np.testing.assert_allclose(m.rgb[ok], pca_rgb(vectors[ok]), atol=1e-9)
    assert m.side_m == 250.0 and len(m.lon) == len(ok)


def east_west(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """16-dim vectors that vary along one direction with longitude, plus a little noise."""
    rng = np.random.default_rng(0)
    noise = 0.01 * rng.standard_normal((len(lon), 16))
    return (lon - lon.mean())[:, None] * 100 * rng.standard_normal(16) + noise


def noise_64(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((len(lon), 64))


def test_read_maps__a_large_store_is_drawn_as_cells_coloured_by_their_points(tmp_path: Path):
    n = write_wide_store(tmp_path / "w.zarr", 20_000, 16, east_west, failed=slice(0, 1500))
    (m,) = read_maps(str(tmp_path / "w.zarr"), 0, scatter_points=5_000, cells=50)
    assert m.counts == {"pending": 0, "ok": n - 1500, "failed": 1500, "nodata": 0}
    # 50 cells along the square region's side (a little more across: degrees of longitude
    # are shorter), none empty inside it
    assert 50 * 50 <= len(m.lon) <= 52 * 52
    ok = m.status == Status.OK
    assert abs(np.corrcoef(m.rgb[ok, 0], m.lon[ok])[0, 1]) > 0.95  # the first component
    # the failed points are the first 1500 of the plan (its rows run from the north): the
    # cells that hold no ok point are failed, and lie in the north
    failed = m.status == Status.FAILED
    assert failed.sum() >= 50 and (m.lat[failed] > np.median(m.lat)).all()
    png = render(m)
    assert png.startswith(b"\x89PNG")


def quicklook_peak(path: str) -> int:
    tracemalloc.start()
    try:
        for m in read_maps(path, 0, scatter_points=5_000, cells=60, block_bytes=2**20):
            render(m)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_read_maps__memory_does_not_grow_with_the_store(tmp_path: Path):
    # before, a quick look held every point's vector in float64 several times over:
    # 64 MiB for 20,000 points of 64 dims, 400 MiB for 200,000. Now it reads blocks of
    # 1 MiB here; what still grows is the coordinate chunk read with each block (lon and lat,
    # float64, at most 262,144 points: 4 MiB)
    small = write_wide_store(tmp_path / "s.zarr", 20_000, 64, noise_64)
    large = write_wide_store(tmp_path / "l.zarr", 200_000, 64, noise_64)
    assert large >= 9.5 * small
    quicklook_peak(str(tmp_path / "s.zarr"))  # first-time costs (fonts, imports) out of the way
    peaks = [quicklook_peak(str(tmp_path / name)) for name in ("s.zarr", "l.zarr")]
    grown = (peaks[1] - peaks[0]) / 2**20
    assert grown < 4.0, f"{grown:.1f} MiB more for 10x the points ({peaks[0] / 2**20:.1f} MiB)"
