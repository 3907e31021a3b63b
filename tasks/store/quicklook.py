"""Quick-look maps of a store: per model and time entry, the pooled embeddings of the points
that are ok, projected to three colours by PCA, drawn at each point's lon/lat with the
region's outline and a legend of status counts.

A quick look reads the store a block of points at a time, so its memory stays the same
whatever the store's size: the PCA is fitted on blocks spread over the region (at most
PCA_FIT_POINTS points), then every block is projected. A store of at most SCATTER_POINTS
points is drawn point by point; a larger one is drawn as a map of MAP_CELLS cells along its
longer side, each cell the mean colour of its ok points (or, without any, its worst state).

`write_quicklooks` writes them as PNGs; `quicklook_artifacts` also shows them in the
Prefect UI, one markdown artifact per model with the PNG inlined as a data URL (the UI
renders markdown images from any URL; a `file://` URL is blocked by browsers on an http page).
"""

import base64
import io
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: PNGs only

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from shapely.geometry.base import BaseGeometry

from embedders.spec import Status
from tasks.store.layout import is_url, open_store
from tasks.store.reading import (
    counts,
    model_names,
    point_bounds,
    pooled,
    region_outline,
    statuses,
    store_meta,
    time_entries,
)

SIZE_PX = 800  # square PNGs, 800 x 800: small enough to inline in an artifact (~100 KB)
DPI = 100
STRETCH_PERCENTILES = (2.0, 98.0)  # each component is stretched between these to 0..1
PCA_FIT_POINTS = 100_000  # the PCA is fitted on the ok points of blocks holding about this many
SCATTER_POINTS = 100_000  # a store of at most this many points is drawn point by point
MAP_CELLS = 300  # a larger one as a map of this many cells along its longer side
BLOCK_BYTES = 16 * 2**20  # of vectors read at a time (about five times this held at once)
METRES_PER_DEGREE = 111_320.0  # of latitude (and of longitude at the equator)
# How each state is drawn besides ok (a square in its PCA colour): marker, face, edge colour.
# Failed is a cross, so that it never reads as a red PCA colour.
STYLE = {
    Status.FAILED: ("X", "#d62728", "#d62728"),
    Status.NODATA: ("s", "none", "#7f7f7f"),
    Status.PENDING: ("s", "none", "#e0b000"),
}
# A map cell without ok points shows the worst state among its points.
WORST_FIRST = (Status.FAILED, Status.PENDING, Status.NODATA)


@dataclass(frozen=True)
class Map:
    """What one quick look draws: squares at `lon`/`lat` (each point's, or each map cell's
    centre), `side_m` metres wide, in a state each and, where ok, a colour."""

    model: str
    window: tuple[Any, Any]  # first and last day
    lon: np.ndarray
    lat: np.ndarray
    status: np.ndarray  # (square,) int8
    rgb: np.ndarray  # (square, 3) in 0..1; rows of squares not ok are unused
    side_m: float | None  # None: a fixed marker size (the spacing is not known)
    counts: dict[str, int]  # points in each state, for the legend
    outline: BaseGeometry | None
    spacing_m: float | None
    note: str = ""  # e.g. that the weights were random


@dataclass(frozen=True)
class Pca:
    """The first principal axes of a set of vectors, signs fixed so that each axis's largest
    loading is positive (the same data gives the same colours)."""

    mean: np.ndarray  # (dim,)
    axes: np.ndarray  # (k <= 3, dim)

    def project(self, vectors: np.ndarray) -> np.ndarray:
        return (vectors.astype(np.float64) - self.mean) @ self.axes.T


def fit_pca(blocks: Iterable[np.ndarray]) -> Pca | None:
    """The PCA of the rows of `blocks` (each (n, dim)), from their summed outer products, so
    that only one block is held at a time; None for fewer than two rows."""
    n, sums = 0, None  # the shift, and the sums of rows and of outer products around it
    for block in blocks:
        x = block.astype(np.float64)
        if not len(x):
            continue
        if sums is None:  # sums around a first estimate of the mean keep the float64 exact
            first = x.mean(axis=0)
            sums = (first, np.zeros_like(first), np.zeros((len(first), len(first))))
        shift, total, outer = sums
        x -= shift
        n += len(x)
        total += x.sum(axis=0)
        outer += x.T @ x
    if n < 2 or sums is None:
        return None
    shift, total, outer = sums
    centred = total / n
    cov = outer / n - np.outer(centred, centred)
    values, vectors = np.linalg.eigh(cov)
    axes = vectors[:, np.argsort(values)[::-1][:3]].T
    signs = np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])
    return Pca(shift + centred, axes * signs[:, None])


