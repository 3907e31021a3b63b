"""`python -m flows.inspect STORE`: what a store holds, as tables: its models (dims, weights,
source), its time entries and, per model and time entry, the points ok / failed / nodata /
pending. `--compare A,B` gives the cosine between two products' vectors (grids pooled) per
point ok in both, e.g. Tessera computed on the fly against the published Tessera.
`--patch POINT_ID` writes a true-colour PNG of the patch that point got, read from
the work directory's inputs store. Imports neither torch nor Prefect, so it answers at once.

Exit codes: 0 done; 1 the point or its inputs are not there, or its patch has no valid
pixel (nothing is written); 2 bad input (not a store, no such time entry).
"""

import argparse
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
import platformdirs
import xarray as xr
import zarr
import zarr.errors
from rich.console import Console
from rich.table import Table

from embedders.spec import Status
from flows.flags import iso_date
from tasks.inputs import read_band
from tasks.plan.chunks import chunk_key
from tasks.store.layout import TEXT_BLOCK, open_store
from tasks.store.reading import (
    NotAStore,
    counts,
    find_time,
    model_names,
    pooled,
    provenance_source,
    statuses,
    store_meta,
    time_entries,
    weights_text,
)

TRUE_COLOUR = ("B04", "B03", "B02")  # Sentinel-2 red, green, blue
TRUE_COLOUR_SCALE = 3000.0  # digital numbers (reflectance x 10000) shown as 0..1: bright land
WIDTH = 160  # columns of the tables when the output is not a terminal (rich would take 80)
PATCH_MIN_PX = 256  # small patches are scaled up by a whole factor (nearest) to at least this


class NotFound(LookupError):
    """The point, or the inputs it got, are not there, or they hold no valid pixel."""


