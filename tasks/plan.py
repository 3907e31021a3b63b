"""Plan: a region and a spacing become points on a regular UTM grid, then chunks of points."""

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from pyproj import Transformer
from shapely.geometry import MultiPolygon, Polygon, box, shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import transform, unary_union


@dataclass(frozen=True)
class Point:
    """A point to embed: a stable id, its lon/lat, its UTM zone (EPSG code) and UTM x/y."""

    id: str
    lon: float
    lat: float
    epsg: int
    x: float
    y: float


@dataclass(frozen=True)
class Chunk:
    """A unit of work, retry and resume: consecutive points of the plan."""

    index: int
    start: int  # position of the first point on the store's point axis
    points: tuple[Point, ...]

    @property
    def key(self) -> str:
        return chunk_key(self.index, [p.id for p in self.points])

    @property
    def stop(self) -> int:
        return self.start + len(self.points)


def chunk_key(index: int, point_ids: list[str]) -> str:
    """A chunk's name: its index and a digest of its point ids (`chunk-00001-1a2b3c4d`)."""
    digest = hashlib.sha256("\n".join(point_ids).encode()).hexdigest()[:8]
    return f"chunk-{index:05d}-{digest}"


class PlanError(ValueError):
    """Bad region or plan input; the message names the problem and the fix."""


# UTM is defined between 80 deg S and 84 deg N (NGA.SIG.0012, 2.3); beyond it is UPS.
UTM_LAT_RANGE = (-80.0, 84.0)
# A plan larger than this is almost always a spacing given in the wrong unit.
MAX_POINTS = 20_000_000


def bbox_region(west: float, south: float, east: float, north: float) -> Polygon:
    """A lon/lat box as a polygon, after checking it is one."""
    if not all(math.isfinite(v) for v in (west, south, east, north)):
        raise PlanError("bbox has a non-finite value; give four numbers: west,south,east,north")
    if not (-90 <= south <= 90 and -90 <= north <= 90):
        raise PlanError(
            f"bbox latitude out of range (south={south}, north={north}); latitudes lie in "
            "[-90, 90]: check the order is west,south,east,north"
        )
    if not (-180 <= west <= 180 and -180 <= east <= 180):
        raise PlanError(f"bbox longitude out of range (west={west}, east={east}); use [-180, 180]")
    if west >= east:
        raise PlanError(
            f"bbox west ({west}) is not less than east ({east}); give west,south,east,north "
            "(regions across the antimeridian: split them in two)"
        )
    if south >= north:
        raise PlanError(
            f"bbox south ({south}) is not less than north ({north}); give west,south,east,north"
        )
    return box(west, south, east, north)


def geojson_region(text: str, *, source: str = "GeoJSON") -> Polygon | MultiPolygon:
    """A polygon (holes respected) or multipolygon from GeoJSON text in EPSG:4326.

    Accepts a bare geometry, a Feature, or a FeatureCollection whose features are all
    polygons (they are unioned).
    """
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise PlanError(
            f"{source} does not parse as JSON ({e.msg} at line {e.lineno}); fix the file"
        ) from e
    if not isinstance(obj, dict):
        raise PlanError(
            f"{source} is not a GeoJSON object; give a Polygon, Feature or FeatureCollection"
        )
    geometries = _geometries(obj, source)
    shapes = []
    for geom in geometries:
        if not isinstance(geom, dict) or geom.get("type") not in ("Polygon", "MultiPolygon"):
            kind = geom.get("type") if isinstance(geom, dict) else type(geom).__name__
            raise PlanError(
                f"{source} holds a {kind}, not a polygon; give a Polygon or MultiPolygon"
            )
        try:
            shapes.append(shape(geom))
        except (ValueError, TypeError, AttributeError, IndexError) as e:
            raise PlanError(
                f"{source} has a malformed {geom['type']}: {e}; fix its coordinates"
            ) from e
    region = unary_union(shapes) if len(shapes) > 1 else shapes[0]
    if region.is_empty or not region.is_valid:
        raise PlanError(f"{source} polygon is empty or self-intersecting; fix its rings")
    west, south, east, north = region.bounds
    bbox_region(west, south, east, north)  # same range checks as a bbox
    return region


