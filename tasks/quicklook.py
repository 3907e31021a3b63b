"""Quick-look maps of a store: per model and time entry, the pooled embeddings of the points
that are ok, projected to three colours by PCA over the region's points, drawn at each
point's lon/lat with the region's outline and a legend of status counts.

`write_quicklooks` writes them as PNGs; `quicklook_artifacts` also shows them in the
Prefect UI, one markdown artifact per model with the PNG inlined as a data URL (the UI
renders markdown images from any URL; a `file://` URL is blocked by browsers on an http page).
"""

import base64
import io
import math
import os
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: PNGs only

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from shapely.geometry.base import BaseGeometry

from embedders.spec import Status
from tasks.reading import (
    counts,
    model_names,
    pooled,
    region_outline,
    statuses,
    store_meta,
    time_entries,
)
from tasks.store import is_url, open_store

SIZE_PX = 800  # square PNGs, 800 x 800: small enough to inline in an artifact (~100 KB)
DPI = 100
STRETCH_PERCENTILES = (2.0, 98.0)  # each component is stretched between these to 0..1
PCA_FIT_POINTS = 100_000  # PCA is fitted on at most this many ok points (seeded sample)
METRES_PER_DEGREE = 111_320.0  # of latitude (and of longitude at the equator)
# How each state is drawn besides ok (a square in its PCA colour): marker, face, edge colour.
# Failed is a cross, so that it never reads as a red PCA colour.
STYLE = {
    Status.FAILED: ("X", "#d62728", "#d62728"),
    Status.NODATA: ("s", "none", "#7f7f7f"),
    Status.PENDING: ("s", "none", "#e0b000"),
}


@dataclass(frozen=True)
class Map:
    """What one quick look draws."""

    model: str
    window: tuple[Any, Any]  # first and last day
    lon: np.ndarray
    lat: np.ndarray
    status: np.ndarray  # (point,) int8
    rgb: np.ndarray  # (point, 3) in 0..1; rows of points not ok are unused
    outline: BaseGeometry | None
    spacing_m: float | None
    note: str = ""  # e.g. that the weights were random


def pca_rgb(vectors: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """(n, 3) colours in 0..1: the first three principal components of `vectors` (n, d),
    each stretched between its 2nd and 98th percentile. Signs are fixed so that each
    component's largest loading is positive (the same data gives the same colours)."""
    n = len(vectors)
    rgb = np.full((n, 3), 0.5, dtype=np.float64)
    if n < 2:
        return rgb
    x = vectors.astype(np.float64)
    fit = x
    if n > PCA_FIT_POINTS:
        fit = x[np.random.default_rng(seed).choice(n, PCA_FIT_POINTS, replace=False)]
    mean = fit.mean(axis=0)
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
    vt = vt[:3]
    signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])
    components = (x - mean) @ (vt * signs[:, None]).T
    for k in range(components.shape[1]):
        lo, hi = np.percentile(components[:, k], STRETCH_PERCENTILES)
        if hi > lo:
            rgb[:, k] = np.clip((components[:, k] - lo) / (hi - lo), 0.0, 1.0)
    return rgb


def read_maps(store_path: str, t: int) -> list[Map]:
    """One Map per model of the store at time entry `t`."""
    meta = store_meta(store_path)
    region = meta["swath"].get("region") or {}
    outline = region_outline(region)
    spacing = region.get("spacing_m")
    maps = []
    with open_store(store_path) as ds:
        window = time_entries(ds)[t]
        lon, lat = ds["lon"].values, ds["lat"].values
        for model in model_names(meta):
            status = statuses(ds, model, t)
            ok = status == Status.OK
            rgb = np.zeros((len(status), 3))
            rgb[ok] = pca_rgb(pooled(ds, model, t)[ok])
            weights = meta["models"][model].get("weights") or {}
            note = "  (RANDOM WEIGHTS)" if weights.get("kind") == "random" else ""
            spacing_m = _float_or_none(spacing)
            maps.append(Map(model, window, lon, lat, status, rgb, outline, spacing_m, note))
    return maps


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
    pad = max(pad, (m.spacing_m or 0.0) / METRES_PER_DEGREE)  # room for the edge markers
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
    """Square markers one point spacing wide, in points squared (matplotlib's `s`)."""
    if not m.spacing_m:
        return 16.0
    ax.figure.canvas.draw()  # apply the aspect, so that the axes' scale is final
    (_, y0), (_, y1) = ax.transData.transform([(0.0, 0.0), (0.0, m.spacing_m / METRES_PER_DEGREE)])
    side_pt = abs(y1 - y0) * 72.0 / DPI
    return max(side_pt, 1.0) ** 2


def _legend(ax: Axes, m: Map) -> None:
    n = counts(m.status)
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
