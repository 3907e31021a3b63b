"""STAC/COG imagery source: patches from a static STAC catalog of Cloud-Optimized GeoTIFFs.

Reads the catalog with pystac and the pixels with odc-stac on each point's own UTM grid,
masks nodata and Sentinel-2 scene classes, and takes a per-pixel median over the dates.
"""

import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import numpy as np
import odc.stac
import pystac
import rasterio
import rasterio.cache
import rasterio.errors
import shapely
from affine import Affine
from odc.geo.geobox import GeoBox

from tasks.plan import Point
from tasks.sensors import BANDS, SCL_ASSET, SCL_MASKED_CLASSES
from tasks.sources import (
    ImagerySourceError,
    Patches,
    SensorConfig,
    classify_error,
)

COMPOSITES = ("median",)

# A group of points is loaded as one raster when the box around all its patches is at most
# this many times the patches' own area; beyond that, reading the gaps costs more than the
# extra requests of one load per patch.
UNION_MAX_AREA_RATIO = 4.0

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


@dataclass(frozen=True)
class PatchLoad:
    """One odc-stac load: a pixel grid, the items to read and where each patch sits in it."""

    geobox: GeoBox
    items: tuple[pystac.Item, ...]
    members: tuple[tuple[int, int, int], ...]  # (point index, row, col) of each patch


class StacSource:
    """An ImagerySource over a static STAC catalog (local path or http(s) URL of catalog.json).

    The catalog is read once per source instance and kept; one instance may serve several
    threads.
    """

    def __init__(self, *, http_timeout_s: int = 30) -> None:
        self._gdal_env = {
            **GDAL_HTTP_OPTIONS,
            "GDAL_HTTP_TIMEOUT": str(http_timeout_s),
            "GDAL_HTTP_CONNECTTIMEOUT": str(http_timeout_s),
        }
        self._catalogs: dict[str, list[CatalogItem]] = {}
        self._lock = threading.Lock()

    def fetch(self, points: Sequence[Point], bands: Sequence[str], config: SensorConfig) -> Patches:
        if config.composite not in COMPOSITES:
            raise ImagerySourceError(
                f"composite {config.composite!r} is not supported by the STAC source; "
                f"use one of {COMPOSITES}"
            )
        items = self._collection(config)
        assets = resolve_assets(bands, [c.item for c in items], config.collection)
        use_scl = _uses_scl([c.item for c in items], config.collection)
        start, end = time_window(config)
        window = [c for c in items if c.start < end and c.end >= start]
        loads, uncovered = plan_loads(points, window, config)

        n = config.patch_px
        out = {b: np.full((len(points), n, n), np.nan, np.float32) for b in bands}
        dates = np.zeros(len(points), int)
        with rasterio.Env(**self._gdal_env):
            for load in loads:
                ids = [points[i].id for i, _, _ in load.members]
                composite, n_dates = load_composite(load, bands, assets, use_scl, ids)
                for i, row, col in load.members:
                    dates[i] = n_dates
                    for b in bands:
                        out[b][i] = composite[b][row : row + n, col : col + n]

        span = f"between {config.start} and {config.end}"
        notes = {
            points[i].id: f"no {config.collection} item {span} covers its {n} px patch"
            for i in uncovered
        }
        skip = set(uncovered)
        for i, p in enumerate(points):
            if i not in skip and all(np.isnan(out[b][i]).all() for b in bands):
                notes[p.id] = (
                    f"every pixel of its {n} px patch is masked (nodata, cloud, shadow or "
                    f"cirrus) in the {dates[i]} date(s) {span}"
                )
        return Patches(point_ids=tuple(p.id for p in points), bands=out, notes=notes)

    def check(self, bands: Sequence[str], config: SensorConfig) -> None:
        """Fail now, before anything is written, when this configuration cannot work: the
        catalog opens, holds the collection, every band has an asset, and one asset's header
        reads. Raises ImagerySourceError or TransientSourceError."""
        items = self._collection(config)
        assets = resolve_assets(bands, [c.item for c in items], config.collection)
        _uses_scl([c.item for c in items], config.collection)
        first = items[0].item
        key = assets[bands[0]]
        href = first.assets[key].get_absolute_href() or first.assets[key].href
        what = f"reading the header of asset {key!r} of item {first.id} ({href})"
        try:
            with rasterio.Env(**self._gdal_env), rasterio.open(href):
                pass
        except (rasterio.errors.RasterioError, OSError) as e:
            raise classify_error(e, what) from e

    def _collection(self, config: SensorConfig) -> list[CatalogItem]:
        with self._lock:
            if config.catalog not in self._catalogs:
                self._catalogs[config.catalog] = read_catalog(config.catalog)
            items = self._catalogs[config.catalog]
        selected = [c for c in items if c.item.collection_id == config.collection]
        if not selected:
            found = sorted({str(c.item.collection_id) for c in items})
            raise ImagerySourceError(
                f"catalog {config.catalog} has no item in collection {config.collection!r}; "
                f"its collections are {found}: fix the collection in the sensor configuration"
            )
        return selected


