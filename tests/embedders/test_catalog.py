"""The contract every registered model keeps, on tiny inputs, with seeded random weights.

One build per model (a module-scoped fixture, one model in memory at a time): pooled and
grid outputs of the documented shapes, results that do not depend on the batch size, the
pooled vector equal to the library's own forward on the same normalised input
(tests/embedders/library_reference.py), and bf16 through the guard (embedders.precision)
for all but the ViT-Large models, skipped for time (~1 s per bf16 tile each on 2 cores; the
benchmark measures them). Everything here is derived from the registry: a new model needs
no line here. Pixel time-series models keep the same contract through their own engine
(tests/embedders/test_pixels.py).
"""

import os
from collections.abc import Callable
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
from torchgeo.models.resnet import _mean_s2

from embedders import precision, registry, ssl4eo_ms, tiling
from embedders.engine import embed_images
from embedders.spec import Embedder, InferenceOptions, ModelSpec, Status
from embedders.weights import member
from tasks.sources import sensors
from tests.embedders.library_reference import REFERENCES, library_pooled

CPU = torch.device("cpu")
TILE_MODELS = [name for name, entry in registry.MODELS.items() if entry.spec.takes == "tiles"]
# ViT-Large and wider transformers: too slow in bf16 for the suite here (~1 s per tile)
NO_BF16_TEST = {
    name
    for name, entry in registry.MODELS.items()
    if not entry.spec.convolutional and entry.spec.embed_dim >= 1024
}


@pytest.fixture(scope="module", params=TILE_MODELS)
def model(request: pytest.FixtureRequest) -> Embedder:
    return registry.build(request.param, "random", CPU)


def _images(embedder: Embedder, make_image: Callable[..., np.ndarray]) -> list[np.ndarray]:
    """A patch of two tiles across (overlapping) and a patch smaller than one tile."""
    spec = embedder.spec
    c, t = len(spec.channels()), spec.tile_px
    return [make_image(1, 24, t + t // 4, bands=c), make_image(2, 20, 20, bands=c)]


def test_model__pooled_and_grid_do_not_depend_on_the_batch_size(
    model: Embedder, make_image: Callable[..., np.ndarray]
) -> None:
    spec = model.spec
    images = _images(model, make_image)
    one = InferenceOptions(input_prep="tile", output="grid", batch_size=1)
    many = InferenceOptions(input_prep="tile", output="grid", batch_size=3)
    a, b = embed_images(model, images, one, CPU), embed_images(model, images, many, CPU)
    assert a.status.tolist() == [Status.OK, Status.OK]
    assert a.pooled.shape == (2, spec.embed_dim) and np.isfinite(a.pooled).all()
    gh, gw = tiling.grid_shape(spec, one, 24, spec.tile_px + spec.tile_px // 4)
    assert a.grid is not None and a.grid.shape[:2] == (2, spec.embed_dim)
    assert a.grid.shape[2:] == (gh, gw) and np.isfinite(a.grid[0]).all()
    np.testing.assert_allclose(a.pooled, b.pooled, rtol=1e-4, atol=1e-5)
    assert b.grid is not None
    np.testing.assert_allclose(a.grid, b.grid, rtol=1e-4, atol=1e-4, equal_nan=True)


def test_model__pooled_is_the_library_forward_on_the_same_input(model: Embedder) -> None:
    spec = model.spec
    if type(model) not in REFERENCES:
        pytest.skip(f"{spec.name}: no library reference here; its own test checks its forward")
    rng = np.random.default_rng(7)
    tiles = torch.from_numpy(
        rng.normal(0, 1, (2, len(spec.channels()), spec.tile_px, spec.tile_px))
    )
    tiles = tiles.float()
    with torch.inference_mode():
        pooled, grid = model.forward(tiles)
        expected = library_pooled(model, tiles)
    side = spec.tile_px // spec.grid_stride_px
    assert grid.shape == (2, spec.embed_dim, side, side)
    torch.testing.assert_close(pooled, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(pooled[0], pooled[1])  # the input reaches the output


@pytest.mark.parametrize("name", sorted(set(TILE_MODELS) - NO_BF16_TEST))
def test_model__bf16_passes_the_guard_and_stays_close_to_fp32(
    name: str, make_image: Callable[..., np.ndarray]
) -> None:
    embedder = registry.build(name, "random", CPU)
    report = precision.check_precision(embedder, "bf16", CPU, probe_tiles=2)
    assert report.cosine >= precision.COSINE_THRESHOLD, report
    image = [make_image(5, 30, 30, bands=len(embedder.spec.channels()))]
    fp32 = embed_images(embedder, image, InferenceOptions(), CPU).pooled
    bf16 = embed_images(embedder, image, InferenceOptions(precision="bf16"), CPU).pooled
    assert precision.min_cosine(fp32.astype(np.float64), bf16.astype(np.float64)) >= 0.99


def _torchgeo_url(spec: ModelSpec) -> str | None:
    """The URL of the torchgeo weights enum member the spec names; None for a model that
    has no weights enum (its weights are a local checkpoint)."""
    try:
        return str(member(spec.pretrained_weights).url)
    except ValueError:
        return None


@pytest.mark.parametrize("name", list(registry.MODELS))
def test_spec__checkpoint_is_the_file_name_of_the_weights_url(name: str) -> None:
    spec = registry.get_spec(name)
    url = _torchgeo_url(spec) or spec.weights_url
    assert spec.weights_url == url
    assert spec.checkpoint == os.path.basename(urlparse(url).path)


@pytest.mark.parametrize("name", list(registry.MODELS))
def test_spec__bands_are_level_2a_bands(name: str) -> None:
    spec = registry.get_spec(name)
    known = (
        sensors.L2A_BANDS if spec.sensor == "sentinel-2-l2a" else sensors.SENSORS[spec.sensor].bands
    )
    assert set(spec.bands) <= set(known)
    for sensor, more in spec.more_sensors:
        assert set(more) <= set(sensors.SENSORS[sensor].bands)


def test_ssl4eo_ms__specs_take_l2a_bands_in_the_weights_order_but_b10() -> None:
    specs = [s for s in registry.list_specs() if s.name.startswith("ssl4eo_") and "_s2_" in s.name]
    assert len(specs) == 6
    for spec in specs:
        weights = member(spec.pretrained_weights)
        l1c = [f"B{b[1:].upper():0>2}" for b in weights.meta["bands"]]  # "B8a" -> "B8A"
        assert l1c == list(sensors.ALL_BANDS) and weights.meta["in_chans"] == 13
        assert list(spec.bands) == [b for b in l1c if b != "B10"]
        normalize = weights.transforms[-1]  # torchgeo's transform for these weights
        assert spec.norm_mean == tuple(normalize.mean) * 12
        assert spec.norm_std == tuple(float(s) for s in normalize.std) * 12
    assert _mean_s2[sensors.ALL_BANDS.index("B10")] == ssl4eo_ms.B10_FILL_DN


def test_ssl4eo_ms__b10_goes_between_b09_and_b11() -> None:
    tiles = torch.arange(12.0).reshape(1, 12, 1, 1)
    filled = ssl4eo_ms.with_b10(tiles).flatten().tolist()
    assert filled[:10] == list(range(10)) and filled[11:] == [10.0, 11.0]
    assert filled[10] == pytest.approx(22.0 / 10000)
