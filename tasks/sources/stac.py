"""What every STAC source shares (tasks/sources/stac_catalog.py: a static catalog;
tasks/sources/stac_api.py: a search API): from STAC items of Cloud-Optimized GeoTIFFs to
the points' patches.

Items are selected by window and cloud cover, bands resolved to assets, and the pixels read
with odc-stac on each point's own UTM grid: natively from the scenes of the point's own zone,
and from another zone's scenes (resampled) only where no own-zone scene has data; nodata and
Sentinel-2 scene classes are masked on the raw values, each item's offset is removed
(tasks/sources/sensors.py), and the per-pixel median is taken over the dates
(tasks/sources/pixels.py reads them).
"""

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from urllib.parse import urlsplit

import numpy as np
import pystac
import rasterio
import rasterio.cache
import rasterio.errors
import shapely

from tasks.plan.points import Point
from tasks.sources.failures import raise_classified, unreachable
from tasks.sources.pixels import PatchLoad, load_composite, plan_loads
from tasks.sources.redact import redact_urls
from tasks.sources.registry import ImagerySourceError, Patches, SensorConfig
from tasks.sources.sensors import (
    S1_INSTRUMENT_MODE,
    S1_STAC_INSTRUMENT_MODE,
    S1_STAC_ORBIT_STATE,
    S1_STAC_POLARISATIONS,
    SCL_ASSET_KEYS,
    SENSORS,
    SENTINEL_1_SENSOR,
)

COMPOSITES = ("median",)

# GDAL HTTP options: no directory listing on open (one HEAD instead of a listing per file),
# only .tif/.tiff taken for files. GDAL retries each range request itself on HTTP 429/5xx
# and dropped connections (5 times, 0.2 s apart, growing): a COG read is dozens of requests,
# so with request-level faults a whole-task retry alone would rarely get through. What still
# fails is classified and retried by Prefect with backoff (tasks/prefetch.py).
GDAL_HTTP_OPTIONS: dict[str, str] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff",
    "GDAL_HTTP_MAX_RETRY": "5",
    "GDAL_HTTP_RETRY_DELAY": "0.2",
}


@dataclass(frozen=True)
class CatalogItem:
    """A STAC item with its footprint (lon/lat) and its time interval, parsed once."""

    item: pystac.Item
    footprint: shapely.Geometry | None
    start: datetime
    end: datetime


def check_composite(config: SensorConfig) -> None:
    if config.composite not in COMPOSITES:
        raise ImagerySourceError(
            f"composite {config.composite!r} is not supported by the STAC sources; "
            f"use one of {COMPOSITES}"
        )


def composite_patches(
    points: Sequence[Point], bands: Sequence[str], config: SensorConfig, items: list[CatalogItem]
) -> Patches:
    """The points' patches from `items` (of the configuration's collection): the items of
    the window and below the cloud-cover limit are read, masked, harmonised and composited.
    Call it inside a rasterio.Env holding the GDAL options."""
    n = config.patch_px
    span = f"between {config.start} and {config.end}"
    window = select_items(items, config)
    loads, uncovered = plan_loads(points, window, config) if window else ([], [*range(len(points))])
    out = {b: np.full((len(points), n, n), np.nan, np.float32) for b in bands}
    dates = np.zeros(len(points), int)
    bytes_read = resampled = 0
    flags: dict[str, str] = {}  # item id -> why its pixels were dropped
    dropped: dict[int, list[str]] = defaultdict(list)  # point index -> items dropped under it
    if loads:
        read = [item for load in loads for item in load.items]
        assets = resolve_assets(bands, read, config.collection)
        if config.sensor == SENTINEL_1_SENSOR:
            loads = [radar_load(load, bands, assets) for load in loads]
            uncovered += [i for load in loads if not load.items for i, _, _ in load.members]
            loads = [load for load in loads if load.items]
        scl = scl_asset(read, config.collection)
        for load in loads:
            ids = [points[i].id for i, _, _ in load.members]
            loaded = load_composite(load, bands, assets, scl, ids, config)
            bytes_read += loaded.nbytes
            flags.update(loaded.flags)
            for i, row, col in load.members:
                dates[i] = loaded.dates
                dropped[i] += sorted(loaded.flags)
                resampled += bool(loaded.foreign[row : row + n, col : col + n].any())
                for b in bands:
                    out[b][i] = loaded.composite[b][row : row + n, col : col + n]

    limit = (
        f" of cloud cover {config.max_cloud_cover:g}% or less"
        if config.max_cloud_cover < 100
        else ""
    )
    notes = {
        points[i].id: f"no {config.collection} item{limit} {span} covers its {n} px patch"
        for i in uncovered
    }
    skip = set(uncovered)
    why = (
        "nodata or no signal"
        if config.sensor == SENTINEL_1_SENSOR
        else "nodata, cloud, shadow or cirrus"
    )
    for i, p in enumerate(points):
        if i not in skip and all(np.isnan(out[b][i]).all() for b in bands):
            notes[p.id] = (
                f"every pixel of its {n} px patch is masked ({why}) in the {dates[i]} "
                f"date(s) {span}"
            )
            if dropped[i]:
                notes[p.id] += "; dropped: " + "; ".join(
                    f"item {item}, {flags[item]}" for item in dropped[i]
                )
    return Patches(
        point_ids=tuple(p.id for p in points),
        bands=out,
        notes=notes,
        bytes_read=bytes_read,
        resampled=resampled,
        flags=flags,
    )


