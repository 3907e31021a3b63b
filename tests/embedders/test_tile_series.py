"""The catalog contract for models that take tiles of a time series (embedders/tile_series.py),
on small seeded series with seeded random weights: pooled and grid, batch 1 == batch 3, parity
with the library's own forward on the same input, bf16 through the guard, a fake checkpoint
loaded and changing the output; and how missing steps are filled. Derived from the registry:
the heavy checks run on the smallest model of each family (OlmoEarth Nano)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from embedders import olmoearth, precision, registry
from embedders.spec import Embedder, InferenceOptions, Status
from embedders.tile_series import embed_tile_series, fill_steps, flat_spec
from embedders.weights import checkpoint_path, member

CPU = torch.device("cpu")
SERIES_MODELS = [n for n, e in registry.MODELS.items() if e.spec.takes == "tile-series"]
# Base is Nano's code at 6x the width: too slow for every check here
CONTRACT_MODELS = ["olmoearth_nano", "olmoearth_nano_s2s1"]
MIDDLE_DAYS = np.array([15, 46, 74, 105, 135, 166, 196, 227, 258, 288, 319, 349], np.float32)
# A tile's vector is its own forward; at another batch size the float32 matrix products may
# block differently.
BATCH_ATOL = 1e-5


@pytest.fixture(scope="module", params=CONTRACT_MODELS)
def model(request: pytest.FixtureRequest) -> Embedder:
    return registry.build(request.param, "random", CPU)


def _series(
    embedder: Embedder, n: int = 2, h: int = 64, w: int = 72, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded smooth series in the sources' units (Sentinel-2 digital numbers, Sentinel-1 dB),
    and each step's middle day."""
    spec = embedder.spec
    assert spec.steps is not None
    steps, c = spec.steps.count, len(spec.bands)
    rng = np.random.default_rng(seed)
    base = rng.uniform(300, 4000, (n, steps, c, 1, 1))
    ramp = np.linspace(0, 1, h)[:, None] * np.linspace(0, 1, w)[None, :]
    noise = rng.normal(0, 150, (n, steps, c, h, w))
    parts = [base * (0.6 + 0.8 * ramp) + noise]
    if spec.more_sensors:
        parts.append(rng.normal(-14, 4, (n, steps, 2, h, w)))
    values = np.concatenate(parts, axis=2).astype(np.float32)
    days = np.tile(MIDDLE_DAYS[:steps], (n, 1))
    return values, days


def test_model__pooled_and_grid_do_not_depend_on_the_batch_size(model: Embedder) -> None:
    spec = model.spec
    values, days = _series(model)
    values[0, 3:6, :, 10:20, 10:20] = np.nan  # cloudy months: filled from the valid ones
    a = embed_tile_series(model, values, days, InferenceOptions("tile", "grid", batch_size=1), CPU)
    b = embed_tile_series(model, values, days, InferenceOptions("tile", "grid", batch_size=3), CPU)
    assert a.status.tolist() == [Status.OK] * 2 and a.valid_fraction.tolist() == [1.0] * 2
    assert a.pooled.shape == (2, spec.embed_dim) and np.isfinite(a.pooled).all()
    assert a.grid is not None and b.grid is not None and a.grid.shape == (2, spec.embed_dim, 8, 9)
    assert np.isfinite(a.grid).all()
    np.testing.assert_allclose(a.grid, b.grid, rtol=0, atol=BATCH_ATOL)
    np.testing.assert_allclose(a.pooled, b.pooled, rtol=0, atol=BATCH_ATOL)
    pooled = embed_tile_series(model, values, days, InferenceOptions("tile", batch_size=3), CPU)
    assert pooled.grid is None
    np.testing.assert_allclose(pooled.pooled, b.pooled, rtol=0, atol=BATCH_ATOL)
    assert not np.allclose(a.pooled[0], a.pooled[1], atol=1e-3)  # the input reaches the output


