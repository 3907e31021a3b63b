"""Regions: a lon/lat bbox or GeoJSON polygons, checked, as one shapely geometry (EPSG:4326).

A bad region raises PlanError, whose message names the problem and the fix.
"""

import json
import math
from typing import Any

from shapely.geometry import MultiPolygon, Polygon, box, shape
from shapely.ops import unary_union

from embedders.naming import given, setting


class PlanError(ValueError):
    """Bad region or plan input; the message names the problem and the fix."""


# UTM is defined between 80 deg S and 84 deg N (NGA.SIG.0012, 2.3); beyond it is UPS.
UTM_LAT_RANGE = (-80.0, 84.0)


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


# Sentinel-2's systematic acquisitions cover land from 56 degrees south to 82.8 north (ESA's
# mission guide); a box wholly outside that band, which read as lat,lon would lie inside it,
# is most likely a box given in lat,lon order.
IMAGED_LATITUDES = (-56.0, 82.8)


def axis_order_hint(west: float, south: float, east: float, north: float) -> str | None:
    """A warning when `--bbox` looks like lat,lon: its latitudes lie outside the imaged band
    while its longitudes, read as latitudes, lie inside it."""
    low, high = IMAGED_LATITUDES
    outside = north < low or south > high
    swapped_inside = low <= west and east <= high
    if not (outside and swapped_inside):
        return None
    return (
        f"warning: {setting('bbox')} puts the region at latitude {south:g}..{north:g}, outside "
        f"the latitudes Sentinel-2 images systematically ({low:g}..{high:g}); "
        f"{setting('bbox')} is west,south,east,north (lon,lat): if you meant lat,lon, give "
        f"{given(bbox=f'{south:g},{west:g},{north:g},{east:g}')}"
    )


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
    if "type" not in obj:
        raise PlanError(
            f'{source} has no "type" member, so it is no GeoJSON object; give a Polygon, '
            "MultiPolygon, Feature or FeatureCollection"
        )
    _check_crs(obj, source)
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


# Names of lon/lat on WGS 84 that a GeoJSON `crs` member (GeoJSON 2008; RFC 7946 dropped it
# and fixed lon/lat on WGS 84) may carry; any other CRS would make the coordinates mean
# something else than swath reads them as.
LONLAT_CRS = {
    "urn:ogc:def:crs:ogc:1.3:crs84",
    "urn:ogc:def:crs:ogc::crs84",
    "ogc:crs84",
    "crs84",
    "epsg:4326",
    "urn:ogc:def:crs:epsg::4326",
    "urn:ogc:def:crs:epsg:6.6:4326",
}


def _check_crs(obj: dict[str, Any], source: str) -> None:
    """Refuse a `crs` member (top level or a feature's) naming another CRS than lon/lat."""
    members = [obj, *(f for f in obj.get("features") or [] if isinstance(f, dict))]
    for member in members:
        crs = member.get("crs")
        if crs is None:
            continue
        props = crs.get("properties") if isinstance(crs, dict) else None
        name = props.get("name") if isinstance(props, dict) else None
        if not isinstance(name, str) or name.strip().lower() not in LONLAT_CRS:
            shown = name if isinstance(name, str) else json.dumps(crs)[:80]
            raise PlanError(
                f"{source} declares its coordinates in {shown}; swath reads GeoJSON as lon/lat "
                "(EPSG:4326, RFC 7946): reproject it, e.g. ogr2ogr -t_srs EPSG:4326 "
                "out.geojson in.geojson"
            )


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
