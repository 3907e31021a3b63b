"""The catalog contract for pixel time-series models (embedders/pixels.py), on tiny series with
seeded random weights: pooled and grid, batch 1 == batch 3, parity with the library's own
forward on the same normalised input, bf16 through the guard, a fake checkpoint loaded and
changing the output; and the engine's masks and filling. Derived from the registry: a new
pixel-series model needs no line here but its library reference."""

import dataclasses
import datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchgeo.models.presto import NUM_DYNAMIC_WORLD_CLASSES, Presto
from torchgeo.models.tessera import Tessera, _tessera_transforms

from embedders import precision, registry, tessera_otf
from embedders.pixels import NODATA_REASON, PixelSeries, embed_series, pixel_stream
from embedders.spec import Embedder, InferenceOptions, ModelSpec, Status, WeightsInfo
from embedders.weights import checkpoint_path, member

CPU = torch.device("cpu")
PIXEL_MODELS = [n for n, e in registry.MODELS.items() if e.spec.takes == "pixel-series"]
# A pixel's vector is its own forward; at another batch size a forward's float32 matrix
# products may block differently: measured here, at most 1.1e-6 on vectors of norm ~20.
BATCH_ATOL = 1e-5


@pytest.fixture(scope="module", params=PIXEL_MODELS)
def model(request: pytest.FixtureRequest) -> Embedder:
    return registry.build(request.param, "random", CPU)


def _series(embedder: Embedder, n: int = 3, h: int = 3, w: int = 4, seed: int = 0) -> PixelSeries:
    """Seeded series in the sources' units: S2 digital numbers, S1 dB; every step valid."""
    spec = embedder.spec
    steps = spec.sample_shape()[0]
    rng = np.random.default_rng(seed)
    groups = spec.sensor_bands()
    parts = []
    for sensor, bands in groups:
        mean, spread = (-14.0, 4.0) if sensor == "sentinel-1" else (2000.0, 800.0)
        parts.append(rng.normal(mean, spread, (n, steps, len(bands), h, w)))
    doy = np.tile(np.arange(steps, dtype=np.float32) * 30 + 15, (n, len(groups), 1))
    doy[-1, -1] += 3  # the last point's last sensor was seen on other days
    values = np.concatenate(parts, axis=2).astype(np.float32)
    if not spec.series_latlon:
        return PixelSeries(values, doy)
    latlon = np.stack([np.linspace(-40, 60, n), np.linspace(-120, 150, n)], axis=1)
    return PixelSeries(values, doy, latlon.astype(np.float32))


def test_model__pooled_and_grid_do_not_depend_on_the_batch_size(model: Embedder) -> None:
    spec, series = model.spec, _series(model)
    series.values[0, 2:5, 0, 1, 1] = np.nan  # a cloudy pixel: filled from its valid steps
    one = InferenceOptions(output="grid", batch_size=1)
    a = embed_series(model, series, one, CPU)
    b = embed_series(model, series, InferenceOptions(output="grid", batch_size=3), CPU)
    assert a.status.tolist() == [Status.OK] * 3 and a.valid_fraction.tolist() == [1.0] * 3
    assert a.pooled.shape == (3, spec.embed_dim) and np.isfinite(a.pooled).all()
    assert a.grid is not None and a.grid.shape == (3, spec.embed_dim, 3, 4)
    assert np.isfinite(a.grid).all() and b.grid is not None
    np.testing.assert_allclose(a.grid, b.grid, rtol=0, atol=BATCH_ATOL)
    np.testing.assert_allclose(a.pooled, b.pooled, rtol=0, atol=BATCH_ATOL)
    mean = a.grid.astype(np.float64).mean(axis=(2, 3))  # pooled: the mean of the pixels
    np.testing.assert_allclose(a.pooled, mean, rtol=1e-6, atol=1e-6)
    pooled = embed_series(model, series, InferenceOptions(batch_size=3), CPU)
    assert pooled.grid is None
    np.testing.assert_array_equal(pooled.pooled, b.pooled)