def read_catalog(href: str) -> list[CatalogItem]:
    """Every item of a static catalog (or collection), with its footprint and time interval."""
    try:
        root = pystac.read_file(href)
        if not isinstance(root, pystac.Catalog):
            raise ImagerySourceError(f"{href} is a STAC {root.STAC_OBJECT_TYPE}, not a catalog")
        items = list(root.get_items(recursive=True))
    except ImagerySourceError:
        raise
    except Exception as e:  # pystac raises a bare Exception for HTTP errors: classify them all
        raise classify_error(e, f"reading the STAC catalog {href}") from e
    return [_parse_item(item, href) for item in items]


def _parse_item(item: pystac.Item, catalog: str) -> CatalogItem:
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
    """Keys of the item's assets that carry `band`: by key, by common name, by eo:bands name."""
    common = BANDS[band].common_name if band in BANDS else None
    found = [key for key in item.assets if key in (band, common)]
    for key, asset in item.assets.items():
        eo_bands = asset.extra_fields.get("eo:bands") or asset.extra_fields.get("bands") or []
        if key not in found and any(b.get("name") == band for b in eo_bands):
            found.append(key)
    return found


def resolve_assets(
    bands: Sequence[str], items: Sequence[pystac.Item], collection: str
) -> dict[str, str]:
    """Band name -> the one asset key that carries it in every item that has it."""
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
            raise ImagerySourceError(
                f"band {band} of collection {collection!r} matches several assets "
                f"{sorted(keys)}: name one asset after the band"
            )
        assets[band] = keys.pop()
    return assets


def _uses_scl(items: Sequence[pystac.Item], collection: str) -> bool:
    without = [item.id for item in items if SCL_ASSET not in item.assets]
    if len(without) in (0, len(items)):
        return not without
    raise ImagerySourceError(
        f"collection {collection!r}: some items carry an {SCL_ASSET} asset and these do not: "
        f"{without[:5]}; cloud masking needs it on every item"
    )


def patch_geobox(point: Point, patch_px: int, resolution_m: float) -> GeoBox:
    """The N x N north-up grid centred on the point, on its UTM grid."""
    half = patch_px * resolution_m / 2
    affine = Affine(resolution_m, 0.0, point.x - half, 0.0, -resolution_m, point.y + half)
    return GeoBox((patch_px, patch_px), affine, f"EPSG:{point.epsg}")


def _phase(origin: float, resolution_m: float) -> float:
    """Where a grid origin falls within a pixel (0..1): grids of equal phase line up."""
    return round((origin / resolution_m) % 1.0, 6) % 1.0


def plan_loads(
    points: Sequence[Point], window: Sequence[CatalogItem], config: SensorConfig
) -> tuple[list[PatchLoad], list[int]]:
    """Group points into loads; return the loads and the indices of points no item covers.

    Points that share a UTM zone, a pixel phase and the same items are loaded as one raster
    when their patches lie close together (see UNION_MAX_AREA_RATIO), else one by one.
    """
    n, res = config.patch_px, config.resolution_m
    tree = shapely.STRtree([c.footprint or shapely.box(-180, -90, 180, 90) for c in window])
    groups: dict[tuple[Any, ...], list[tuple[int, GeoBox]]] = defaultdict(list)
    uncovered = []
    for i, point in enumerate(points):
        box = patch_geobox(point, n, res)
        hits = tuple(sorted(tree.query(box.extent.to_crs("EPSG:4326").geom, "intersects")))
        if not hits:
            uncovered.append(i)
            continue
        key = (point.epsg, _phase(box.affine.c, res), _phase(box.affine.f, res), hits)
        groups[key].append((i, box))

    loads = []
    for (_, _, _, hits), members in groups.items():
        items = tuple(window[h].item for h in hits)
        loads.extend(_group_loads(members, items, n, res))
    return loads, uncovered


