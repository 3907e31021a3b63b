"""Regions: a lon/lat bbox or GeoJSON polygons, checked, as one shapely geometry (EPSG:4326).

A bad region raises PlanError, whose message names the problem and the fix.
"""

import json
import math
from typing import Any

from shapely.geometry import MultiPolygon, Polygon, box, shape
from shapely.ops import unary_union


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
