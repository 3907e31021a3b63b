"""Tiles of a time series: a model that embeds tiles of T steps at once (`ModelSpec.takes ==
"tile-series"`, e.g. embedders/olmoearth.py) over the patches of many points.

Every step of a point's patch is cut on the same tile grid by running the tile engine
(embedders/engine.py) on the patch with its steps stacked as channels, step-major:
(points, steps, C, H, W) -> (points, steps * (C + 1), H, W), where each step's channels are
followed by its day of year at that point (`tasks.series.Series.day_of_year` of the model's
first sensor), constant over the patch and not normalised. The engine's cutting, normalising,
batching of the (point, tile) items of all points into full batches, and stitching (pooled:
area-weighted mean over the tiles; grid: the blended map) then apply unchanged, so results
do not depend on the batch size. The model's forward takes (B, steps * (C + 1), T, T) tiles;
the engine sees it through `flat`, a view whose spec has those channels, the statistics
repeated per step (the day of year: mean 0, std 1). The engine sets every channel of an
invalid pixel to 0, so a model reads a step's day of year as its tile's largest value.

Missing steps. The engine counts a pixel valid where every channel is, so a pixel cloudy in
one month would lose its whole series. Before that, each sensor's missing steps at a pixel
(any of its bands NaN) are filled with the mean of its valid steps there, per band
(`fill_steps`); a pixel with no valid step of some sensor stays NaN and is invalid, and a
point with no valid pixel is NODATA.
"""

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from embedders import engine
from embedders.engine import EmbedResult
from embedders.patches import PatchStack
from embedders.spec import Embedder, InferenceOptions, ModelSpec, WeightsInfo

DOY = "day_of_year"  # the name of each step's last channel in the flat spec


def flat_spec(spec: ModelSpec) -> ModelSpec:
    """The spec as the tile engine sees a tile-series model: per step its channels, each with
    its band's statistics, then its day of year (mean 0, std 1)."""
    if spec.takes != "tile-series" or spec.steps is None:
        raise ValueError(f"model {spec.name} does not take tiles of a time series")
    steps = spec.steps.count
    return dataclasses.replace(
        spec,
        bands=tuple(f"{b}@{t}" for t in range(steps) for b in (*spec.channels(), DOY)),
        more_sensors=(),
        norm_mean=(*spec.norm_mean, 0.0) * steps,
        norm_std=(*spec.norm_std, 1.0) * steps,
        steps=None,
        takes="tiles",
    )


@dataclass
class _Flat:
    """A tile-series embedder under its flat spec (the engine's view; same forward)."""

    spec: ModelSpec
    weights: WeightsInfo
    inner: Embedder

    def forward(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner.forward(tiles)


def flat(embedder: Embedder) -> Embedder:
    """`embedder` as the tile engine runs it (see `flat_spec`)."""
    return _Flat(flat_spec(embedder.spec), embedder.weights, embedder)


def fill_steps(values: np.ndarray, widths: tuple[int, ...]) -> np.ndarray:
    """(n, steps, C, H, W) with each sensor's missing steps at a pixel (any of its bands NaN)
    set to the mean of that sensor's valid steps there, band by band; `widths` are the
    sensors' band counts, in channel order. Pixels with no valid step of a sensor stay NaN."""
    parts, start = [], 0
    for width in widths:
        parts.append(_fill(values[:, :, start : start + width]))
        start += width
    return np.concatenate(parts, axis=2)


def _fill(values: np.ndarray) -> np.ndarray:
    x = np.asarray(values, dtype=np.float32)
    valid = np.isfinite(x).all(axis=2, keepdims=True)  # (n, steps, 1, H, W)
    count = valid.sum(axis=1, keepdims=True)
    total = np.where(valid, x, 0.0).sum(axis=1, keepdims=True, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (total / count).astype(np.float32)
    return np.where(valid, x, mean)


def embed_tile_series(
    embedder: Embedder,
    values: np.ndarray,
    day_of_year: np.ndarray,
    options: InferenceOptions,
    device: torch.device,
) -> EmbedResult:
    """Embed the (points, steps, C, H, W) series (source units, NaN where masked, channels in
    `ModelSpec.channels()` order) of every point, each step at its `day_of_year`
    (points, steps), through the tile engine (see the module's note)."""
    spec = embedder.spec
    count = spec.steps.count if spec.steps is not None else 0
    if values.ndim != 5 or values.shape[1:3] != (count, len(spec.channels())):
        raise ValueError(
            f"model {spec.name} takes (points, steps, C, H, W) series with {count} steps and "
            f"C={len(spec.channels())} channels {spec.channels()}; got shape {values.shape}"
        )
    n, steps, c, h, w = values.shape
    if day_of_year.shape != (n, steps):
        raise ValueError(
            f"model {spec.name}: day_of_year must be (points, steps) = {(n, steps)}; "
            f"got {day_of_year.shape}"
        )
    doy = np.broadcast_to(
        day_of_year.astype(np.float32)[:, :, None, None, None], (n, steps, 1, h, w)
    )
    widths = tuple(len(bands) for _, bands in spec.sensor_bands())
    full = np.concatenate([fill_steps(values, widths), doy], axis=2)
    stacked = torch.from_numpy(full.reshape(n, steps * (c + 1), h, w))
    patches = PatchStack(stacked)
    if device.type == "cuda":
        patches = patches.pinned()
    return engine.embed_patches(flat(embedder), patches, options, device)