def select_items(items: Sequence[CatalogItem], config: SensorConfig) -> list[CatalogItem]:
    """The items of the configuration's window whose cloud cover is at most its limit (items
    that do not state their cloud cover are kept: their pixels are still masked one by one);
    for Sentinel-1, of its IW mode and of the configuration's orbit pass, where set."""
    start, end = time_window(config)
    sensor = SENSORS.get(config.sensor)
    prop = sensor.cloud_cover_property.get(config.source) if sensor else None
    selected = []
    for c in items:
        if not (c.start < end and c.end >= start):
            continue
        if config.sensor == SENTINEL_1_SENSOR and not radar_item(c.item, config):
            continue
        cover = c.item.properties.get(prop) if prop else None
        if isinstance(cover, int | float) and cover > config.max_cloud_cover:
            continue
        selected.append(c)
    return selected


def radar_item(item: pystac.Item, config: SensorConfig) -> bool:
    """Whether a Sentinel-1 item is of the IW mode and the configuration's orbit pass, as far
    as its sar: and sat: properties say (an item without them is kept)."""
    props = item.properties
    mode = props.get(S1_STAC_INSTRUMENT_MODE)
    state = props.get(S1_STAC_ORBIT_STATE)
    return (mode is None or mode == S1_INSTRUMENT_MODE) and (
        not config.orbit_pass or state is None or str(state).lower() == config.orbit_pass
    )


def radar_load(load: PatchLoad, bands: Sequence[str], assets: dict[str, str]) -> PatchLoad:
    """The load without the items that lack one of the bands (a VV-only scene among dual
    polarisation ones): by their sar:polarizations where they state them, else their assets."""
    return replace(load, items=tuple(i for i in load.items if carries_bands(i, bands, assets)))


def carries_bands(item: pystac.Item, bands: Sequence[str], assets: dict[str, str]) -> bool:
    """Whether a Sentinel-1 item carries every band: by its sar:polarizations where it
    states them, else by its assets."""
    pols = item.properties.get(S1_STAC_POLARISATIONS)
    if isinstance(pols, list):
        return all(b in pols for b in bands)
    return all(assets[b] in item.assets for b in bands)


def open_header(item: pystac.Item, key: str) -> None:
    """Open one asset and read its header: the cheapest proof that its pixels are readable.
    For the check before a run: an image host that cannot be reached at all (its name does
    not resolve, the connection is refused) is an ImagerySourceError naming the host; a
    timeout, a 429 or a 5xx stays a TransientSourceError (the run's retries may get through)."""
    href = item.assets[key].get_absolute_href() or item.assets[key].href
    what = f"reading the header of asset {key!r} of item {item.id} ({href})"
    try:
        with rasterio.open(href):
            return
    except (rasterio.errors.RasterioError, OSError) as e:
        reason = unreachable(e)
        if reason is None:
            raise_classified(e, what)
        error = ImagerySourceError(
            redact_urls(
                f"{what}: the image host {urlsplit(href).netloc} cannot be reached ({reason}); "
                "check the network (a firewall, a proxy) and the catalog's asset hrefs"
            )
        )
    raise error  # out of the except block: the failure, whose text holds the URL, stays out


