"""Acquisitions from Earth Engine (tasks/sources/acquisitions.py).

One `value:compute` lists the scenes of the window that meet the box around the chunk's
patches, filtered as a composite's are (cloud cover; Sentinel-1's mode, polarisations and
orbit pass): each one's id, start time and footprint (and pass). A point's acquisitions are
those whose footprint meets its patch, grouped by UTC day (and pass). One acquisition is read
as the composite of its own day (and pass): the same filters and masks over that day only,
the tiles of one overpass as one image, by the source's own computePixels path.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import ee
import shapely
import shapely.geometry

from tasks.plan.points import Point
from tasks.sources import sensors
from tasks.sources.acquisitions import Acquisition, Read, merge_reads
from tasks.sources.pixels import patch_geobox
from tasks.sources.registry import ImagerySourceError, Patches, SensorConfig

if TYPE_CHECKING:
    from tasks.sources.earthengine import EarthEngineSource

# The properties listed of each scene (Earth Engine's own names).
INDEX, TIME_START, FOOTPRINT = "system:index", "system:time_start", "system:footprint"


@dataclass
class EarthEngineListing:
    """A chunk's acquisitions from Earth Engine (a Listing)."""

    source: EarthEngineSource
    points: tuple[Point, ...]
    config: SensorConfig
    acquisitions: tuple[tuple[Acquisition, ...], ...]
    requests: int = 1

    def read(self, chosen: Sequence[Acquisition | None], bands: Sequence[str]) -> Patches:
        """Each point's acquisition as the composite of its day (and pass), the points of
        one acquisition read together."""
        groups: dict[Acquisition, list[int]] = defaultdict(list)
        for i, acquisition in enumerate(chosen):
            if acquisition is not None:
                groups[acquisition].append(i)
        reads = []
        for acquisition, indices in sorted(groups.items(), key=lambda g: g[0].key):
            day = replace(
                self.config,
                start=acquisition.date,
                end=acquisition.date,
                orbit_pass=acquisition.orbit or self.config.orbit_pass,
                steps=None,
            )
            patches = self.source.fetch([self.points[i] for i in indices], bands, day)
            reads.append(Read(acquisition, tuple(indices), patches))
        point_ids = tuple(p.id for p in self.points)
        return merge_reads(point_ids, bands, self.config.patch_px, reads)


def listing_value(images: ee.ImageCollection, radar: bool) -> ee.List:
    """The expression listing the scenes: [ids, start times (ms), footprints(, passes)]."""
    columns = [INDEX, TIME_START, FOOTPRINT] + ([sensors.S1_EE_ORBIT_PASS] if radar else [])
    return ee.List([images.aggregate_array(c) for c in columns])


def chunk_region(points: Sequence[Point], config: SensorConfig) -> ee.Geometry:
    """The lon/lat box around every patch of the chunk."""
    boxes = [
        patch_geobox(p, config.patch_px, config.resolution_m).extent.to_crs("EPSG:4326").geom
        for p in points
    ]
    west, south, east, north = shapely.union_all(boxes).bounds
    return ee.Geometry.Rectangle([west, south, east, north], proj="EPSG:4326", geodesic=False)


def point_acquisitions(
    points: Sequence[Point], config: SensorConfig, listed: Any
) -> tuple[tuple[Acquisition, ...], ...]:
    """Each point's acquisitions from the listing's columns, in date order."""
    if not isinstance(listed, list) or len(listed) < 3:
        raise ImagerySourceError(
            f"Earth Engine listed the scenes of {config.collection} as {type(listed).__name__}, "
            "not [ids, times, footprints]; report this"
        )
    ids, times, footprints = listed[:3]
    passes = listed[3] if len(listed) > 3 else [""] * len(ids)
    if not len(ids) == len(times) == len(footprints) == len(passes):
        raise ImagerySourceError(
            f"Earth Engine listed {len(ids)} scenes of {config.collection} with "
            f"{len(times)} times, {len(footprints)} footprints and {len(passes)} passes: "
            "some scene lacks one; report this"
        )
    shapes = [_shape(f) for f in footprints]
    out = []
    for point in points:
        box = patch_geobox(point, config.patch_px, config.resolution_m)
        patch = box.extent.to_crs("EPSG:4326").geom
        groups: dict[tuple[str, str], list[str]] = defaultdict(list)
        for k, shape in enumerate(shapes):
            if shape.intersects(patch):
                day = datetime.fromtimestamp(int(times[k]) / 1000, UTC).date().isoformat()
                groups[(day, str(passes[k] or "").lower())].append(str(ids[k]))
        out.append(
            tuple(
                Acquisition(day, tuple(sorted(found)), orbit)
                for (day, orbit), found in sorted(groups.items())
            )
        )
    return tuple(out)


def _shape(footprint: Any) -> shapely.Geometry:
    """A scene's footprint (GeoJSON: a LinearRing as Earth Engine gives it, or a Polygon)."""
    shape = shapely.geometry.shape(footprint)
    return shapely.Polygon(shape) if shape.geom_type == "LinearRing" else shape
