"""Presto's input from swath's series (embedders/presto.py): units, NDVI, months, the masked
groups swath lacks, lat/lon; and what the engine does with a pixel lacking Sentinel-1."""

import numpy as np
import pytest
import torch
from torchgeo.models.presto import NUM_DYNAMIC_WORLD_CLASSES

from embedders import layer_precision, presto, registry
from embedders.pixels import PixelSeries, embed_series
from embedders.spec import InferenceOptions, Status

CPU = torch.device("cpu")


def _stream(b: int = 2) -> torch.Tensor:
    """A normalised series as the engine builds it: S2 x10, S2 day, S1 x2, S1 day, lat, lon."""
    s2 = torch.full((b, 12, 10), 0.1)
    s2[:, :, presto.B4], s2[:, :, presto.B8] = 0.05, 0.35
    s2_day = (torch.arange(12.0) * 30.4 + 15)[None, :, None].expand(b, 12, 1)
    s1 = torch.full((b, 12, 2), 0.4)
    where = torch.tensor([52.2, 0.12]).expand(b, 12, 2)
    return torch.cat([s2, s2_day, s1, s2_day, where], dim=2)


def test_input__bands_ndvi_month_masks_and_latlon_in_prestos_layout() -> None:
    i = presto.presto_input(_stream())
    assert i.x.shape == i.mask.shape == (2, 12, 17)
    torch.testing.assert_close(i.x[0, 0, 0:2], torch.tensor([0.4, 0.4]))  # S1 first
    torch.testing.assert_close(i.x[0, 0, 4], torch.tensor(0.05))  # B4 at Presto's channel 4
    torch.testing.assert_close(i.x[0, 0, 16], torch.tensor(0.75))  # (0.35 - 0.05) / 0.4
    assert i.month[0].tolist() == list(range(12))
    assert i.mask[0, 0].tolist() == [0.0] * 12 + [1.0] * 4 + [0.0]  # ERA5, SRTM masked
    assert (i.dynamic_world == NUM_DYNAMIC_WORLD_CLASSES).all()  # Presto's "missing" class
    torch.testing.assert_close(i.latlons, torch.tensor([[52.2, 0.12], [52.2, 0.12]]))


def test_input__ndvi_where_b8_plus_b4_is_not_positive_is_zero_as_upstream() -> None:
    stream = _stream(2)
    stream[0, :, :10] = 0.0
    stream[1, :, presto.B4], stream[1, :, presto.B8] = -0.01, 0.005  # L2A: below the offset
    assert presto.presto_input(stream).x[..., 16].eq(0).all()


def test_spec__units_are_upstreams_s2_over_10000_and_s1_db_plus_25_over_25() -> None:
    spec = presto.SPEC
    s2 = (np.float64(2500.0) - spec.norm_mean[0]) / spec.norm_std[0]
    s1 = (np.float64(-12.5) - spec.norm_mean[10]) / spec.norm_std[10]
    assert (s2, s1) == (0.25, 0.5)
    assert spec.sample_shape() == (12, 16) and spec.identity()["series_latlon"] is True


def _series(n: int = 2) -> PixelSeries:
    rng = np.random.default_rng(3)
    s2 = rng.normal(2000.0, 600.0, (n, 12, 10, 2, 2))
    s1 = rng.normal(-14.0, 3.0, (n, 12, 2, 2, 2))
    values = np.concatenate([s2, s1], axis=2).astype(np.float32)
    doy = np.tile(np.arange(12, dtype=np.float32) * 30 + 15, (n, 2, 1))
    return PixelSeries(values, doy, np.array([[52.2, 0.12]] * n, dtype=np.float32))


def test_masks__a_pixel_without_sentinel1_is_left_out_the_rest_embed() -> None:
    """Presto's encoder needs as many masked tokens in every row of a batch, so a pixel
    cannot mask Sentinel-1 alone: without any Sentinel-1 month it is left out."""
    model = registry.build("presto", "random", CPU)
    series = _series()
    series.values[0, :, 10:, 0, 1] = np.nan
    series.values[1, :, 10:] = np.nan  # no Sentinel-1 at all: NODATA
    out = embed_series(model, series, InferenceOptions(output="grid", batch_size=3), CPU)
    assert out.status.tolist() == [Status.OK, Status.NODATA]
    assert out.valid_fraction.tolist() == [0.75, 0.0] and out.grid is not None
    assert np.isnan(out.grid[0, :, 0, 1]).all() and np.isfinite(out.grid[0, :, 1]).all()


def test_latlon__reaches_the_output_and_is_required() -> None:
    model = registry.build("presto", "random", CPU)
    series = _series(1)
    here = embed_series(model, series, InferenceOptions(), CPU).pooled
    moved = PixelSeries(series.values, series.day_of_year, np.array([[-33.9, 151.2]], np.float32))
    there = embed_series(model, moved, InferenceOptions(), CPU).pooled
    assert not np.allclose(here, there, atol=1e-3)
    bare = PixelSeries(series.values, series.day_of_year)
    with pytest.raises(ValueError, match=r"PixelSeries.latlon must be \(points, 2\) = \(1, 2\)"):
        embed_series(model, bare, InferenceOptions(), CPU)


def test_guard__the_per_layer_errors_run_through_the_pooling_hook() -> None:
    """The precision guard reruns each layer on its saved input: the encoder's final norm,
    whose hook pools the tokens, is rerun on the pooled input, not pooled twice."""
    model = registry.build("presto", "random", CPU)
    x = _stream(3)
    with torch.inference_mode():
        errors = layer_precision.layer_errors(model.module, lambda: model.forward(x), "bf16", CPU)  # type: ignore[attr-defined]
    assert "encoder.norm" in errors and 0 <= errors["encoder.norm"] < 0.05