def _library(embedder: Embedder, series: PixelSeries) -> torch.Tensor:
    """The library's own forward on every pixel of the first point, its input built in the
    library's units and normalised with the library's transform: (H * W, D)."""
    if isinstance(embedder.module, Presto):  # type: ignore[attr-defined]
        return _presto_library(embedder.module, series)  # type: ignore[attr-defined]
    if not isinstance(embedder.module, Tessera):  # type: ignore[attr-defined]
        raise AssertionError(f"no library reference for {type(embedder).__name__}: add one")
    v = torch.from_numpy(series.values[0]).double()  # (steps, 12, H, W)
    s1 = v[:, 10:] * tessera_otf.S1_DB_SCALE + tessera_otf.S1_DB_OFFSET  # upstream's units
    doy = torch.from_numpy(series.day_of_year[0]).double()
    steps, _, h, w = v.shape
    s2_doy = doy[0][:, None, None, None].expand(steps, 1, h, w)
    s1_doy = doy[1][:, None, None, None].expand(steps, 1, h, w)
    x = torch.cat([v[:, :10], s2_doy, s1, s1_doy], dim=1)  # (steps, 14, H, W)
    x = x.permute(2, 3, 0, 1).reshape(h * w, steps, 14).float()
    normalised = _tessera_transforms(x.clone())
    return embedder.module(normalised)  # type: ignore[attr-defined,no-any-return]


def _presto_library(module: Presto, series: PixelSeries) -> torch.Tensor:
    """torchgeo's Presto encoder on the first point's pixels, its input built as upstream's
    pipeline does (S2 / 10000, (S1 dB + 25) / 25, NDVI from B8 and B4, ERA5, SRTM and Dynamic
    World masked); the embedding upstream's eval one: the tokens' mean before the final norm."""
    v = torch.from_numpy(series.values[0]).double()  # (steps, 12, H, W): S2 x10, S1 x2
    steps, _, h, w = v.shape
    px = v.permute(2, 3, 0, 1).reshape(h * w, steps, 12)
    x = torch.zeros(h * w, steps, 17, dtype=torch.float64)
    x[..., 0:2] = (px[..., 10:] + 25) / 25
    x[..., 2:12] = px[..., :10] / 10000
    red, nir = px[..., 2], px[..., 6]  # B04, B08 of B02 B03 B04 B05 B06 B07 B08 ...
    x[..., 16] = (nir - red) / (nir + red)
    mask = torch.zeros_like(x)
    mask[..., 12:16] = 1
    world = torch.full((h * w, steps), NUM_DYNAMIC_WORLD_CLASSES, dtype=torch.long)
    days = series.day_of_year[0, 0].tolist()
    first = datetime.date(2023, 1, 1)
    months = [(first + datetime.timedelta(days=int(d) - 1)).month - 1 for d in days]
    month = torch.tensor(months).expand(h * w, steps)
    assert series.latlon is not None
    latlons = torch.from_numpy(series.latlon[0]).float().expand(h * w, 2)
    bare = Presto()  # torchgeo's own, with the weights of ours
    bare.load_state_dict(module.state_dict())
    encoder = bare.encoder
    norm, encoder.norm = encoder.norm, nn.Identity()
    tokens, _, _ = encoder(x.float(), world, latlons, mask=mask.float(), month=month)
    return norm(tokens.mean(dim=1))  # type: ignore[no-any-return]


def test_model__pixels_are_the_library_forward_on_the_same_input(model: Embedder) -> None:
    series = _series(model, n=1, h=2, w=3, seed=4)
    out = embed_series(model, series, InferenceOptions(output="grid", batch_size=4), CPU)
    with torch.inference_mode():
        expected = _library(model, series).numpy()
    assert out.grid is not None
    ours = out.grid[0].reshape(model.spec.embed_dim, -1).T
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)
    assert not np.allclose(ours[0], ours[1])  # the input reaches the output


