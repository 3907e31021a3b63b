"""Tiles of a time series: a model that embeds tiles of T steps at once (`ModelSpec.takes ==
"tile-series"`, e.g. embedders/olmoearth.py) over the patches of many points.

Every step of a point's patch is cut on the same tile grid by running the tile engine
(embedders/engine.py) on the patch with its steps stacked as channels, step-major:
(points, steps, C, H, W) -> (points, steps * C, H, W). The engine's cutting, normalising,
batching of the (point, tile) items of all points into full batches, and stitching (pooled:
area-weighted mean over the tiles; grid: the blended map) then apply unchanged, so results
do not depend on the batch size. The model's forward takes (B, steps * C, T, T) tiles; the
engine sees it through `flat`, a view whose spec has `steps * C` channels with the
statistics repeated per step.

Missing steps. The engine counts a pixel valid where every channel is, so a pixel cloudy in
one month would lose its whole series. Before that, each pixel's missing steps (any band
NaN) are filled with the mean of its valid steps, per band (`fill_steps`); a pixel with no
valid step stays NaN and is invalid, and a point with none is NODATA.
"""

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from embedders import engine
from embedders.engine import EmbedResult
from embedders.patches import PatchStack
from embedders.spec import Embedder, InferenceOptions, ModelSpec, WeightsInfo


def flat_spec(spec: ModelSpec) -> ModelSpec:
    """The spec as the tile engine sees a tile-series model: one channel per (step, band),
    step-major, each with its band's statistics."""
    if spec.takes != "tile-series" or spec.steps is None:
        raise ValueError(f"model {spec.name} does not take tiles of a time series")
    steps = spec.steps.count
    return dataclasses.replace(
        spec,
        bands=tuple(f"{b}@{t}" for t in range(steps) for b in spec.channels()),
        more_sensors=(),
        norm_mean=spec.norm_mean * steps,
        norm_std=spec.norm_std * steps,
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


def fill_steps(values: np.ndarray) -> np.ndarray:
    """(n, steps, C, H, W) with each pixel's missing steps (any band NaN) set to the mean of
    its valid steps, band by band; pixels with no valid step stay NaN."""
    x = np.asarray(values, dtype=np.float32)
    valid = np.isfinite(x).all(axis=2, keepdims=True)  # (n, steps, 1, H, W)
    count = valid.sum(axis=1, keepdims=True)
    total = np.where(valid, x, 0.0).sum(axis=1, keepdims=True, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (total / count).astype(np.float32)
    return np.where(valid, x, mean)


def embed_tile_series(
    embedder: Embedder, values: np.ndarray, options: InferenceOptions, device: torch.device
) -> EmbedResult:
    """Embed the (points, steps, C, H, W) series (source units, NaN where masked, channels in
    `ModelSpec.channels()` order) of every point (see the module's note)."""
    spec = embedder.spec
    count = spec.steps.count if spec.steps is not None else 0
    if values.ndim != 5 or values.shape[1:3] != (count, len(spec.channels())):
        raise ValueError(
            f"model {spec.name} takes (points, steps, C, H, W) series with {count} steps and "
            f"C={len(spec.channels())} channels {spec.channels()}; got shape {values.shape}"
        )
    n, steps, c, h, w = values.shape
    stacked = torch.from_numpy(fill_steps(values).reshape(n, steps * c, h, w))
    patches = PatchStack(stacked)
    if device.type == "cuda":
        patches = patches.pinned()
    return engine.embed_patches(flat(embedder), patches, options, device)
