"""Plan: a region (tasks/plan/regions.py) and a spacing become points on a regular UTM grid.

A plan stays small in the flow whatever the region's size: points live in arrays (a
`PointTable`, written to a plan file in the work directory), computed with vectorised
geometry; tasks/plan/chunks.py cuts them into chunks, small keys from which a task reads its
own points.
"""

import functools
import hashlib
import json
import math
import os
import shutil
import uuid
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
import zarr
from pyproj import Transformer
from shapely.geometry import Polygon, box
from shapely.geometry.base import BaseGeometry
from shapely.ops import transform

from embedders.naming import given, setting
from tasks.plan.regions import UTM_LAT_RANGE, PlanError


@dataclass(frozen=True)
class Point:
    """A point to embed: a stable id, its lon/lat, its UTM zone (EPSG code) and UTM x/y."""

    id: str
    lon: float
    lat: float
    epsg: int
    x: float
    y: float


# A plan larger than this is almost always a spacing given in the wrong unit.
MAX_POINTS = 20_000_000


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the standard 6-degree UTM zone a lon/lat falls in (WGS 84)."""
    zone = min(int((lon + 180) // 6) + 1, 60)
    return (32600 if lat >= 0 else 32700) + zone


def plan_points(region: BaseGeometry, spacing_m: float, *, path: str | None = None) -> "PointTable":
    """Points on a regular grid of `spacing_m` metres inside `region` (lon/lat).

    Each point lies on the grid of its own UTM zone: x and y are whole multiples of the
    spacing there, so a point's id ("<epsg>-<x>-<y>") is the same in any region that
    contains it, and patches of whole pixels stay aligned with imagery on that grid.
    Points are ordered by zone, then north to south, then west to east.

    The grid is computed in blocks of rows with vectorised geometry, and no point is ever a
    Python object here. With `path` the table is written there (a Zarr group, see
    `PointTable`), one block at a time, so planning holds one block in memory whatever the
    region's size; a complete table already at `path` is opened instead. Without it the
    table is kept in memory (small plans, tests).
    """
    if not spacing_m > 0 or not math.isfinite(spacing_m):
        raise PlanError(
            f"spacing must be a positive number of metres, got {spacing_m}; e.g. "
            f"{given(spacing_m=250)}"
        )
    west, south, east, north = region.bounds
    lo, hi = UTM_LAT_RANGE
    if south < lo or north > hi:
        raise PlanError(
            f"region reaches latitude {south if south < lo else north:.2f}: UTM grids cover "
            f"{lo} to {hi} degrees only; crop the region to that band"
        )
    _check_size(region, spacing_m)
    if path is not None and PointTable.complete(path):
        return PointTable.open(path)
    sink = _Sink(path)
    for epsg, strip in _zone_strips(west, south, east, north):
        part = region.intersection(strip)
        if not part.is_empty:
            for block in _grid_in_zone(part, epsg, spacing_m):
                sink.add(block)
    return sink.finish()


def _zone_strips(west: float, south: float, east: float, north: float) -> list[tuple[int, Polygon]]:
    """The UTM zone strips (and hemispheres) a lon/lat box touches, as lon/lat polygons."""
    strips = []
    for z in range(int((west + 180) // 6), min(int((east + 180) // 6), 59) + 1):
        lon0 = -180 + 6 * z
        for base, lat0, lat1 in ((32600, max(0.0, south), north), (32700, south, min(0.0, north))):
            if lat0 < lat1 or (base == 32600 and lat0 == lat1 == 0.0):
                strips.append((base + z + 1, box(lon0, lat0, lon0 + 6, lat1)))
    return sorted(strips, key=lambda s: s[0])


def plan_key(region: BaseGeometry, spacing_m: float) -> str:
    """A digest of what a plan is computed from: its plan file's name in the work directory."""
    h = hashlib.sha256(json.dumps([PLAN_VERSION, spacing_m]).encode())
    h.update(shapely.to_wkb(region, hex=False, output_dimension=2))
    return h.hexdigest()[:16]


