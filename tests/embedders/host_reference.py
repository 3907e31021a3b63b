"""swath's host-side inference before tiles were cut on the device (the engine at 8444fcd),
kept as the reference the device path is tested against: each image normalised, filled,
padded or resized and cut in NumPy, its tiles run as one batch, pooled in float64 as the
area-weighted mean and its grids blended by `tiling.GridBlender`.

Slow and simple on purpose; tests only.
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from embedders import tiling
from embedders.spec import Embedder, InferenceOptions, ModelSpec, PadMode


def normalise(image: np.ndarray, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """Per band (x - mean) / std in float32, invalid pixels (any band not finite) set to 0."""
    valid = np.isfinite(image).all(axis=0)
    mean = np.asarray(spec.norm_mean, dtype=np.float32)[:, None, None]
    std = np.asarray(spec.norm_std, dtype=np.float32)[:, None, None]
    out = image - mean
    out /= std
    out[:, ~valid] = 0.0
    return out, valid


def pad_to_tile(
    image: np.ndarray, valid: np.ndarray, tile: int, mode: PadMode
) -> tuple[np.ndarray, np.ndarray]:
    _, height, width = image.shape
    pad_y, pad_x = max(tile - height, 0), max(tile - width, 0)
    if pad_y == 0 and pad_x == 0:
        return image, valid
    padded = np.pad(image, ((0, 0), (0, pad_y), (0, pad_x)), mode=mode)
    return padded, np.pad(valid, ((0, pad_y), (0, pad_x)), constant_values=False)


def resize_to_tile(
    image: np.ndarray, valid: np.ndarray, tile: int
) -> tuple[np.ndarray, np.ndarray]:
    _, height, width = image.shape
    shrink = height > tile or width > tile
    stacked = np.concatenate([image, valid[None].astype(np.float32)])
    out = F.interpolate(
        torch.from_numpy(np.ascontiguousarray(stacked))[None],
        size=(tile, tile),
        mode="bilinear",
        align_corners=False,
        antialias=shrink,
    )[0].numpy()
    return np.ascontiguousarray(out[:-1]), out[-1] > 0.5


def tile_weights(valid: np.ndarray, origins: list[tuple[int, int]], tile: int) -> np.ndarray:
    height, width = valid.shape
    cov_y = np.zeros(height)
    cov_x = np.zeros(width)
    for y in sorted({y for y, _ in origins}):
        cov_y[y : y + tile] += 1
    for x in sorted({x for _, x in origins}):
        cov_x[x : x + tile] += 1
    share = valid / np.outer(cov_y, cov_x)
    return np.array([share[y : y + tile, x : x + tile].sum() for y, x in origins])


@dataclass
class Prepared:
    tiles: np.ndarray  # (n_tiles, C, T, T) float32
    origins: list[tuple[int, int]]
    weights: np.ndarray
    padded: tuple[int, int]
    valid_fraction: float


def prepare(image: np.ndarray, spec: ModelSpec, options: InferenceOptions) -> Prepared:
    filled, valid = normalise(np.asarray(image, dtype=np.float32), spec)
    fraction = float(valid.mean())
    tile = spec.tile_px
    if options.input_prep == "resize":
        resized, valid_r = resize_to_tile(filled, valid, tile)
        weights = np.array([float(valid_r.sum())])
        return Prepared(resized[None], [(0, 0)], weights, (tile, tile), fraction)
    padded, valid_p = pad_to_tile(filled, valid, tile, spec.pad_mode)
    hp, wp = valid_p.shape
    origins = tiling.tile_origins(hp, wp, tile, options.tile_overlap_px)
    tiles = np.stack([padded[:, y : y + tile, x : x + tile] for y, x in origins])
    return Prepared(tiles, origins, tile_weights(valid_p, origins, tile), (hp, wp), fraction)


@dataclass
class Reference:
    pooled: np.ndarray | None  # (D,) float32, None when no valid pixel
    grid: np.ndarray | None  # (D, gh, gw) float32
    valid_fraction: float


def embed(
    embedder: Embedder, image: np.ndarray, options: InferenceOptions, device: torch.device
) -> Reference:
    """One image the way swath's host path embedded it (fp32 on `device`)."""
    spec = embedder.spec
    p = prepare(image, spec, options)
    if p.weights.sum() <= 0:
        return Reference(None, None, p.valid_fraction)
    with torch.inference_mode():
        pooled_t, grid_t = embedder.forward(torch.from_numpy(p.tiles).to(device))
    pooled, grids = pooled_t.float().cpu().numpy(), grid_t.float().cpu().numpy()
    total, weight = np.zeros(spec.embed_dim), 0.0
    for w, vector in zip(p.weights, pooled, strict=True):
        if w > 0:
            total += w * vector.astype(np.float64)
            weight += w
    grid = None
    if options.output == "grid":
        height, width = image.shape[1:]
        shape = tiling.grid_shape(spec, options, height, width)
        if options.input_prep == "resize":
            grid = grids[0]
        else:
            blender = tiling.GridBlender.for_image(spec.embed_dim, *p.padded, spec.grid_stride_px)
            for (y, x), g in zip(p.origins, grids, strict=True):
                blender.add(g, y, x)
            grid = blender.result(shape)
    return Reference((total / weight).astype(np.float32), grid, p.valid_fraction)