def _olmoearth_library(embedder: Embedder, values: np.ndarray, days: np.ndarray) -> np.ndarray:
    """The library's own path on the first point: its Normalizer on source units, its sample
    with (day, month, year) timestamps, its encoder and its spatial mean pooling."""
    from olmoearth_pretrain_minimal import Normalizer
    from olmoearth_pretrain_minimal.olmoearth_pretrain_v1.nn.flexi_vit import PoolingType
    from olmoearth_pretrain_minimal.olmoearth_pretrain_v1.utils.constants import Modality
    from olmoearth_pretrain_minimal.olmoearth_pretrain_v1.utils.datatypes import (
        MaskedOlmoEarthSample,
    )

    x = values[:1].transpose(0, 3, 4, 1, 2).astype(np.float64)  # (1, H, W, T, C)
    fields = {}
    for modality, part, band_sets in (
        (Modality.SENTINEL2_L2A, x[..., :12], 3),
        (Modality.SENTINEL1, x[..., 12:], 1),
    ):
        if part.shape[-1]:
            normalised = torch.from_numpy(Normalizer().normalize(modality, part)).float()
            fields[modality.name] = normalised
            mask = torch.zeros((*normalised.shape[:4], band_sets), dtype=torch.long)
            fields[f"{modality.name}_mask"] = mask
    months = [int(np.searchsorted(olmoearth._MONTH_STARTS, d, side="right")) - 1 for d in days[0]]
    stamps = torch.tensor([[[15, m, 2024] for m in months]])
    sample = MaskedOlmoEarthSample(timestamps=stamps, **fields)
    encoder = embedder.module.model.encoder  # type: ignore[attr-defined]
    out = encoder(sample, patch_size=olmoearth.PATCH_PX, fast_pass=True)["tokens_and_masks"]
    grid = out.pool_unmasked_tokens(PoolingType.MEAN, spatial_pooling=True)
    return grid[0].permute(2, 0, 1).numpy()  # type: ignore[no-any-return]


def test_model__tiles_are_the_library_forward_on_the_same_input(model: Embedder) -> None:
    values, days = _series(model, n=1, h=64, w=64, seed=4)
    out = embed_tile_series(model, values, days, InferenceOptions("tile", "grid"), CPU)
    with torch.inference_mode():
        expected = _olmoearth_library(model, values, days)
    assert out.grid is not None
    np.testing.assert_allclose(out.grid[0], expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out.pooled[0], expected.mean((1, 2)), rtol=1e-4, atol=1e-4)


def test_model__the_steps_months_reach_the_output(model: Embedder) -> None:
    values, days = _series(model, n=1, h=64, w=64)
    shifted = np.roll(days, 3, axis=1)
    a = embed_tile_series(model, values, days, InferenceOptions("tile"), CPU).pooled
    b = embed_tile_series(model, values, shifted, InferenceOptions("tile"), CPU).pooled
    assert not np.allclose(a, b, atol=1e-4)


def test_model__bf16_passes_the_guard_and_stays_close_to_fp32(model: Embedder) -> None:
    report = precision.check_precision(model, "bf16", CPU, probe_tiles=2)
    assert report.cosine >= precision.COSINE_THRESHOLD, report
    values, days = _series(model, n=1, h=64, w=64)
    fp32 = embed_tile_series(model, values, days, InferenceOptions("tile"), CPU).pooled
    options = InferenceOptions("tile", precision="bf16")
    bf16 = embed_tile_series(model, values, days, options, CPU).pooled
    assert precision.min_cosine(fp32.astype(np.float64), bf16.astype(np.float64)) >= 0.99