# 1: arrays epsg, x, y, lon, lat in plan order; attrs n, digest, bounds, complete.
# 2: attr crc: each column's CRC-32, to check the file before it is reused (`plan_damage`).
PLAN_VERSION = 2
BLOCK_POINTS = 1 << 18  # grid cells computed at once, and points per Zarr chunk of a plan file
COLUMNS = {"epsg": "int32", "x": "float64", "y": "float64", "lon": "float64", "lat": "float64"}
Columns = dict[str, np.ndarray]


def _grid_in_zone(part: BaseGeometry, epsg: int, spacing: float) -> Iterator[Columns]:
    """The grid points of one zone's part of the region, a block of rows at a time."""
    to_utm = Transformer.from_crs(4326, epsg, always_xy=True)
    to_lonlat = Transformer.from_crs(epsg, 4326, always_xy=True)
    x0, y0, x1, y1 = transform(to_utm.transform, part.buffer(0).envelope.segmentize(0.01)).bounds
    xs = np.arange(math.ceil(x0 / spacing), math.floor(x1 / spacing) + 1) * spacing
    ys = np.arange(math.floor(y1 / spacing), math.ceil(y0 / spacing) - 1, -1) * spacing
    if xs.size == 0 or ys.size == 0:
        return
    boundary = part.boundary
    shapely.prepare(part)
    shapely.prepare(boundary)
    zone_west = -180 + 6 * ((epsg % 100) - 1)
    rows = max(1, BLOCK_POINTS // xs.size)
    for r in range(0, ys.size, rows):
        grid_x, grid_y = np.meshgrid(xs, ys[r : r + rows])
        gx, gy = grid_x.ravel(), grid_y.ravel()
        lon, lat = to_lonlat.transform(gx, gy)
        inside = shapely.contains_xy(part, lon, lat) | shapely.intersects_xy(boundary, lon, lat)
        # Half-open strips: a point on a zone's east edge belongs to the next zone, a point
        # on the equator to the northern hemisphere.
        inside &= (lon >= zone_west) & (lon < zone_west + 6)
        inside &= (lat >= 0) if epsg < 32700 else (lat < 0)
        if inside.any():
            yield {
                "epsg": np.full(int(inside.sum()), epsg, dtype="int32"),
                "x": gx[inside],
                "y": gy[inside],
                "lon": np.asarray(lon)[inside],
                "lat": np.asarray(lat)[inside],
            }


def point_id(epsg: int, x: float, y: float) -> str:
    """A point's id: its zone and its UTM coordinates (metres; mm when not whole)."""

    def fmt(v: float) -> str:
        return str(round(v)) if abs(v - round(v)) < 1e-6 else f"{v:.3f}"

    return f"{epsg}-{fmt(x)}-{fmt(y)}"


_point_id = point_id  # the tests' name for it


def coords_digest(epsg: np.ndarray, x: np.ndarray, y: np.ndarray) -> "hashlib._Hash":
    """A running digest of points by their zone and UTM coordinates to the millimetre: what a
    chunk's key and a plan's fingerprint stand for (the store's utm_epsg, utm_x and utm_y
    give the same digest back)."""
    h = hashlib.sha256()
    h.update(np.asarray(epsg, dtype="<i4").tobytes())
    h.update(np.round(np.asarray(x, dtype="float64") * 1000).astype("<i8").tobytes())
    h.update(np.round(np.asarray(y, dtype="float64") * 1000).astype("<i8").tobytes())
    return h


class PointTable:
    """A plan's points as arrays in plan order: UTM zone (`epsg`), UTM `x` and `y`, `lon`
    and `lat`. A planned table lives in a Zarr group in the work directory and is read a
    slice at a time (a task reads only its chunk's points); a small one may be in memory.

    `digest` stands for every point (by zone and coordinates, and explicit ids when the
    table was made from Point objects); `bounds` is the lon/lat box of the points.
    """

    def __init__(
        self,
        n: int,
        digest: str,
        bounds: tuple[float, float, float, float],
        *,
        path: str = "",
        columns: Columns | None = None,
        ids: list[str] | None = None,
    ) -> None:
        self.n, self.digest, self.bounds = n, digest, bounds
        self.path, self._columns, self._ids = path, columns, ids

    def __len__(self) -> int:
        return self.n

    @property
    def explicit_ids(self) -> bool:
        """Whether the ids were given (a table made from Point objects), not formatted."""
        return self._ids is not None

    def __iter__(self) -> Iterator[Point]:
        for start in range(0, self.n, BLOCK_POINTS):
            yield from self.points(start, min(start + BLOCK_POINTS, self.n))

    @classmethod
    def from_points(cls, points: Sequence[Point]) -> "PointTable":
        """An in-memory table of the given points, their ids kept as they are."""
        columns = {
            "epsg": np.array([p.epsg for p in points], dtype="int32"),
            "x": np.array([p.x for p in points], dtype="float64"),
            "y": np.array([p.y for p in points], dtype="float64"),
            "lon": np.array([p.lon for p in points], dtype="float64"),
            "lat": np.array([p.lat for p in points], dtype="float64"),
        }
        ids = [p.id for p in points]
        h = coords_digest(columns["epsg"], columns["x"], columns["y"])
        h.update("\n".join(ids).encode())
        return cls(len(points), h.hexdigest()[:16], _bounds(columns), columns=columns, ids=ids)

    @staticmethod
    def complete(path: str) -> bool:
        try:
            return bool(zarr.open_group(path, mode="r").attrs.get("complete"))
        except (FileNotFoundError, ValueError, zarr.errors.BaseZarrError):
            return False

    @classmethod
    def open(cls, path: str) -> "PointTable":
        attrs = zarr.open_group(path, mode="r").attrs
        bounds = attrs["bounds"]
        assert isinstance(bounds, list)
        return cls(int(attrs["n"]), str(attrs["digest"]), tuple(bounds), path=path)  # type: ignore[arg-type]

    def columns(self, start: int, stop: int) -> Columns:
        """Every column for points start..stop."""
        if self._columns is not None:
            return {k: v[start:stop] for k, v in self._columns.items()}
        arrays = _open_arrays(self.path)
        return {k: np.asarray(arrays[k][start:stop]) for k in COLUMNS}

    def ids(self, start: int, stop: int) -> list[str]:
        if self._ids is not None:
            return self._ids[start:stop]
        c = self.columns(start, stop)
        return [
            point_id(e, x, y)
            for e, x, y in zip(c["epsg"].tolist(), c["x"].tolist(), c["y"].tolist(), strict=True)
        ]

    def points(self, start: int = 0, stop: int | None = None) -> tuple[Point, ...]:
        stop = self.n if stop is None else stop
        if self.path and self._columns is None:
            return read_points(self.path, start, stop)
        return self._points(start, stop)

    def _points(self, start: int, stop: int) -> tuple[Point, ...]:
        c = self.columns(start, stop)
        return tuple(
            Point(i, lon, lat, e, x, y)
            for i, lon, lat, e, x, y in zip(
                self.ids(start, stop),
                c["lon"].tolist(),
                c["lat"].tolist(),
                c["epsg"].tolist(),
                c["x"].tolist(),
                c["y"].tolist(),
                strict=True,
            )
        )


def _bounds(columns: Columns) -> tuple[float, float, float, float]:
    lon, lat = columns["lon"], columns["lat"]
    if lon.size == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return (float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max()))