def _group_loads(
    members: list[tuple[int, GeoBox]], items: tuple[pystac.Item, ...], n: int, res: float
) -> list[PatchLoad]:
    x0 = min(box.affine.c for _, box in members)
    y0 = max(box.affine.f for _, box in members)
    cells = [
        (i, round((y0 - box.affine.f) / res), round((box.affine.c - x0) / res))
        for i, box in members
    ]
    height = max(row for _, row, _ in cells) + n
    width = max(col for _, _, col in cells) + n
    if len(members) == 1 or height * width > UNION_MAX_AREA_RATIO * len(members) * n * n:
        return [PatchLoad(box, items, ((i, 0, 0),)) for i, box in members]
    crs = members[0][1].crs
    union = GeoBox((height, width), Affine(res, 0.0, x0, 0.0, -res, y0), crs)
    return [PatchLoad(union, items, tuple(cells))]


def load_composite(
    load: PatchLoad,
    bands: Sequence[str],
    assets: dict[str, str],
    use_scl: bool,
    point_ids: Sequence[str],
) -> tuple[dict[str, np.ndarray], int]:
    """Read a load's bands on its grid, mask, and take the per-pixel median over its dates.

    Returns band -> (height, width) float32 with NaN where no date has a valid pixel, and the
    number of dates read.
    """
    keys = [assets[b] for b in bands] + ([SCL_ASSET] if use_scl else [])
    hrefs = [str(item.assets[key].get_absolute_href()) for item in load.items for key in keys]
    more = f" and {len(hrefs) - 3} more" if len(hrefs) > 3 else ""
    what = (
        f"reading assets {keys} of items {[item.id for item in load.items]} "
        f"({', '.join(hrefs[:3])}{more}) for points {point_ids[0]}..{point_ids[-1]}"
    )
    try:
        ds = odc.stac.load(
            load.items,
            bands=keys,
            geobox=load.geobox,
            resampling="nearest",
            dtype="float32",
            nodata=np.nan,  # output fill: source nodata and areas no item covers become NaN
            chunks=None,
            groupby="solar_day",
            fail_on_error=True,
        )
    except (rasterio.errors.RasterioError, OSError) as e:
        # GDAL remembers failed HTTP responses: forget them so that a retry asks again
        for href in hrefs:
            rasterio.cache.invalidate(href)
        raise classify_error(e, what) from e

    valid = np.ones((ds.sizes["time"], *load.geobox.shape), bool)
    if use_scl:
        scl = ds[SCL_ASSET].values
        valid = np.isfinite(scl) & ~np.isin(scl, SCL_MASKED_CLASSES)
    composite = {}
    for band in bands:
        values = ds[assets[band]].values.astype(np.float32, copy=False)
        declared = _declared_nodata(load.items, assets[band])
        masked = ~valid | np.isin(values, declared)
        composite[band] = nanmedian_over_time(np.where(masked, np.float32(np.nan), values))
    return composite, ds.sizes["time"]


def _declared_nodata(items: Iterable[pystac.Item], key: str) -> list[float]:
    """Nodata values the items' metadata declares for an asset (raster:bands, bands, asset)."""
    values = set()
    for item in items:
        fields = item.assets[key].extra_fields
        bands = fields.get("raster:bands") or fields.get("bands") or []
        for value in [fields.get("nodata"), *(b.get("nodata") for b in bands)]:
            if value is not None and not np.isnan(float(value)):
                values.add(float(value))
    return sorted(values)


def nanmedian_over_time(stack: np.ndarray) -> np.ndarray:
    """Per-pixel median over axis 0, ignoring NaN; NaN where every date is NaN.

    Equal to np.nanmedian(stack, axis=0) without its all-NaN warning (np.sort puts NaN last).
    """
    valid = np.isfinite(stack).sum(axis=0)
    ordered = np.sort(stack, axis=0)
    lo = np.take_along_axis(ordered, np.maximum(valid - 1, 0)[None] // 2, axis=0)[0]
    hi = np.take_along_axis(ordered, (valid // 2)[None], axis=0)[0]
    median = (lo + hi) / np.float32(2)
    return np.where(valid > 0, median, np.float32(np.nan)).astype(np.float32)
