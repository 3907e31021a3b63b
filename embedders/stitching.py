"""Tile outputs back into one result per image, on the model's device, in float64.

Pooled: the mean of an image's tile vectors weighted by each tile's valid pixels (each
shared among the tiles over it), so overlaps count once and invalid pixels not at all.
Grid: each tile's output grid lands in its image's map weighted by `tiling.blend_window`;
a tile whose origin is not on the cell grid (the last tile moved back to the edge, an
overlap that is not a multiple of the stride) splits its cells between the two image cells
they overlap, in proportion. This is `tiling.GridBlender`'s arithmetic, for a batch of
images at once: the tiles of one position are added together (an image has one tile per
position, so no two rows of one update are the same image).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from embedders import tiling
from embedders.cutting import Layout
from embedders.spec import InferenceOptions, ModelSpec


def placements(
    where: Layout, spec: ModelSpec, cells: Sequence[int], tile: int
) -> list[tuple[tuple[int, int], np.ndarray]]:
    """Where tile `tile`'s (gy, gx) grid lands in its image's map (the cell of its first
    cell), and each of its cells' weight there."""
    gy, gx = int(cells[0]), int(cells[1])
    if where.resize:
        return [((0, 0), np.ones((gy, gx)))]
    window = np.outer(tiling.blend_window(gy), tiling.blend_window(gx))
    stride = spec.grid_stride_px
    (cy, ry), (cx, rx) = (divmod(v, stride) for v in where.origins[tile])
    fy, fx = ry / stride, rx / stride
    out = []
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            if wy * wx:
                out.append(((cy + dy, cx + dx), window * (wy * wx)))
    return out


def map_cells(where: Layout, spec: ModelSpec) -> tuple[int, int]:
    """Cells of an image's map while it is blended: one more than the padded image holds
    on each axis, for tiles whose cells straddle two image cells."""
    if where.resize:
        return spec.grid_px, spec.grid_px
    hp, wp = where.padded
    stride = spec.grid_stride_px
    return math.ceil(hp / stride) + 1, math.ceil(wp / stride) + 1


def map_weight(where: Layout, spec: ModelSpec) -> np.ndarray:
    """The summed blending weight of every cell of an image's map: the same for every image
    of a layout, since every tile of an image with a valid pixel runs in grid output."""
    total = np.zeros(map_cells(where, spec))
    g = spec.grid_px
    for t in range(where.n_tiles):
        for (r, c), window in placements(where, spec, (g, g), t):
            total[r : r + g, c : c + g] += window
    return total


@dataclass
class Sums:
    """The running sums of one stack of n images, on the device."""

    where: Layout
    spec: ModelSpec
    total: torch.Tensor  # (n, D) float64: weighted sum of pooled outputs
    weight: torch.Tensor  # (n,) float64: sum of their weights
    grid: torch.Tensor | None = None  # (n, D, *map_cells) float64: blended grids
    failed: dict[int, str] = field(default_factory=dict)  # image -> its first failure

    @classmethod
    def zeros(
        cls,
        n: int,
        where: Layout,
        spec: ModelSpec,
        options: InferenceOptions,
        device: torch.device,
    ) -> "Sums":
        dim, f64 = spec.embed_dim, torch.float64
        total = torch.zeros((n, dim), dtype=f64, device=device)
        sums = cls(where, spec, total, torch.zeros(n, dtype=f64, device=device))
        if options.output == "grid":
            cells = map_cells(where, spec)
            sums.grid = torch.zeros((n, dim, *cells), dtype=f64, device=device)
        return sums

    def add(self, image: torch.Tensor, weight: torch.Tensor, pooled: torch.Tensor) -> None:
        """Tiles' pooled (m, D) outputs, each into its image's sum with its weight."""
        self.total.index_add_(0, image, pooled.double() * weight[:, None])
        self.weight.index_add_(0, image, weight)

    def blend(self, image: torch.Tensor, tile: np.ndarray, grid: torch.Tensor) -> None:
        """Tiles' (m, D, gy, gx) grids into their images' maps, one tile position at a time."""
        assert self.grid is not None
        for t in np.unique(tile).tolist():
            rows = torch.from_numpy(np.flatnonzero(tile == t)).to(grid.device, non_blocking=True)
            images, part = image[rows], grid[rows].double()
            for (r, c), window in placements(self.where, self.spec, grid.shape[-2:], t):
                gy, gx = window.shape
                w = torch.from_numpy(window).to(grid.device, non_blocking=True)
                cells = self.grid[images, :, r : r + gy, c : c + gx]
                self.grid[images, :, r : r + gy, c : c + gx] = cells + part * w

    def fail(self, images: Sequence[int], reason: str) -> None:
        for image in images:
            self.failed.setdefault(int(image), reason)

    def pooled(self) -> np.ndarray:
        """(n, D) float32 means on the host (NaN where an image had no weight)."""
        return (self.total / self.weight[:, None]).float().cpu().numpy()

    def maps(self, options: InferenceOptions) -> np.ndarray:
        """(n, D, gh, gw) float32 blended maps cropped to the image, on the host."""
        assert self.grid is not None
        where = self.where
        gh, gw = tiling.grid_shape(self.spec, options, where.height, where.width)
        weight = map_weight(where, self.spec)[:gh, :gw]
        if np.any(weight <= 0):
            raise ValueError("a grid cell of the image has no tile covering it")
        cells = torch.from_numpy(weight).to(self.grid.device)
        return (self.grid[:, :, :gh, :gw] / cells).float().cpu().numpy()