class _Sink:
    """Where planning puts its blocks: a plan file, written beside its path and renamed into
    place once complete (a crash leaves no half table), or memory."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.n = 0
        self.hash = hashlib.sha256()
        self.box = [math.inf, math.inf, -math.inf, -math.inf]
        self.crc = dict.fromkeys(COLUMNS, 0)
        self.blocks: list[Columns] = []
        self.group: zarr.Group | None = None
        if path is not None:
            self.staging = f"{path.rstrip('/')}.creating-{uuid.uuid4().hex[:8]}"
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            self.group = zarr.open_group(self.staging, mode="w", zarr_format=3)
            for name, dtype in COLUMNS.items():
                self.group.create_array(name, shape=(0,), dtype=dtype, chunks=(BLOCK_POINTS,))

    def add(self, block: Columns) -> None:
        self.n += len(block["epsg"])
        self.hash.update(coords_digest(block["epsg"], block["x"], block["y"]).digest())
        w, s, e, n = _bounds(block)
        self.box = [
            min(self.box[0], w),
            min(self.box[1], s),
            max(self.box[2], e),
            max(self.box[3], n),
        ]
        for name, dtype in COLUMNS.items():
            self.crc[name] = zlib.crc32(
                np.ascontiguousarray(block[name], dtype).tobytes(), self.crc[name]
            )
        if self.group is None:
            self.blocks.append(block)
            return
        for name in COLUMNS:
            array = self.group[name]
            assert isinstance(array, zarr.Array)
            array.append(block[name])

    def finish(self) -> PointTable:
        bounds = tuple(self.box) if self.n else (0.0, 0.0, 0.0, 0.0)
        digest = self.hash.hexdigest()[:16]
        if self.group is None:
            columns = {
                k: np.concatenate([b[k] for b in self.blocks]) if self.blocks else np.zeros(0, d)
                for k, d in COLUMNS.items()
            }
            return PointTable(self.n, digest, bounds, columns=columns)  # type: ignore[arg-type]
        assert self.path is not None
        self.group.attrs.update(
            {
                "version": PLAN_VERSION,
                "n": self.n,
                "digest": digest,
                "bounds": list(bounds),
                "crc": self.crc,
            }
        )
        self.group.attrs["complete"] = True
        if os.path.isdir(self.path):  # another process planned the same region meanwhile
            shutil.rmtree(self.staging, ignore_errors=True)
            return PointTable.open(self.path)
        os.rename(self.staging, self.path)
        return PointTable.open(self.path)


# What reading a damaged plan file raises: a missing file or attribute, a zarr.json or
# attribute that is not what it should be, a chunk that does not decode (tasks/store/integrity.py).
_DAMAGED = (OSError, KeyError, TypeError, ValueError, RuntimeError, zarr.errors.BaseZarrError)


def plan_damage(path: str) -> str | None:
    """Why the plan file at `path` cannot be reused (it cannot be read, is incomplete, or its
    values are not those its CRC-32s were taken of), or None when it is sound. Reads it
    whole, a block at a time."""
    try:
        attrs = zarr.open_group(path, mode="r").attrs
        if not attrs.get("complete"):
            return "it was never completed"
        n, want = int(attrs["n"]), dict(attrs["crc"])  # type: ignore[arg-type]
        arrays = {k: zarr.open_array(path, path=k, mode="r") for k in COLUMNS}
        if any(a.shape != (n,) for a in arrays.values()):
            return f"its columns do not hold the {n} points it records"
        got = dict.fromkeys(COLUMNS, 0)
        for start in range(0, n, BLOCK_POINTS):
            for name, array in arrays.items():
                values = np.ascontiguousarray(array[start : min(start + BLOCK_POINTS, n)])
                got[name] = zlib.crc32(values.tobytes(), got[name])
    except _DAMAGED as e:
        return f"it cannot be read: {type(e).__name__}: {e}"
    bad = [name for name in COLUMNS if got[name] != want.get(name)]
    return f"its {', '.join(bad)} differ from what was written" if bad else None


def discard_plan(path: str) -> None:
    """Remove a damaged plan file (moved aside first: a reader sees it whole or not at all)."""
    aside = f"{path.rstrip('/')}.damaged-{uuid.uuid4().hex[:8]}"
    os.rename(path, aside)
    shutil.rmtree(aside, ignore_errors=True)


@functools.lru_cache(maxsize=8)
def _open_arrays(path: str) -> dict[str, "zarr.Array[Any]"]:
    return {k: zarr.open_array(path, path=k, mode="r") for k in COLUMNS}


@functools.lru_cache(maxsize=32)
def read_points(path: str, start: int, stop: int) -> tuple[Point, ...]:
    """Points start..stop of the plan file at `path` (a task reads its chunk's points once)."""
    return PointTable.open(path)._points(start, stop)


def _check_size(region: BaseGeometry, spacing_m: float) -> None:
    _, south, _, north = region.bounds
    lat = math.radians((south + north) / 2)
    area_m2 = region.area * (111_320.0**2) * max(math.cos(lat), 0.01)
    estimate = area_m2 / spacing_m**2
    if estimate > MAX_POINTS:
        raise PlanError(
            f"region at {spacing_m:g} m spacing would give about {estimate:,.0f} points "
            f"(limit {MAX_POINTS:,}); raise {setting('spacing_m')} or split the region"
        )