def test_model__bf16_passes_the_guard_and_stays_close_to_fp32(model: Embedder) -> None:
    report = precision.check_precision(model, "bf16", CPU, probe_tiles=2)
    assert report.cosine >= precision.COSINE_THRESHOLD, report
    series = _series(model, n=1, h=2, w=2)
    fp32 = embed_series(model, series, InferenceOptions(batch_size=4), CPU).pooled
    bf16 = embed_series(model, series, InferenceOptions(precision="bf16", batch_size=4), CPU)
    assert precision.min_cosine(fp32.astype(np.float64), bf16.pooled.astype(np.float64)) >= 0.99


@pytest.mark.parametrize("name", PIXEL_MODELS)
def test_pretrained__a_checkpoint_in_the_hub_cache_is_loaded_and_changes_the_output(
    name: str, hub: Path
) -> None:
    random = registry.build(name, "random", CPU)
    path = checkpoint_path(member(random.spec.pretrained_weights))
    path.parent.mkdir(parents=True)
    g = torch.Generator().manual_seed(42)
    state = random.module.state_dict()  # type: ignore[attr-defined]
    torch.save({k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in state.items()}, path)
    assert path.name == random.spec.checkpoint
    loaded = registry.build(name, "pretrained", CPU)
    assert loaded.weights.kind == "pretrained" and loaded.weights.file == str(path)
    x = torch.randn(2, *random.spec.sample_shape())
    with torch.inference_mode():
        before, after = random.forward(x)[0], loaded.forward(x)[0]
    assert torch.isfinite(after).all()
    assert not torch.allclose(before, after, rtol=1e-3, atol=1e-3)


def test_masks__a_pixel_without_a_valid_step_of_a_sensor_is_left_out() -> None:
    model = registry.build("tessera_otf", "random", CPU)
    series = _series(model, n=3, h=2, w=2)
    series.values[0, :, 10:, 0, 1] = np.nan  # no Sentinel-1 at this pixel in any step
    series.values[1] = np.nan  # nothing at all: NODATA
    series.values[2, :, :10, 1] = np.nan  # no Sentinel-2 in the lower row
    out = embed_series(model, series, InferenceOptions(output="grid", batch_size=5), CPU)
    assert out.status.tolist() == [Status.OK, Status.NODATA, Status.OK]
    assert out.reason[1] == NODATA_REASON and np.isnan(out.pooled[1]).all()
    assert out.valid_fraction.tolist() == [0.75, 0.0, 0.5]
    assert out.grid is not None
    assert np.isnan(out.grid[0, :, 0, 1]).all() and np.isfinite(out.grid[0, :, 1]).all()
    assert np.isnan(out.grid[2, :, 1]).all() and np.isfinite(out.grid[2, :, 0]).all()
    np.testing.assert_allclose(out.pooled[2], out.grid[2, :, 0].mean(axis=1), atol=1e-6)