def stretch(components: np.ndarray) -> np.ndarray:
    """(n, 3) colours in 0..1: each of the (n, k) components stretched between its 2nd and
    98th percentile; mid grey where there is no component."""
    rgb = np.full((len(components), 3), 0.5, dtype=np.float64)
    for k in range(min(3, components.shape[1])):
        lo, hi = np.percentile(components[:, k], STRETCH_PERCENTILES)
        if hi > lo:
            rgb[:, k] = np.clip((components[:, k] - lo) / (hi - lo), 0.0, 1.0)
    return rgb


def pca_rgb(vectors: np.ndarray) -> np.ndarray:
    """(n, 3) colours in 0..1: the first three principal components of `vectors` (n, d),
    stretched (see `stretch`)."""
    pca = fit_pca([vectors])
    if pca is None:
        return np.full((len(vectors), 3), 0.5, dtype=np.float64)
    return stretch(pca.project(vectors))


def read_maps(
    store_path: str,
    t: int,
    *,
    scatter_points: int = SCATTER_POINTS,
    cells: int = MAP_CELLS,
    block_bytes: int = BLOCK_BYTES,
) -> list[Map]:
    """One Map per model of the store at time entry `t`: per point for a store of at most
    `scatter_points` points, else per cell of a map `cells` cells long."""
    meta = store_meta(store_path)
    region = meta["swath"].get("region") or {}
    outline = region_outline(region)
    spacing_m = _float_or_none(region.get("spacing_m"))
    maps = []
    with open_store(store_path) as ds:
        window = time_entries(ds)[t]
        n = ds.sizes["point"]
        bounds = point_bounds(ds) if n > scatter_points else None
        for model in model_names(meta):
            weights = meta["models"][model].get("weights") or {}
            note = "  (RANDOM WEIGHTS)" if weights.get("kind") == "random" else ""
            status = statuses(ds, model, t)
            reader = _Blocks(ds, model, t, status, block_bytes)
            pca = fit_pca(v for _, v in reader.read(reader.spread(PCA_FIT_POINTS)))
            if bounds is None:
                square = _points(ds, reader, pca, spacing_m)
            else:
                square = _cells(ds, reader, pca, _Grid.over(bounds, cells, spacing_m))
            maps.append(Map(model, window, *square, counts(status), outline, spacing_m, note))
    return maps


Squares = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float | None]


