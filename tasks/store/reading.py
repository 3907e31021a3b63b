"""A finished store as people read it: pooled vectors, time entries, status counts and the
region's outline. Shared by the quick-look maps, `flows.inspect` and `flows.to_parquet`;
it imports neither torch nor Prefect."""

import json
import math
import warnings
from collections import Counter
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr
from shapely.geometry.base import BaseGeometry

from embedders.spec import Status
from tasks.plan.regions import PlanError, bbox_region, geojson_region
from tasks.store.layout import StoreMismatch, read_meta
from tasks.store.text import decode_text


class NotAStore(ValueError):
    """The path holds no swath store."""


def store_meta(path: str) -> dict[str, Any]:
    """The store's `swath` and `models` attributes; NotAStore when `path` is not a swath store."""
    try:
        meta = read_meta(path)
    except (OSError, ValueError, KeyError, StoreMismatch) as e:  # zarr's errors are ValueErrors
        raise NotAStore(f"{path} is not a swath store (no Zarr group there: {e})") from e
    if not isinstance(meta.get("swath"), dict) or not isinstance(meta.get("models"), dict):
        raise NotAStore(f"{path} is a Zarr group without swath's attributes, not a swath store")
    return meta


def model_names(meta: dict[str, Any]) -> list[str]:
    """The store's products in the order the export named them (the `models` attribute's
    keys are sorted)."""
    layout = meta["swath"].get("layout", {}).get("models")
    ordered = [n for n in layout if n in meta["models"]] if isinstance(layout, dict) else []
    return ordered + sorted(set(meta["models"]) - set(ordered))


def time_entries(ds: xr.Dataset) -> list[tuple[date, date]]:
    """Each time entry's window: first and last day."""
    starts = ds["time"].values.astype("datetime64[D]").tolist()
    ends = ds["time_end"].values.astype("datetime64[D]").tolist()
    return list(zip(starts, ends, strict=True))


def find_time(ds: xr.Dataset, day: date | None) -> int:
    """The index of the time entry that starts on `day`; the last entry when `day` is None.

    Raises LookupError naming the entries the store has.
    """
    entries = time_entries(ds)
    if day is None:
        return len(entries) - 1
    for i, (start, _) in enumerate(entries):
        if start == day:
            return i
    have = ", ".join(str(s) for s, _ in entries)
    raise LookupError(f"the store has no time entry starting {day}; it has {have}")


def pooled(ds: xr.Dataset, model: str, t: int, points: slice = slice(None)) -> np.ndarray:
    """(point, dim) float32 vectors of `model` at time entry `t`, of `points` (default all);
    grids are pooled by the nanmean over y/x (NaN where a point has no value)."""
    values = np.asarray(ds[model].isel(time=t, point=points).values, dtype=np.float32)
    if values.ndim == 4:
        with warnings.catch_warnings():  # all-NaN maps (points not ok) stay NaN
            warnings.filterwarnings(
                "ignore", message="Mean of empty slice", category=RuntimeWarning
            )
            values = np.nanmean(values, axis=(2, 3))
    return values


def statuses(ds: xr.Dataset, model: str, t: int, points: slice = slice(None)) -> np.ndarray:
    return np.asarray(ds[f"{model}_status"].isel(time=t, point=points).values, dtype=np.int8)


@dataclass(frozen=True)
class ReasonGroup:
    """Points of one model and time entry that are not ok for one same reason."""

    status: str  # "failed", "nodata" or "pending"
    reason: str  # as the store holds it; "" for pending points (not written yet)
    points: int
    first: tuple[str, ...]  # the first point ids, in point order


REASON_BLOCK = 65_536  # points read at a time