def test_fill__invalid_steps_take_the_valid_ones_in_time_order() -> None:
    """k = 8 valid steps of T = 12: position j takes valid step 8 * j // 12, so the series
    is the valid steps 0, 0, 1, 2, 2, 3, 4, 4, 5, 6, 6, 7 of the pixel, with their days."""
    spec = tessera_otf.SPEC
    values = torch.arange(12.0)[:, None, None, None].repeat(1, 12, 1, 1)  # step index
    values = values * torch.tensor(spec.norm_std)[None, :, None, None]
    values = values + torch.tensor(spec.norm_mean)[None, :, None, None]  # normalised: step
    values[[2, 3, 7, 8], :10] = float("nan")  # S2 cloudy in four months
    doy = torch.arange(12.0).repeat(2, 1) * 30 + 15
    stream, keep = pixel_stream(values, doy, spec)
    assert keep.tolist() == [0] and stream.shape == (1, 12, 14)
    valid = [0, 1, 4, 5, 6, 9, 10, 11]
    chosen = [valid[8 * j // 12] for j in range(12)]
    torch.testing.assert_close(stream[0, :, 0], torch.tensor(chosen, dtype=torch.float32))
    torch.testing.assert_close(stream[0, :, 10], torch.tensor(chosen) * 30.0 + 15)
    torch.testing.assert_close(stream[0, :, 11], torch.arange(12.0))  # S1: all valid
    torch.testing.assert_close(stream[0, :, 13], torch.arange(12.0) * 30 + 15)


def test_series__of_the_wrong_shape_is_refused_naming_the_channels() -> None:
    model = registry.build("tessera_otf", "random", CPU)
    bad = PixelSeries(np.zeros((1, 12, 10, 2, 2), np.float32), np.zeros((1, 2, 12), np.float32))
    with pytest.raises(ValueError, match=r"C=12 channels \('B04', 'B02', .*'VV', 'VH'\)"):
        embed_series(model, bad, InferenceOptions(), CPU)
    days = PixelSeries(np.zeros((1, 12, 12, 2, 2), np.float32), np.zeros((2, 12), np.float32))
    with pytest.raises(ValueError, match=r"must be \(points, sensors, steps\) = \(1, 2, 12\)"):
        embed_series(model, days, InferenceOptions(), CPU)


def test_tessera_otf__s1_statistics_in_db_are_upstreams_in_its_units() -> None:
    """u = 400 dB + 10000: the same normalised value from dB with the spec's statistics as
    from u with torchgeo's."""
    db = np.array([-25.0, -11.3, -3.0])
    spec = tessera_otf.SPEC
    for k, (mean, std) in enumerate(zip(spec.norm_mean[10:], spec.norm_std[10:], strict=True)):
        u = db * 400 + 10000
        upstream = (u - tessera_otf.S1_MEAN_UPSTREAM[k]) / tessera_otf.S1_STD_UPSTREAM[k]
        np.testing.assert_allclose((db - mean) / std, upstream, rtol=1e-12)
    assert spec.norm_mean[10:] == pytest.approx((-11.2899, -17.4905), abs=1e-4)


def test_spec__a_pixel_series_model_declares_steps_and_one_statistic_per_channel() -> None:
    spec = tessera_otf.SPEC
    assert spec.channels() == (*tessera_otf.S2_BANDS, "VV", "VH")
    assert spec.sample_shape() == (12, 14)  # Tessera's (steps, 10 + day + 2 + day)
    with pytest.raises(ValueError, match=r"need one value per channel \(12\)"):
        dataclasses.replace(spec, norm_mean=spec.norm_mean[:10])
    with pytest.raises(ValueError, match="declares its steps and a tile of 1 px"):
        dataclasses.replace(spec, steps=None)


@dataclasses.dataclass
class Fragile:
    """The model, raising on any series whose first channel is beyond 1e3 (normalised)."""

    inner: Embedder

    @property
    def spec(self) -> ModelSpec:
        return self.inner.spec

    @property
    def weights(self) -> WeightsInfo:
        return self.inner.weights

    def forward(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if (tiles[..., 0] > 1e3).any():
            raise ValueError("a series out of range")
        return self.inner.forward(tiles)


def test_failure__a_pixel_whose_forward_raises_fails_its_point_alone(model: Embedder) -> None:
    series = _series(model, n=3, h=2, w=2)
    series.values[1, 0, 0, 1, 1] = 1e9  # one pixel of the middle point
    out = embed_series(Fragile(model), series, InferenceOptions(batch_size=3), CPU)
    assert out.status.tolist() == [Status.OK, Status.FAILED, Status.OK]
    assert out.reason[1] == "ValueError: a series out of range"
    assert np.isnan(out.pooled[1]).all() and np.isfinite(out.pooled[[0, 2]]).all()