class _Blocks:
    """A model's vectors at one time entry, read a block of whole shards at a time."""

    def __init__(self, ds: xr.Dataset, model: str, t: int, status: np.ndarray, nbytes: int):
        self.ds, self.model, self.t, self.status = ds, model, t, status
        var = ds[model]
        n = len(status)
        stored = var.encoding.get("chunks")  # inner chunks: zarr reads a part of a shard alone
        align = int(stored[1]) if stored else (var.chunks[1][0] if var.chunks else n)
        per_point = 4 * math.prod(var.shape[2:])  # float32, as read
        self.step = max(align, nbytes // per_point // align * align)
        self.ranges = [slice(a, min(n, a + self.step)) for a in range(0, n, self.step)]

    def spread(self, points: int) -> list[slice]:
        """Blocks with ok points, evenly spread over the store, about `points` points in all."""
        ok = [r for r in self.ranges if (self.status[r] == Status.OK).any()]
        want = max(1, -(-points // self.step))
        if want >= len(ok):
            return ok
        return [ok[i] for i in np.unique(np.linspace(0, len(ok) - 1, want).round().astype(int))]

    def read(self, ranges: Iterable[slice]) -> Iterator[tuple[slice, np.ndarray]]:
        """Per block: its points and the pooled vectors of those that are ok."""
        for r in ranges:
            yield r, pooled(self.ds, self.model, self.t, r)[self.status[r] == Status.OK]


def _points(ds: xr.Dataset, blocks: _Blocks, pca: Pca | None, spacing_m: float | None) -> Squares:
    """One square per point, one spacing wide."""
    status = blocks.status
    ok = status == Status.OK
    rgb = np.zeros((len(status), 3))
    if pca is None:
        rgb[ok] = 0.5  # fewer than two ok points: no PCA
    else:
        rgb[ok] = stretch(np.concatenate([pca.project(v) for _, v in blocks.read(blocks.ranges)]))
    return ds["lon"].values, ds["lat"].values, status, rgb, spacing_m


@dataclass(frozen=True)
class _Grid:
    """The cells of a map: `nx` by `ny`, `dx` degrees of longitude by `dy` of latitude."""

    west: float
    south: float
    dx: float
    dy: float
    nx: int
    ny: int
    side_m: float  # a cell's square on the map, in metres

    @classmethod
    def over(
        cls, bounds: tuple[float, float, float, float], cells: int, spacing_m: float | None
    ) -> "_Grid":
        """`cells` cells along the region's longer side, and at least 1.42 spacings wide (a
        square that wide holds a point of any grid of that spacing, so no cell inside the
        region is empty)."""
        west, south, east, north = bounds
        cos_mid = max(0.05, math.cos(math.radians((south + north) / 2)))
        cos_far = max(0.05, math.cos(math.radians(max(abs(south), abs(north)))))
        least = math.sqrt(2) * (spacing_m or 0.0) / METRES_PER_DEGREE
        dy = max((north - south) / cells, (east - west) * cos_mid / cells, least, 1e-9)
        dx = max(dy / cos_mid, least / cos_far)
        nx, ny = int((east - west) // dx) + 1, int((north - south) // dy) + 1
        return cls(west, south, dx, dy, nx, ny, max(dy, dx * cos_mid) * METRES_PER_DEGREE)

    @property
    def size(self) -> int:
        return self.nx * self.ny

    def cell(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        iy = np.clip(((lat - self.south) // self.dy).astype(np.int64), 0, self.ny - 1)
        return iy * self.nx + np.clip(
            ((lon - self.west) // self.dx).astype(np.int64), 0, self.nx - 1
        )

    def centres(self, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        iy, ix = np.divmod(cells, self.nx)
        return self.west + (ix + 0.5) * self.dx, self.south + (iy + 0.5) * self.dy


def _cells(ds: xr.Dataset, blocks: _Blocks, pca: Pca | None, grid: _Grid) -> Squares:
    """One square per map cell that holds points. A cell is ok when any of its points is,
    coloured by the mean of their PCA components; otherwise it takes the worst state among
    its points (WORST_FIRST)."""
    k = 0 if pca is None else len(pca.axes)
    sums, ok_n = np.zeros((grid.size, k)), np.zeros(grid.size, dtype=np.int64)
    worst = np.zeros(grid.size, dtype=np.int8)  # 0: no point there; else 1 + a rank in WORST_FIRST
    for r, vectors in blocks.read(blocks.ranges):
        status = blocks.status[r]
        cell = grid.cell(ds["lon"][r].values, ds["lat"][r].values)
        ok = status == Status.OK
        ok_n += np.bincount(cell[ok], minlength=grid.size)
        if pca is not None:
            components = pca.project(vectors)
            for j in range(k):
                sums[:, j] += np.bincount(cell[ok], components[:, j], minlength=grid.size)
        for rank, state in enumerate(WORST_FIRST, start=1):
            there = np.bincount(cell[status == state], minlength=grid.size) > 0
            worst[there & ((worst == 0) | (worst > rank))] = rank
    has_ok, held = ok_n > 0, (ok_n > 0) | (worst > 0)
    by_rank = np.array([Status.PENDING, *WORST_FIRST], dtype=np.int8)  # index 0 is not used
    status = np.where(has_ok, np.int8(Status.OK), by_rank[worst]).astype(np.int8)
    rgb = np.full((grid.size, 3), 0.5)
    if pca is not None and has_ok.any():
        rgb[has_ok] = stretch(sums[has_ok] / ok_n[has_ok, None])
    lon, lat = grid.centres(np.flatnonzero(held))
    return lon, lat, status[held], rgb[held], grid.side_m


def render(m: Map) -> bytes:
    """The quick look as PNG bytes, SIZE_PX x SIZE_PX."""
    fig = plt.figure(figsize=(SIZE_PX / DPI, SIZE_PX / DPI), dpi=DPI)
    try:
        ax = fig.add_axes((0.1, 0.12, 0.86, 0.78))
        _frame(ax, m)
        size = _marker_size(ax, m)
        ok = m.status == Status.OK
        ax.scatter(m.lon[ok], m.lat[ok], s=size, c=m.rgb[ok], marker="s", linewidths=0)
        for state, (marker, face, edge) in STYLE.items():
            sel = m.status == state
            ax.scatter(m.lon[sel], m.lat[sel], s=size, marker=marker, c=face, edgecolors=edge)
        _legend(ax, m)
        ax.set_title(
            f"{m.model}  {m.window[0]}..{m.window[1]}\nPCA of pooled embeddings as RGB{m.note}"
        )
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI)
    finally:
        plt.close(fig)
    return buf.getvalue()


def _frame(ax: Axes, m: Map) -> None:
    """Axes limits around the region (or the points), north up, metres equal both ways."""
    west, south, east, north = m.lon.min(), m.lat.min(), m.lon.max(), m.lat.max()
    if m.outline is not None:
        for ring in _rings(m.outline):
            x, y = ring.xy
            ax.plot(x, y, color="black", linewidth=1.0)
        w, s, e, n = m.outline.bounds
        west, south, east, north = min(west, w), min(south, s), max(east, e), max(north, n)
    pad = max(east - west, north - south, 1e-4) * 0.04
    pad = max(pad, (m.side_m or 0.0) / METRES_PER_DEGREE)  # room for the edge markers
    ax.set_xlim(west - pad, east + pad)
    ax.set_ylim(south - pad, north + pad)
    ax.set_aspect(1.0 / math.cos(math.radians((south + north) / 2)), adjustable="box")
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    ax.tick_params(labelsize=8)


def _rings(geom: BaseGeometry) -> list[Any]:
    polygons = list(getattr(geom, "geoms", [geom]))
    return [r for p in polygons for r in (p.exterior, *p.interiors)]


def _marker_size(ax: Axes, m: Map) -> float:
    """Square markers `side_m` wide, in points squared (matplotlib's `s`)."""
    if not m.side_m:
        return 16.0
    ax.figure.canvas.draw()  # apply the aspect, so that the axes' scale is final
    (_, y0), (_, y1) = ax.transData.transform([(0.0, 0.0), (0.0, m.side_m / METRES_PER_DEGREE)])
    side_pt = abs(y1 - y0) * 72.0 / DPI
    return max(side_pt, 1.0) ** 2


def _legend(ax: Axes, m: Map) -> None:
    n = m.counts
    handles = [_handle("s", "#6fa8dc", "#6fa8dc", f"ok {n['ok']} (PCA colour)")]
    for state, (marker, face, edge) in STYLE.items():
        name = state.name.lower()
        handles.append(_handle(marker, face, edge, f"{name} {n[name]}"))
    ax.figure.legend(handles=handles, loc="lower center", ncol=4, fontsize=9, frameon=False)


def _handle(marker: str, face: str, edge: str, label: str) -> Line2D:
    return Line2D(
        [], [], marker=marker, linestyle="", markerfacecolor=face, markeredgecolor=edge, label=label
    )


def _float_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and value > 0 else None


def file_name(m: Map) -> str:
    return f"{m.model}-{m.window[0]:%Y-%m-%d}.png"


def write_quicklooks(store_path: str, out_dir: str, t: int) -> list[str]:
    """Write one PNG per model of time entry `t` into `out_dir`; their paths."""
    return [_save(out_dir, m, render(m)) for m in read_maps(store_path, t)]


def _save(folder: str, m: Map, png: bytes) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, file_name(m))
    with open(path, "wb") as f:
        f.write(png)
    return path


def quicklook_dir(store_path: str) -> str | None:
    """Where a store's quick looks go: `<store>.quicklook/` beside a local store; None for a
    URL store (its quick looks live in the artifacts only)."""
    return None if is_url(store_path) else f"{store_path.rstrip('/')}.quicklook"


def quicklook_artifacts(store_path: str, t: int) -> list[str]:
    """In a flow run: one markdown artifact per model with its quick look inlined, and the
    PNGs beside a local store. The paths written (none for a URL store)."""
    folder = quicklook_dir(store_path)
    paths = []
    for m in read_maps(store_path, t):
        png = render(m)
        if folder is not None:
            paths.append(_save(folder, m, png))
        where = f"file: `{paths[-1]}`" if folder else "no file: the store is a URL"
        create_markdown_artifact(
            key=f"swath-quicklook-{m.model}".lower().replace("_", "-"),
            description=f"{m.model}, {m.window[0]}..{m.window[1]}: PCA of pooled embeddings",
            markdown=(
                f"## {m.model} {m.window[0]}..{m.window[1]}\n\n"
                f"![quick look of {m.model}](data:image/png;base64,"
                f"{base64.b64encode(png).decode()})\n\n{where}\n"
            ),
        )
    if folder is None:
        get_run_logger().info("quick looks of URL store %s: in the artifacts only", store_path)
    return paths