@pytest.mark.parametrize("name", SERIES_MODELS)
def test_pretrained__a_checkpoint_in_the_hub_cache_is_loaded_and_changes_the_output(
    name: str, hub: Path
) -> None:
    random = registry.build(name, "random", CPU)
    path = checkpoint_path(member(random.spec.pretrained_weights))
    path.parent.mkdir(parents=True)
    g = torch.Generator().manual_seed(42)
    inner = random.module.model  # type: ignore[attr-defined]  # torchgeo prefixes "model."
    state = inner.state_dict()
    torch.save({k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in state.items()}, path)
    assert path.name == random.spec.checkpoint
    loaded = registry.build(name, "pretrained", CPU)
    assert loaded.weights.kind == "pretrained" and loaded.weights.file == str(path)
    x = torch.randn(1, *random.spec.sample_shape())
    c = len(random.spec.channels())
    x[:, c :: c + 1] = 100.0  # each step's day of year
    with torch.inference_mode():
        before, after = random.forward(x)[0], loaded.forward(x)[0]
    assert after.shape == (1, random.spec.embed_dim) and torch.isfinite(after).all()
    assert not torch.allclose(before, after, rtol=1e-3, atol=1e-3)


def test_fill__missing_steps_take_the_mean_of_the_pixels_valid_steps() -> None:
    values = np.arange(4 * 3 * 1 * 2, dtype=np.float32).reshape(1, 4, 3, 1, 2)
    values[0, 1, 0, 0, 0] = np.nan  # one band of the first sensor missing: its step is missing
    values[0, :, :2, 0, 1] = np.nan  # a pixel with no valid step of a sensor stays NaN there
    filled = fill_steps(values, (2, 1))
    valid = values[0, [0, 2, 3], :2, 0, 0]
    np.testing.assert_allclose(filled[0, 1, :2, 0, 0], valid.mean(axis=0))
    np.testing.assert_array_equal(filled[0, [0, 2, 3], :2, 0, 0], valid)
    np.testing.assert_array_equal(filled[0, :, 2], values[0, :, 2])  # the other sensor's own
    assert np.isnan(filled[0, :, :2, 0, 1]).all()


def test_masks__a_point_without_a_valid_pixel_in_any_step_is_nodata(model: Embedder) -> None:
    values, days = _series(model, n=2, h=64, w=64)
    values[1] = np.nan
    out = embed_tile_series(model, values, days, InferenceOptions("tile"), CPU)
    assert out.status.tolist() == [Status.OK, Status.NODATA]
    assert np.isnan(out.pooled[1]).all() and np.isfinite(out.pooled[0]).all()


def test_series__of_the_wrong_shape_is_refused_naming_steps_and_channels() -> None:
    model = registry.build("olmoearth_nano", "random", CPU)
    values, days = _series(model, n=1, h=8, w=8)
    with pytest.raises(ValueError, match=r"olmoearth_nano takes .* 12 steps and C=12 channels"):
        embed_tile_series(model, values[:, :6], days[:, :6], InferenceOptions(), CPU)
    with pytest.raises(ValueError, match=r"day_of_year must be \(points, steps\) = \(1, 12\)"):
        embed_tile_series(model, values, days[:, :6], InferenceOptions(), CPU)


def test_flat_spec__one_channel_per_step_and_band_then_its_day_of_year() -> None:
    spec = flat_spec(olmoearth.NANO_SPEC)
    assert len(spec.bands) == 12 * 13 and spec.bands[12] == "day_of_year@0"
    assert spec.bands[13] == "B02@1" and spec.norm_std[12] == 1.0 and spec.norm_mean[12] == 0.0
    assert spec.sample_shape() == olmoearth.NANO_SPEC.sample_shape() == (156, 64, 64)


def test_olmoearth__normalisation_is_the_librarys_in_swaths_units() -> None:
    from olmoearth_pretrain_minimal import Normalizer
    from olmoearth_pretrain_minimal.olmoearth_pretrain_v1.utils.constants import Modality

    assert tuple(Modality.SENTINEL2_L2A.band_order) == olmoearth.S2_BANDS
    x = np.random.default_rng(1).uniform(0, 10000, (5, 12))
    expected = Normalizer().normalize(Modality.SENTINEL2_L2A, x)
    spec = olmoearth.NANO_SPEC
    ours = (x - np.array(spec.norm_mean)) / np.array(spec.norm_std)
    np.testing.assert_allclose(ours, expected, atol=1e-5)  # statistics rounded to 0.01 DN