def reason_groups(path: str, model: str, t: int, *, first: int = 3) -> list[ReasonGroup]:
    """Why the points of `model` at time entry `t` are not ok: identical (status, reason)
    pairs grouped, the group of most points first (then the one whose first point comes
    first), each with its count and its `first` point ids. Statuses are read whole (int8);
    reasons and ids a block at a time, only where a point is not ok."""
    status = np.asarray(zarr.open_array(path, path=f"{model}_status", mode="r")[t, :])
    not_ok = np.flatnonzero(status != Status.OK)
    if not not_ok.size:
        return []
    reasons = zarr.open_array(path, path=f"{model}_reason", mode="r")
    ids = zarr.open_array(path, path="point_id", mode="r")
    count: Counter[tuple[str, str]] = Counter()
    named: dict[tuple[str, str], list[str]] = {}
    met: dict[tuple[str, str], int] = {}  # the first point of each group
    for a in range(int(not_ok[0]) // REASON_BLOCK * REASON_BLOCK, len(status), REASON_BLOCK):
        rows = not_ok[(not_ok >= a) & (not_ok < a + REASON_BLOCK)]
        if not rows.size:
            continue
        b = int(rows[-1]) + 1
        texts = decode_text(np.asarray(reasons[t, a:b]))[rows - a]
        point_ids = decode_text(np.asarray(ids[a:b]))[rows - a]
        codes = status[rows]
        for code in np.unique(codes):
            mine = codes == code
            found, n = np.unique(texts[mine], return_counts=True)
            for text, k in zip(found.tolist(), n.tolist(), strict=True):
                key = (Status(int(code)).name.lower(), str(text))
                count[key] += k
                same = texts[mine] == text
                met.setdefault(key, int(rows[mine][same][0]))  # blocks go in point order
                some = named.setdefault(key, [])
                if len(some) < first:  # the first few of this block, in point order
                    some.extend(str(p) for p in point_ids[mine][same][: first - len(some)])
    ranked = sorted(count.items(), key=lambda item: (-item[1], met[item[0]]))
    return [
        ReasonGroup(status, reason, n, tuple(named[status, reason]))
        for (status, reason), n in ranked
    ]


def point_bounds(ds: xr.Dataset) -> tuple[float, float, float, float]:
    """West, south, east and north of the store's points, read a stored chunk at a time."""
    n = ds.sizes["point"]
    step = ds["lon"].chunks[0][0] if ds["lon"].chunks else n
    west, south, east, north = math.inf, math.inf, -math.inf, -math.inf
    for a in range(0, n, step):
        lon, lat = ds["lon"][a : a + step].values, ds["lat"][a : a + step].values
        west, east = min(west, float(lon.min())), max(east, float(lon.max()))
        south, north = min(south, float(lat.min())), max(north, float(lat.max()))
    return west, south, east, north


def counts(status: np.ndarray) -> dict[str, int]:
    """How many points are in each state, in Status order (pending, ok, failed, nodata)."""
    return {s.name.lower(): int((status == s).sum()) for s in Status}


def region_outline(region: dict[str, Any]) -> BaseGeometry | None:
    """The region recorded in the store (a bbox, GeoJSON text, or the path of a GeoJSON file
    that still exists) as a lon/lat geometry; None when it cannot be read back."""
    geojson = region.get("geojson")
    try:
        if isinstance(geojson, str):
            text = geojson
            if not text.lstrip().startswith(("{", "[")):
                path = Path(text)
                if not path.is_file():
                    return None  # the export read a file that is no longer there
                text = path.read_text()
            return geojson_region(text)
        bbox = region.get("bbox")
        if isinstance(bbox, list | tuple) and len(bbox) == 4:
            return bbox_region(*(float(v) for v in bbox))
    except PlanError:
        return None
    return None


def provenance_source(model_meta: dict[str, Any]) -> str:
    """Where a product's values came from: its imagery source (and catalog or API, and
    collection), or its Tessera store."""
    source = model_meta.get("source")
    sensor = model_meta.get("sensor")
    collection = sensor.get("collection") if isinstance(sensor, dict) else None
    if source and source != "stac-catalog":
        where = f" {model_meta['catalog']}" if model_meta.get("catalog") else ""
        return f"{source}{where}" + (f" {collection}" if collection else "")
    for key in ("catalog", "store"):
        if model_meta.get(key):
            return f"{key} {model_meta[key]}"
    return "-"


def weights_text(model_meta: dict[str, Any]) -> str:
    """A model's weights (`kind identity`), or a precomputed product's dataset."""
    weights = model_meta.get("weights")
    if isinstance(weights, dict):
        return f"{weights.get('kind', '?')} {weights.get('identity', weights.get('seed', ''))}"
    if "dataset" in model_meta:
        return f"dataset {model_meta['dataset']}"
    return json.dumps(model_meta.get("product", "?"))