def parse_item(item: pystac.Item, catalog: str) -> CatalogItem:
    start = item.common_metadata.start_datetime or item.datetime
    end = item.common_metadata.end_datetime or item.datetime
    if start is None or end is None:
        raise ImagerySourceError(
            f"item {item.id} of {catalog} has neither datetime nor start/end_datetime"
        )
    footprint = shapely.geometry.shape(item.geometry) if item.geometry else None
    return CatalogItem(item, footprint, start, end)


def time_window(config: SensorConfig) -> tuple[datetime, datetime]:
    """[start, end) in UTC for the inclusive ISO dates of the configuration."""
    try:
        first, last = date.fromisoformat(config.start), date.fromisoformat(config.end)
    except ValueError as e:
        raise ImagerySourceError(
            f"sensor configuration start={config.start!r} end={config.end!r}: "
            "both must be ISO dates (YYYY-MM-DD)"
        ) from e
    start = datetime.combine(first, time(), UTC)
    return start, datetime.combine(last + timedelta(days=1), time(), UTC)


def band_assets(band: str, item: pystac.Item) -> list[str]:
    """Keys of the item's assets that carry `band`: by key (B02, or its common name blue), or
    as the one band an asset's eo:bands lists, by name or common name."""
    common = next((s.bands[band].common_name for s in SENSORS.values() if band in s.bands), None)
    found = [key for key in item.assets if key in (band, common)]
    for key, asset in item.assets.items():
        eo_bands = asset.extra_fields.get("eo:bands") or asset.extra_fields.get("bands") or []
        if key in found or len(eo_bands) != 1 or not isinstance(eo_bands[0], dict):
            continue
        if eo_bands[0].get("name") == band or (
            common is not None and eo_bands[0].get("common_name") == common
        ):
            found.append(key)
    return found


def _is_geotiff(asset: pystac.Asset) -> bool:
    return "image/tiff" in (asset.media_type or "")


def resolve_assets(
    bands: Sequence[str], items: Sequence[pystac.Item], collection: str
) -> dict[str, str]:
    """Band name -> the one asset key that carries it in every item that has it. Where a band
    comes both as a GeoTIFF (a COG) and in another format (Earth Search's `blue` and
    `blue-jp2`), the GeoTIFF is taken: GDAL reads COGs by HTTP range requests."""
    assets: dict[str, str] = {}
    for band in bands:
        keys = {key for item in items for key in band_assets(band, item)}
        if not keys:
            available = sorted({key for item in items for key in item.assets})
            raise ImagerySourceError(
                f"band {band} is in no item of collection {collection!r}; its assets are "
                f"{available}: pick bands the collection has, or name the asset after the band"
            )
        if len(keys) > 1:
            tiffs = {
                key
                for item in items
                for key in keys
                if key in item.assets and _is_geotiff(item.assets[key])
            }
            keys = tiffs if len(tiffs) == 1 else keys
        if len(keys) > 1:
            raise ImagerySourceError(
                f"band {band} of collection {collection!r} matches several assets "
                f"{sorted(keys)}: name one asset after the band"
            )
        assets[band] = keys.pop()
    return assets


def scl_asset(items: Sequence[pystac.Item], collection: str) -> str | None:
    """The key of the items' scene classification asset (SCL, or scl), or None when no item
    has one. Raises ImagerySourceError when only some items have it."""
    keys = {key for item in items for key in SCL_ASSET_KEYS if key in item.assets}
    if not keys:
        return None
    key = min(keys)
    without = [item.id for item in items if key not in item.assets]
    if not without:
        return key
    raise ImagerySourceError(
        f"collection {collection!r}: some items carry an {key} asset and these do not: "
        f"{without[:5]}; cloud masking needs it on every item"
    )