@dataclass(frozen=True)
class PatchImage:
    """What `--patch` wrote: the PNG's size and the part of its pixels without data."""

    rows: int
    cols: int
    nodata: float  # 0..1, transparent in the PNG


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m flows.inspect", description="Show what a swath store holds."
    )
    p.add_argument("store", help="the output store (path or URL)")
    p.add_argument("--patch", metavar="POINT_ID", help="write a true-colour PNG of its patch")
    p.add_argument(
        "--compare",
        metavar="A,B",
        help="cosine of two products' vectors per point (grids pooled), at --time",
    )
    p.add_argument("--time", type=iso_date, metavar="YYYY-MM-DD", help="time entry (the last)")
    p.add_argument("--out", metavar="PNG", help="where --patch writes (<point>-<day>.png)")
    p.add_argument(
        "--work-dir",
        metavar="DIR",
        help="the export's work directory, with inputs.zarr (~/.cache/swath)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.patch is None and args.compare is None and (args.time or args.out):
        given = "--time" if args.time else "--out"
        print(
            f"swath inspect: error: {given} is for --patch POINT_ID (which patch to draw); "
            "add --patch, or leave it out to see what the store holds",
            file=sys.stderr,
        )
        return 2
    try:
        meta = store_meta(args.store)
        with open_store(args.store) as ds:
            if args.compare is not None:
                print(compare(ds, meta, args.compare, find_time(ds, args.time)))
                return 0
            if args.patch is None:
                show(ds, meta, Console(width=None if sys.stdout.isatty() else WIDTH))
                return 0
            t = find_time(ds, args.time)
            work_dir = args.work_dir or platformdirs.user_cache_dir("swath")
            out = args.out or f"{args.patch}-{time_entries(ds)[t][0]}.png"
            image = write_patch(ds, meta, args.patch, t, work_dir, out)
    except (NotAStore, LookupError) as e:
        if isinstance(e, NotFound):
            print(f"swath inspect: {e}", file=sys.stderr)
            return 1
        print(f"swath inspect: error: {e}", file=sys.stderr)
        return 2
    masked = f", {image.nodata:.0%} of it no data (transparent)" if image.nodata else ""
    print(
        f"wrote {out}: true colour ({', '.join(TRUE_COLOUR)}), {image.cols} x {image.rows} px"
        f"{masked}"
    )
    return 0


def show(ds: xr.Dataset, meta: dict[str, Any], console: Console) -> None:
    """Print the store's models, time entries and status counts."""
    swath, n_times = meta["swath"], ds.sizes["time"]
    console.print(
        f"swath store, format {swath.get('format')}, {ds.sizes['point']} points, {n_times} "
        f"time {'entry' if n_times == 1 else 'entries'}; "
        f"region {_region_text(swath.get('region') or {})}"
    )
    models = Table(title="models", title_justify="left")
    models.add_column("model", no_wrap=True)
    for column in ("kind", "dim", "grid (y x)", "weights / dataset", "source"):
        models.add_column(column)
    for name in model_names(meta):
        m = meta["models"][name]
        dims = [ds.sizes[d] for d in ds[name].dims if d not in ("time", "point")]
        grid = " x ".join(str(d) for d in dims[1:]) or "-"
        kind = (
            "precomputed" if m.get("product") in ("tessera", "gse") else str(m.get("product", "?"))
        )
        models.add_row(name, kind, str(dims[0]), grid, weights_text(m), provenance_source(m))
    console.print(models)
    table = Table(title="points per status", title_justify="left")
    for column in ("t", "window", "model"):
        table.add_column(column, no_wrap=True)
    for column in ("ok", "failed", "nodata", "pending"):
        table.add_column(column, justify="right")
    for t, (start, end) in enumerate(time_entries(ds)):
        for name in model_names(meta):
            n = counts(statuses(ds, name, t))
            cells = [str(n[k]) for k in ("ok", "failed", "nodata", "pending")]
            table.add_row(str(t), f"{start}..{end}", name, *cells)
    console.print(table)


COMPARE_LOWEST = 5  # points named with the lowest cosines


def compare(ds: xr.Dataset, meta: dict[str, Any], pair: str, t: int) -> str:
    """The cosine of product A's vector to B's for each point ok in both at time entry `t`
    (a grid pooled by the mean of its valid cells), in words: how many points, the minimum,
    median and maximum, and the points of lowest cosine. Raises LookupError naming the
    products the store has, or why the two cannot be compared."""
    a, _, b = pair.partition(",")
    names = model_names(meta)
    for name in (a, b):
        if name not in names:
            raise LookupError(
                f"--compare {pair}: the store has no product {name!r}; it has "
                f"{', '.join(names)} (give two of them: --compare A,B)"
            )
    va, vb = pooled(ds, a, t), pooled(ds, b, t)
    if va.shape[1] != vb.shape[1]:
        raise LookupError(
            f"--compare {pair}: {a} is {va.shape[1]}-d and {b} {vb.shape[1]}-d; a cosine "
            "needs vectors of one dimension"
        )
    ok = np.flatnonzero((statuses(ds, a, t) == Status.OK) & (statuses(ds, b, t) == Status.OK))
    x, y = va[ok].astype(np.float64), vb[ok].astype(np.float64)
    cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
    start, end = time_entries(ds)[t]
    head = (
        f"cosine of {a} to {b}, {start}..{end}: {len(ok)} of {ds.sizes['point']} points ok in both"
    )
    if not len(ok):
        return head
    ids = ds["point_id"].values[ok]
    lowest = ", ".join(f"{ids[i]} {cos[i]:.4f}" for i in np.argsort(cos)[:COMPARE_LOWEST])
    return (
        f"{head}; min {cos.min():.4f}, median {np.median(cos):.4f}, max {cos.max():.4f}\n"
        f"lowest: {lowest}"
    )


def _region_text(region: dict[str, Any]) -> str:
    spacing = f", spacing {region['spacing_m']:g} m" if region.get("spacing_m") else ""
    if region.get("geojson"):
        text = str(region["geojson"])
        return ("GeoJSON" if text.lstrip().startswith(("{", "[")) else f"GeoJSON {text}") + spacing
    return f"bbox {region.get('bbox')}{spacing}"


def write_patch(
    ds: xr.Dataset, meta: dict[str, Any], point_id: str, t: int, work_dir: str, out: str
) -> PatchImage:
    """Write the true-colour PNG of `point_id`'s patch at time entry `t`. A patch without one
    valid pixel (the point got no imagery) is not drawn: NotFound says so, with why the store
    says the point has no data."""
    index = find_point(ds, point_id)
    start, end = time_entries(ds)[t]
    chunk = index // int(meta["swath"].get("layout", {}).get("chunk_size") or ds.sizes["point"])
    inputs = os.path.join(work_dir, "inputs.zarr")
    rgb = read_true_colour(inputs, meta, point_id, (start, end), chunk=chunk)
    valid = float(rgb[..., 3].mean())
    if valid == 0.0:
        why = "; ".join(_reasons(ds, meta, t, index)) or "no reason recorded"
        raise NotFound(
            f"point {point_id} has no valid pixel in its patch for {start}..{end} (the store "
            f"says: {why}); no PNG written"
        )
    k = max(1, -(-PATCH_MIN_PX // max(rgb.shape[:2])))
    image = rgb.repeat(k, axis=0).repeat(k, axis=1)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.imsave(out, image)
    return PatchImage(image.shape[0], image.shape[1], 1.0 - valid)


def _reasons(ds: xr.Dataset, meta: dict[str, Any], t: int, index: int) -> list[str]:
    """`model: reason` for each model of the store that reads imagery and recorded a reason
    for the point at time entry `t`."""
    found = []
    for name in model_names(meta):
        variable = f"{name}_reason"
        if isinstance(meta["models"][name].get("sensor"), dict) and variable in ds:
            reason = str(ds[variable][t, index].values)
            if reason:
                found.append(f"{name}: {reason}")
    return found


def find_point(ds: xr.Dataset, point_id: str) -> int:
    """The point's index in the store, its ids read a block at a time; NotFound if absent."""
    n = ds.sizes["point"]
    for start in range(0, n, TEXT_BLOCK):
        hits = np.flatnonzero(ds["point_id"][start : start + TEXT_BLOCK].values == point_id)
        if hits.size:
            return start + int(hits[0])
    first = ds["point_id"][0].values
    raise NotFound(f"point {point_id} is not in this store ({n} points, e.g. {first})")


def read_true_colour(
    inputs_path: str,
    meta: dict[str, Any],
    point_id: str,
    window: tuple[date, date],
    *,
    chunk: int | None = None,
) -> np.ndarray:
    """(N, N, 4) RGBA in 0..1 of the point's patch (transparent where NaN), from the inputs
    group of a sensor configuration that a model of the store reads, for `window`. The
    groups of plan chunk `chunk` (`chunk-<index>-...`) are looked in first, then the rest
    (inputs fetched under another chunk size)."""
    where = f"inputs store {inputs_path}"
    if not os.path.isdir(inputs_path):
        raise NotFound(f"no inputs for point {point_id}: {where} does not exist; pass --work-dir")
    sensors = [m["sensor"] for m in meta["models"].values() if isinstance(m.get("sensor"), dict)]
    if not sensors:
        raise NotFound(f"no model of this store reads imagery, so point {point_id} got no patch")
    prefix = "" if chunk is None else chunk_key(chunk, "")
    for group in _chunk_groups(inputs_path, sensors, window, first=prefix):
        ids = _list_attr(group, "point_ids")
        if point_id in ids and set(TRUE_COLOUR) <= set(_list_attr(group, "bands_done")):
            return _true_colour(group, ids.index(point_id))
    raise NotFound(
        f"no inputs with bands {', '.join(TRUE_COLOUR)} for point {point_id} and window "
        f"{window[0]}..{window[1]} in {where}; pass the export's --work-dir"
    )


def _true_colour(group: zarr.Group, i: int) -> np.ndarray:
    """(N, N, 4) RGBA of the i-th patch of a chunk group: digital numbers / 3000, clipped."""
    bands = []
    for band in TRUE_COLOUR:
        array = group[band]
        assert isinstance(array, zarr.Array)
        bands.append(read_band(array, f"inputs group {group.path}", index=i))
    rgb = np.clip(np.stack(bands, axis=-1) / TRUE_COLOUR_SCALE, 0.0, 1.0)
    alpha = np.isfinite(rgb).all(axis=-1, keepdims=True).astype(np.float32)
    return np.concatenate([np.nan_to_num(rgb), alpha], axis=-1)


def _list_attr(group: zarr.Group, name: str) -> list[Any]:
    value = group.attrs.get(name)
    return list(value) if isinstance(value, list) else []


def _chunk_groups(
    inputs_path: str, sensors: list[dict[str, Any]], window: tuple[date, date], *, first: str
) -> Iterator[zarr.Group]:
    """The chunk groups of the sensor configurations that match a model's and the window:
    those whose name starts with `first`, then the others (each group is opened only when
    its turn comes)."""
    try:
        root = zarr.open_group(inputs_path, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
        raise NotFound(f"{inputs_path} is not an inputs store: {e}") from e
    configs = []
    for _, config_group in root.groups():
        config = config_group.attrs.get("config")
        if isinstance(config, dict) and _matches(config, sensors, window):
            configs.append((config_group, sorted(config_group.group_keys())))
    for config_group, names in configs:
        for name in (n for n in names if first and n.startswith(first)):
            yield _group(config_group, name)
    for config_group, names in configs:
        for name in (n for n in names if not (first and n.startswith(first))):
            yield _group(config_group, name)


def _group(parent: zarr.Group, name: str) -> zarr.Group:
    group = parent[name]
    assert isinstance(group, zarr.Group)
    return group


def _matches(
    config: dict[str, Any], sensors: list[dict[str, Any]], window: tuple[date, date]
) -> bool:
    if (config.get("start"), config.get("end")) != (str(window[0]), str(window[1])):
        return False
    return any(all(config.get(k) == v for k, v in s.items()) for s in sensors)


if __name__ == "__main__":
    raise SystemExit(main())
