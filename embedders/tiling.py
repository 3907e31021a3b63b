"""Where model tiles lie in an image and how their output grids blend back together.

Geometry only, on the host: where tiles start (the last one moved back to the image's
edge), the blending window of a tile's output grid, the size of an image's output grid,
and `GridBlender`, which blends tile grids into one map (the reference the device's
stitching in embedders.engine follows). Cutting the pixels happens on the model's device
(embedders.cutting).
"""

import math
from dataclasses import dataclass

import numpy as np

from embedders.spec import InferenceOptions, ModelSpec


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of side `tile` along an axis of `size` pixels.

    Tiles step by `tile - overlap`; the last one is moved back so that it ends exactly at
    the edge, so there are no partial tiles. An axis no longer than one tile gets a single
    tile at 0 (the image is padded up to the tile first).
    """
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(
            f"tile overlap must be in [0, tile) and tile >= 1; got tile={tile}, overlap={overlap}"
        )
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile + 1, tile - overlap))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def tile_origins(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """(y0, x0) of every tile over a (padded) image, row by row."""
    ys = tile_starts(height, tile, overlap)
    xs = tile_starts(width, tile, overlap)
    return [(y, x) for y in ys for x in xs]


def blend_window(cells: int) -> np.ndarray:
    """Triangular weights over the cells of one tile's output grid: 1 in the centre,
    falling towards the edges, strictly positive (the edge cell of a 7-cell grid gets 1/7)."""
    centres = (np.arange(cells) + 0.5) / cells
    return 1.0 - np.abs(2.0 * centres - 1.0)


def grid_shape(
    spec: ModelSpec, options: InferenceOptions, height: int, width: int
) -> tuple[int, int]:
    """Side lengths of one image's output grid, in cells of the model's output resolution."""
    if options.input_prep == "resize":
        return spec.grid_px, spec.grid_px
    stride = spec.grid_stride_px
    return math.ceil(height / stride), math.ceil(width / stride)


@dataclass
class GridBlender:
    """Blends the feature grids of one image's tiles into one map on the image's cell grid.

    A tile whose origin is not on the cell grid (the last tile moved back to the edge,
    overlaps that are not a multiple of the stride) has its cells split between the two
    image cells they overlap, in proportion to the overlap. Each cell is also weighted by
    `blend_window`, so tile edges fade into their neighbours without seams.
    """

    total: np.ndarray  # (D, cy, cx) float64: weighted sum of features
    weight: np.ndarray  # (cy, cx) float64: sum of weights
    stride: int

    @classmethod
    def for_image(cls, dim: int, height: int, width: int, stride: int) -> "GridBlender":
        cells = (math.ceil(height / stride) + 1, math.ceil(width / stride) + 1)
        return cls(np.zeros((dim, *cells)), np.zeros(cells), stride)

    def add(self, grid: np.ndarray, y0: int, x0: int) -> None:
        """Add one tile's grid (D, g, g) whose tile starts at pixel (y0, x0)."""
        _, gy, gx = grid.shape
        win = np.outer(blend_window(gy), blend_window(gx))
        (cy, ry), (cx, rx) = divmod(y0, self.stride), divmod(x0, self.stride)
        fy, fx = ry / self.stride, rx / self.stride
        for dy, wy in ((0, 1.0 - fy), (1, fy)):
            for dx, wx in ((0, 1.0 - fx), (1, fx)):
                if wy * wx == 0.0:
                    continue
                w = win * (wy * wx)
                rows = slice(cy + dy, cy + dy + gy)
                cols = slice(cx + dx, cx + dx + gx)
                self.total[:, rows, cols] += grid * w
                self.weight[rows, cols] += w

    def result(self, shape: tuple[int, int]) -> np.ndarray:
        """The blended map cropped to `shape` cells (the unpadded image), float32."""
        gh, gw = shape
        weight = self.weight[:gh, :gw]
        if np.any(weight <= 0):
            raise ValueError("a grid cell of the image has no tile covering it")
        return (self.total[:, :gh, :gw] / weight).astype(np.float32)