def _geometries(obj: dict[str, Any], source: str) -> list[Any]:
    kind = obj.get("type")
    if kind == "FeatureCollection":
        features = obj.get("features") or []
        if not features:
            raise PlanError(f"{source} FeatureCollection has no features; add a polygon feature")
        return [f.get("geometry") if isinstance(f, dict) else f for f in features]
    if kind == "Feature":
        return [obj.get("geometry")]
    return [obj]


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the standard 6-degree UTM zone a lon/lat falls in (WGS 84)."""
    zone = min(int((lon + 180) // 6) + 1, 60)
    return (32600 if lat >= 0 else 32700) + zone


def plan_points(region: BaseGeometry, spacing_m: float) -> list[Point]:
    """Points on a regular grid of `spacing_m` metres inside `region` (lon/lat).

    Each point lies on the grid of its own UTM zone: x and y are whole multiples of the
    spacing there, so a point's id ("<epsg>-<x>-<y>") is the same in any region that
    contains it, and patches of whole pixels stay aligned with imagery on that grid.
    Points are ordered by zone, then north to south, then west to east.
    """
    if not spacing_m > 0 or not math.isfinite(spacing_m):
        raise PlanError(
            f"spacing must be a positive number of metres, got {spacing_m}; e.g. --spacing 250"
        )
    west, south, east, north = region.bounds
    lo, hi = UTM_LAT_RANGE
    if south < lo or north > hi:
        raise PlanError(
            f"region reaches latitude {south if south < lo else north:.2f}: UTM grids cover "
            f"{lo} to {hi} degrees only; crop the region to that band"
        )
    _check_size(region, spacing_m)
    points: list[Point] = []
    for epsg, strip in _zone_strips(west, south, east, north):
        part = region.intersection(strip)
        if not part.is_empty:
            points.extend(_grid_in_zone(part, epsg, spacing_m))
    return points


def _zone_strips(west: float, south: float, east: float, north: float) -> list[tuple[int, Polygon]]:
    """The UTM zone strips (and hemispheres) a lon/lat box touches, as lon/lat polygons."""
    strips = []
    for z in range(int((west + 180) // 6), min(int((east + 180) // 6), 59) + 1):
        lon0 = -180 + 6 * z
        for base, lat0, lat1 in ((32600, max(0.0, south), north), (32700, south, min(0.0, north))):
            if lat0 < lat1 or (base == 32600 and lat0 == lat1 == 0.0):
                strips.append((base + z + 1, box(lon0, lat0, lon0 + 6, lat1)))
    return sorted(strips, key=lambda s: s[0])


def _grid_in_zone(part: BaseGeometry, epsg: int, spacing: float) -> list[Point]:
    to_utm = Transformer.from_crs(4326, epsg, always_xy=True)
    x0, y0, x1, y1 = transform(to_utm.transform, part.buffer(0).envelope.segmentize(0.01)).bounds
    xs = np.arange(math.ceil(x0 / spacing), math.floor(x1 / spacing) + 1) * spacing
    ys = np.arange(math.floor(y1 / spacing), math.ceil(y0 / spacing) - 1, -1) * spacing
    if xs.size == 0 or ys.size == 0:
        return []
    gx, gy = np.meshgrid(xs, ys)
    lon, lat = Transformer.from_crs(epsg, 4326, always_xy=True).transform(gx.ravel(), gy.ravel())
    inside = shapely.contains_xy(part, lon, lat) | shapely.intersects_xy(part.boundary, lon, lat)
    # Half-open strips: a point on a zone's east edge belongs to the next zone, a point
    # on the equator to the northern hemisphere.
    zone_west = -180 + 6 * ((epsg % 100) - 1)
    inside &= (lon >= zone_west) & (lon < zone_west + 6)
    inside &= (lat >= 0) if epsg < 32700 else (lat < 0)
    idx = np.flatnonzero(inside)
    return [
        Point(
            _point_id(epsg, gx.flat[i], gy.flat[i]),
            float(lon[i]),
            float(lat[i]),
            epsg,
            float(gx.flat[i]),
            float(gy.flat[i]),
        )
        for i in idx
    ]


def _point_id(epsg: int, x: float, y: float) -> str:
    def fmt(v: float) -> str:
        return str(round(v)) if abs(v - round(v)) < 1e-6 else f"{v:.3f}"

    return f"{epsg}-{fmt(x)}-{fmt(y)}"


def _check_size(region: BaseGeometry, spacing_m: float) -> None:
    _, south, _, north = region.bounds
    lat = math.radians((south + north) / 2)
    area_m2 = region.area * (111_320.0**2) * max(math.cos(lat), 0.01)
    estimate = area_m2 / spacing_m**2
    if estimate > MAX_POINTS:
        raise PlanError(
            f"region at {spacing_m:g} m spacing would give about {estimate:,.0f} points "
            f"(limit {MAX_POINTS:,}); raise --spacing or split the region"
        )


def make_chunks(points: list[Point], chunk_size: int) -> list[Chunk]:
    """Consecutive runs of `chunk_size` points; the last chunk may be shorter."""
    if chunk_size < 1:
        raise PlanError(f"chunk size must be at least 1, got {chunk_size}")
    return [
        Chunk(index=i, start=s, points=tuple(points[s : s + chunk_size]))
        for i, s in enumerate(range(0, len(points), chunk_size))
    ]
