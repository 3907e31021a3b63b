"""Patches into model tiles on the model's device: decode, normalise, fill, pad or resize, cut.

All images of a stack have one size, so where their tiles lie (`Layout`) is worked out once,
on the host, and the pixels never come back: `cut` turns a block of (k, C, H, W) stored
values on the device into (k, n_tiles, C, T, T) normalised float32 tiles, each tile's
pooling weight and each image's valid fraction. The float32 operations are those of the
host code they replace (subtract the mean, divide by the std, fill invalid pixels with 0,
then pad or resize), so on the same device the tiles are the same to the bit.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from embedders import tiling
from embedders.encoding import Encoding
from embedders.spec import InferenceOptions, ModelSpec


@dataclass(frozen=True, eq=False)
class Layout:
    """Where the tiles of an image of one size lie, and how its pixels reach them.

    `rows`/`cols` map each pixel of the padded image to a pixel of the image (None: no
    padding on that axis); padded pixels are invalid. `coverage` counts the tiles over each
    padded pixel, so that a pixel shared by overlapping tiles counts once in the pool."""

    height: int
    width: int
    tile: int
    resize: bool
    origins: tuple[tuple[int, int], ...]  # (y0, x0) of each tile in the padded image
    padded: tuple[int, int]
    rows: np.ndarray | None = None
    cols: np.ndarray | None = None
    coverage: np.ndarray | None = None  # (Hp, Wp) float64; None when resizing

    @property
    def n_tiles(self) -> int:
        return len(self.origins)


@functools.lru_cache(maxsize=64)
def layout(spec: ModelSpec, options: InferenceOptions, height: int, width: int) -> Layout:
    """The tiles of a (height, width) image for `spec` and `options` (tile or resize); one
    object per size, so its device copies (`_maps`) are made once."""
    tile = spec.tile_px
    if options.input_prep == "resize":
        return Layout(height, width, tile, True, ((0, 0),), (tile, tile))
    rows = _pad_map(height, tile, spec.pad_mode)
    cols = _pad_map(width, tile, spec.pad_mode)
    hp, wp = max(height, tile), max(width, tile)
    ys = tiling.tile_starts(hp, tile, options.tile_overlap_px)
    xs = tiling.tile_starts(wp, tile, options.tile_overlap_px)
    coverage = np.outer(_axis_coverage(hp, ys, tile), _axis_coverage(wp, xs, tile))
    origins = tuple((y, x) for y in ys for x in xs)
    return Layout(height, width, tile, False, origins, (hp, wp), rows, cols, coverage)


def _pad_map(size: int, tile: int, mode: str) -> np.ndarray | None:
    """Source pixel of each pixel of an axis padded at its end up to `tile` (None: no pad);
    "reflect" mirrors repeatedly when the pad is wider than the axis, as np.pad does."""
    if size >= tile:
        return None
    return np.pad(np.arange(size), (0, tile - size), mode=mode)  # type: ignore[call-overload]


def _axis_coverage(size: int, starts: list[int], tile: int) -> np.ndarray:
    counts = np.zeros(size, dtype=np.float64)
    for s in starts:
        counts[s : s + tile] += 1
    return counts


@dataclass
class Cut:
    """A block of k images as the model takes them, on the device."""

    tiles: torch.Tensor  # (k, n_tiles, C, T, T) float32, normalised, invalid pixels 0
    weights: torch.Tensor  # (k, n_tiles) float64: valid pixels, each shared by its tiles
    valid_fraction: torch.Tensor  # (k,) float64: share of the image's pixels that are valid


@functools.cache
def _norm(spec: ModelSpec, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(spec.norm_mean, dtype=torch.float32, device=device)[:, None, None]
    std = torch.tensor(spec.norm_std, dtype=torch.float32, device=device)[:, None, None]
    return mean, std


@functools.lru_cache(maxsize=64)
def _maps(where: Layout, device: torch.device) -> tuple[torch.Tensor | None, ...]:
    """The layout's row map, column map and coverage on `device`."""
    arrays = (where.rows, where.cols, where.coverage)
    return tuple(None if a is None else torch.as_tensor(a, device=device) for a in arrays)


def cut(values: torch.Tensor, encoding: Encoding, spec: ModelSpec, where: Layout) -> Cut:
    """Decode, normalise and fill a block of (k, C, H, W) stored values on their device,
    then pad and cut it into tiles (or resize it to one tile)."""
    x, valid = _normalised(values, encoding, spec)
    fraction = valid.sum((1, 2), dtype=torch.float64) / (where.height * where.width)
    if where.resize:
        return _resized(x, valid, where, fraction)
    x, valid = _padded(x, valid, where)
    t = where.tile
    tiles = torch.stack([x[:, :, y : y + t, c : c + t] for y, c in where.origins], 1)
    coverage = _maps(where, x.device)[2]
    assert coverage is not None  # tile mode always has it
    share = valid.to(torch.float64) / coverage
    weights = torch.stack([share[:, y : y + t, c : c + t].sum((1, 2)) for y, c in where.origins], 1)
    return Cut(tiles, weights, fraction)


def _normalised(
    values: torch.Tensor, encoding: Encoding, spec: ModelSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per band (value - mean) / std in float32, invalid pixels (any band) set to 0."""
    x = values.to(torch.float32, copy=True)
    if encoding.fill is None:
        valid = torch.isfinite(x).all(1)
    else:
        valid = (values != encoding.fill).all(1)
        if not encoding.identity:
            x.mul_(encoding.scale).add_(encoding.offset)
    mean, std = _norm(spec, x.device)
    x.sub_(mean).div_(std)
    x.masked_fill_(~valid[:, None], 0.0)
    return x, valid


def _padded(
    x: torch.Tensor, valid: torch.Tensor, where: Layout
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad at the bottom and right up to the tile side; padded pixels are invalid."""
    rows, cols, _ = _maps(where, x.device)
    for axis, mapped, size in ((2, rows, where.height), (3, cols, where.width)):
        if mapped is None:
            continue
        x = x.index_select(axis, mapped)
        inside = torch.arange(len(mapped), device=x.device) < size
        valid = valid.index_select(axis - 1, mapped)
        valid = valid & (inside[:, None] if axis == 2 else inside[None, :])
    return x, valid


def _resized(x: torch.Tensor, valid: torch.Tensor, where: Layout, fraction: torch.Tensor) -> Cut:
    """The whole image to one tile: bilinear, antialiased when shrinking; the validity mask
    goes through the same resize and a pixel is valid where it is above 0.5."""
    shrink = where.height > where.tile or where.width > where.tile
    stacked = torch.cat([x, valid[:, None].to(torch.float32)], 1)
    out = F.interpolate(
        stacked,
        size=(where.tile, where.tile),
        mode="bilinear",
        align_corners=False,
        antialias=shrink,
    )
    weights = (out[:, -1] > 0.5).sum((1, 2), dtype=torch.float64)
    return Cut(out[:, None, :-1], weights[:, None], fraction)
