"""Acquisitions from STAC items (tasks/sources/acquisitions.py), for both STAC sources.

A point's acquisitions are the items of the window that a composite would read for it
(tasks/sources/stac.py `select_items`: the window, the cloud-cover limit, Sentinel-1's mode
and orbit pass; for Sentinel-1, only items carrying every band asked for) whose footprint
meets its patch, grouped by UTC date (and orbit pass). One acquisition is read as a
composite of its own items (the tiles of one overpass: one image), by the path every STAC
read takes, so it is masked and harmonised alike.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC

import rasterio
import shapely

from tasks.plan.points import Point
from tasks.sources.acquisitions import Acquisition, Read, merge_reads
from tasks.sources.failures import keeps_secrets
from tasks.sources.pixels import patch_geobox
from tasks.sources.registry import ImagerySourceError, Patches, SensorConfig
from tasks.sources.sensors import S1_STAC_ORBIT_STATE, SENTINEL_1_SENSOR
from tasks.sources.stac import (
    CatalogItem,
    carries_bands,
    composite_patches,
    resolve_assets,
    select_items,
)


@dataclass
class StacListing:
    """A chunk's acquisitions from STAC items (a Listing), and the items to read them."""

    points: tuple[Point, ...]
    config: SensorConfig
    items: dict[str, CatalogItem]  # by item id: those of the window
    gdal_env: dict[str, str]
    acquisitions: tuple[tuple[Acquisition, ...], ...]
    requests: int = 0

    @keeps_secrets
    def read(self, chosen: Sequence[Acquisition | None], bands: Sequence[str]) -> Patches:
        """Each point's acquisition, the points of one acquisition read together."""
        groups: dict[Acquisition, list[int]] = defaultdict(list)
        for i, acquisition in enumerate(chosen):
            if acquisition is not None:
                groups[acquisition].append(i)
        reads = []
        with rasterio.Env(**self.gdal_env):
            for acquisition, indices in sorted(groups.items(), key=lambda g: g[0].key):
                items = [self._item(acquisition, i) for i in acquisition.ids]
                points = [self.points[i] for i in indices]
                patches = composite_patches(points, bands, self.config, items)
                reads.append(Read(acquisition, tuple(indices), patches))
        point_ids = tuple(p.id for p in self.points)
        return merge_reads(point_ids, bands, self.config.patch_px, reads)

    def _item(self, acquisition: Acquisition, item_id: str) -> CatalogItem:
        if item_id not in self.items:
            raise ImagerySourceError(
                f"item {item_id} of acquisition {acquisition.key} is no longer among the "
                f"{self.config.collection} items of {self.config.start}..{self.config.end} "
                f"of {self.config.catalog or self.config.source}; the catalog changed since "
                "the acquisitions were drawn: remove the chunk's inputs group (or prefetch "
                "with refresh) to draw them again"
            )
        return self.items[item_id]


def stac_listing(
    points: Sequence[Point],
    bands: Sequence[str],
    config: SensorConfig,
    items: Sequence[CatalogItem],
    gdal_env: dict[str, str],
) -> StacListing:
    """The points' acquisitions among `items` (of the configuration's collection)."""
    window = select_items(items, config)
    if window and config.sensor == SENTINEL_1_SENSOR:
        assets = resolve_assets(bands, [c.item for c in window], config.collection)
        window = [c for c in window if carries_bands(c.item, bands, assets)]
    tree = shapely.STRtree([c.footprint or shapely.box(-180, -90, 180, 90) for c in window])
    listed = []
    for point in points:
        box = patch_geobox(point, config.patch_px, config.resolution_m)
        hits = tree.query(box.extent.to_crs("EPSG:4326").geom, "intersects") if window else []
        listed.append(group_acquisitions([window[h] for h in sorted(hits)]))
    return StacListing(
        points=tuple(points),
        config=config,
        items={c.item.id: c for c in window},
        gdal_env=gdal_env,
        acquisitions=tuple(listed),
    )


def group_acquisitions(items: Sequence[CatalogItem]) -> tuple[Acquisition, ...]:
    """Items as acquisitions: those of one UTC day (and orbit pass, where stated) are one,
    in date order."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for c in items:
        when = c.item.datetime or c.start
        day = (when.astimezone(UTC) if when.tzinfo else when).date().isoformat()
        orbit = str(c.item.properties.get(S1_STAC_ORBIT_STATE) or "").lower()
        groups[(day, orbit)].append(c.item.id)
    return tuple(
        Acquisition(day, tuple(sorted(ids)), orbit) for (day, orbit), ids in sorted(groups.items())
    )
