"""What every STAC source shares (tasks/sources/stac_catalog.py: a static catalog;
tasks/sources/stac_api.py: a search API): from STAC items of Cloud-Optimized GeoTIFFs to
the points' patches.

Items are selected by window and cloud cover, bands resolved to assets, and the pixels read
with odc-stac on each point's own UTM grid: natively from the scenes of the point's own zone,
and from another zone's scenes (resampled) only where no own-zone scene has data; nodata and
Sentinel-2 scene classes are masked on the raw values, each item's offset is removed
(tasks/sources/sensors.py), and the per-pixel median is taken over the dates.
"""

import functools
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, NoReturn
from urllib.parse import urlsplit

import numpy as np
import odc.stac
import pystac
import rasterio
import rasterio.cache
import rasterio.errors
import shapely
from affine import Affine
from odc.geo.geobox import GeoBox

from tasks.plan.points import Point
from tasks.sources import sensors
from tasks.sources.plausibility import drop_implausible, items_by_date
from tasks.sources.redact import holds_secret, redact_urls
from tasks.sources.registry import (
    ImagerySourceError,
    Patches,
    SensorConfig,
    TransientSourceError,
    classify_error,
    error_chain,
    patch_corner,
    unreachable,
)
from tasks.sources.sensors import BANDS, SCL_ASSET_KEYS, SCL_MASKED_CLASSES, SENSORS, dn_offset

COMPOSITES = ("median",)

Corner = tuple[int, float, float]  # a patch's index and top-left corner (x, y), in metres
Cells = tuple[tuple[int, int, int], ...]  # each patch's (index, row, col) in a box

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
    members: Cells  # (point index, row, col) of each patch


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
    for i, p in enumerate(points):
        if i not in skip and all(np.isnan(out[b][i]).all() for b in bands):
            notes[p.id] = (
                f"every pixel of its {n} px patch is masked (nodata, cloud, shadow or "
                f"cirrus) in the {dates[i]} date(s) {span}"
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
    that do not state their cloud cover are kept: their pixels are still masked one by one)."""
    start, end = time_window(config)
    sensor = SENSORS.get(config.sensor)
    prop = sensor.cloud_cover_property.get(config.source) if sensor else None
    selected = []
    for c in items:
        if not (c.start < end and c.end >= start):
            continue
        cover = c.item.properties.get(prop) if prop else None
        if isinstance(cover, int | float) and cover > config.max_cloud_cover:
            continue
        selected.append(c)
    return selected


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


def raise_classified(error: BaseException, what: str) -> NoReturn:
    """Raise `error` classified (transient or not), with URL query strings redacted. When the
    redaction changed the message the cause is dropped, since its text holds the secret."""
    classified = classify_error(error, what)
    message = redact_urls(str(classified))
    if message == str(classified):
        raise classified from error
    raise type(classified)(f"{message} ({CAUSE_NOT_SHOWN})") from None


CAUSE_NOT_SHOWN = "cause not shown: it holds a signed URL"


def without_secrets(error: Exception) -> Exception | None:
    """None when neither `error` nor what it was raised from or during names a signed URL;
    else the error again, its text redacted and with no cause: a source's own error keeps
    its type, any other is classified (transient or not) first."""
    if not any(holds_secret(f"{e!s} {e!r}") for e in error_chain(error)):
        return None
    if isinstance(error, ImagerySourceError | TransientSourceError):
        kind: type[Exception] = type(error)
        message = str(error)
    else:
        classified = classify_error(error, "reading imagery")
        kind, message = type(classified), str(classified)
    note = "" if CAUSE_NOT_SHOWN in message else f" ({CAUSE_NOT_SHOWN})"
    return kind(f"{redact_urls(message)}{note}")


def keeps_secrets[**P, R](method: Callable[P, R]) -> Callable[P, R]:
    """A source's method whose errors leave it without signed URLs (`without_secrets`): the
    new error is raised outside the handler, so it carries neither cause nor context."""

    @functools.wraps(method)
    def redacting(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except Exception as e:
            clean = without_secrets(e)
            if clean is None:
                raise
        raise clean

    return redacting


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
    common = BANDS[band].common_name if band in BANDS else None
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


def patch_geobox(point: Point, patch_px: int, resolution_m: float) -> GeoBox:
    """The N x N north-up grid centred on the point, on its UTM grid (registry.patch_corner:
    a tie between pixels goes to the one south-east of the point)."""
    x0, y0 = patch_corner(point.x, point.y, patch_px, resolution_m)
    affine = Affine(resolution_m, 0.0, x0, 0.0, -resolution_m, y0)
    return GeoBox((patch_px, patch_px), affine, f"EPSG:{point.epsg}")


def pixel_phase(origin: float, resolution_m: float) -> float:
    """Where a grid origin falls within a pixel (0..1): grids of equal phase line up."""
    return round((origin / resolution_m) % 1.0, 6) % 1.0


def union_box(
    corners: Sequence[Corner], n: int, res: float
) -> tuple[float, float, Cells, int, int]:
    """The box around N x N patches of one pixel grid: its top-left corner (x, y), each
    patch's (index, row, col) in it, in index order, and its height and width in pixels."""
    left, top = min(x for _, x, _ in corners), max(y for _, _, y in corners)
    cells = tuple(
        (i, round((top - y) / res), round((x - left) / res)) for i, x, y in sorted(corners)
    )
    height = max(row for _, row, _ in cells) + n
    width = max(col for _, _, col in cells) + n
    return left, top, cells, height, width


def read_together(corners: Sequence[Corner], n: int, res: float) -> bool:
    """Whether the patches are read as one box: one patch, or a box of at most
    UNION_MAX_AREA_RATIO times the patches' own pixels."""
    *_, height, width = union_box(corners, n, res)
    return len(corners) == 1 or height * width <= UNION_MAX_AREA_RATIO * len(corners) * n * n


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
        key = (point.epsg, pixel_phase(box.affine.c, res), pixel_phase(box.affine.f, res), hits)
        groups[key].append((i, box))

    loads = []
    for (_, _, _, hits), members in groups.items():
        items = tuple(window[h].item for h in hits)
        loads.extend(_group_loads(members, items, n, res))
    return loads, uncovered


def _group_loads(
    members: list[tuple[int, GeoBox]], items: tuple[pystac.Item, ...], n: int, res: float
) -> list[PatchLoad]:
    corners = [(i, box.affine.c, box.affine.f) for i, box in members]
    if len(members) == 1 or not read_together(corners, n, res):
        return [PatchLoad(box, items, ((i, 0, 0),)) for i, box in members]
    x0, y0, cells, height, width = union_box(corners, n, res)
    crs = members[0][1].crs
    union = GeoBox((height, width), Affine(res, 0.0, x0, 0.0, -res, y0), crs)
    return [PatchLoad(union, items, cells)]


@dataclass
class Loaded:
    """A load's composite (band -> (height, width) float32, NaN where no date has a valid
    pixel), its dates read, the bytes of pixels read, the items whose pixels were dropped
    because they contradict their offset metadata (item id -> why), and which pixels were
    resampled from another zone's scenes."""

    composite: dict[str, np.ndarray]
    dates: int
    nbytes: int
    flags: dict[str, str]
    foreign: np.ndarray  # (height, width): the pixels that came from another UTM zone


def load_composite(
    load: PatchLoad,
    bands: Sequence[str],
    assets: dict[str, str],
    scl: str | None,
    point_ids: Sequence[str],
    config: SensorConfig,
) -> Loaded:
    """Read a load's bands on its grid, mask, harmonise, check, and take the per-pixel median
    over its dates.

    The scenes of the grid's own UTM zone are read first, natively; scenes of another zone
    (resampled, nearest) only where the patches have pixels that no own-zone scene has data
    for, and only into those pixels, zone by zone in EPSG order: so each pixel's median is
    over the scenes of one zone, whatever the order of the items. Within a zone, items are
    read in groups of equal offset (tasks/sources/sensors.py dn_offset), since odc-stac merges
    the items of a solar day: each group is masked on its raw values (SCL classes, declared
    nodata, the sensor's own nodata), then its offset is added, so items on both sides of
    Sentinel-2's baseline 04.00 composite on one scale. Each date is then checked against the
    offset removed from it (tasks/sources/plausibility.py); a date whose pixels contradict it
    is dropped.
    """
    own = load.geobox.crs.epsg if load.geobox.crs is not None else None
    zones: dict[int | None, list[pystac.Item]] = defaultdict(list)
    for item in load.items:
        epsg = item_epsg(item, assets.values())
        zones[None if epsg == own else epsg].append(item)
    n = config.patch_px
    needed = np.zeros(load.geobox.shape, bool)
    for _, row, col in load.members:
        needed[row : row + n, col : col + n] = True
    covered = np.zeros(load.geobox.shape, bool)
    foreign = np.zeros(load.geobox.shape, bool)
    stacks: dict[str, list[np.ndarray]] = {b: [] for b in bands}
    n_dates = nbytes = 0
    flags: dict[str, str] = {}
    for zone in sorted(zones, key=lambda z: -1 if z is None else z):
        if zone is not None and not (needed & ~covered).any():
            break  # the own zone has every pixel: other zones are not read
        read = _read_zone(load, zones[zone], bands, assets, scl, point_ids, config)
        n_dates, nbytes = n_dates + read.dates, nbytes + read.nbytes
        flags |= read.flags
        fills = read.data & ~covered
        for band in bands:
            stacks[band] += [np.where(fills, v, np.float32(np.nan)) for v in read.stacks[band]]
        if zone is not None:
            foreign |= fills
        covered |= read.data
    composite = {b: nanmedian_over_time(np.concatenate(stacks[b])) for b in bands}
    return Loaded(composite, n_dates, nbytes, flags, foreign)


@dataclass(frozen=True)
class ZoneRead:
    """The scenes of one zone on a load's grid: band -> (dates, height, width) masked and
    harmonised, the pixels any of them has data for (before masking clouds), dates, bytes,
    and the items dropped as implausible (item id -> why)."""

    stacks: dict[str, list[np.ndarray]]
    data: np.ndarray
    dates: int
    nbytes: int
    flags: dict[str, str]


def _read_zone(
    load: PatchLoad,
    items: Sequence[pystac.Item],
    bands: Sequence[str],
    assets: dict[str, str],
    scl: str | None,
    point_ids: Sequence[str],
    config: SensorConfig,
) -> ZoneRead:
    groups: dict[tuple[float, ...], list[pystac.Item]] = defaultdict(list)
    for item in items:
        offsets = tuple(
            dn_offset(config.sensor, item.properties, item.assets[assets[b]].extra_fields)
            for b in bands
        )
        groups[offsets].append(item)
    stacks: dict[str, list[np.ndarray]] = {b: [] for b in bands}
    data = np.zeros(load.geobox.shape, bool)
    n_dates = nbytes = 0
    flags: dict[str, str] = {}
    for offsets, members in groups.items():
        days: dict[str, Any] = {}
        keys = [assets[b] for b in bands] + ([scl] if scl else [])
        ds = _load(load.geobox, members, keys, point_ids, days)
        n_dates += ds.sizes["time"]
        nbytes += sum(int(ds[key].nbytes) for key in ds.data_vars)
        valid = np.ones((ds.sizes["time"], *load.geobox.shape), bool)
        bright = np.zeros_like(valid)
        if scl:
            classes = ds[scl].values
            valid = np.isfinite(classes) & ~np.isin(classes, SCL_MASKED_CLASSES)
            bright = classes == sensors.SCL_SNOW_CLASS
        harmonised = {}
        for band, offset in zip(bands, offsets, strict=True):
            values = ds[assets[band]].values.astype(np.float32, copy=False)
            declared = _declared_nodata(members, assets[band]) + list(
                sensors.nodata_dn(config.sensor)
            )
            nodata = ~np.isfinite(values) | np.isin(values, declared)
            data |= (~nodata).any(axis=0)
            masked = ~valid | nodata
            harmonised[band] = np.where(masked, np.float32(np.nan), values + np.float32(offset))
        if config.sensor == sensors.SENTINEL_2_L2A.name:
            removed = dict(zip(bands, offsets, strict=True))
            dates = items_by_date(members, days)
            flags |= drop_implausible(harmonised, bright, dates, removed, assets)
        for band in bands:
            stacks[band].append(harmonised[band])
    return ZoneRead(stacks, data, n_dates, nbytes, flags)


def item_epsg(item: pystac.Item, asset_keys: Iterable[str]) -> int | None:
    """The EPSG code of an item's pixels as its metadata declares it (the projection
    extension's proj:code or proj:epsg, on the item or on the named assets); None when it
    declares none (such an item is read as one of the grid's own zone)."""
    for fields in (
        item.properties,
        *(item.assets[k].extra_fields for k in asset_keys if k in item.assets),
    ):
        code, epsg = fields.get("proj:code"), fields.get("proj:epsg")
        if isinstance(code, str) and code.upper().startswith("EPSG:") and code[5:].isdigit():
            return int(code[5:])
        if isinstance(epsg, int):
            return epsg
    return None


def _load(
    geobox: GeoBox,
    items: Sequence[pystac.Item],
    keys: list[str],
    point_ids: Sequence[str],
    days: dict[str, Any],
) -> Any:
    """odc.stac.load of `keys` of `items` on `geobox`, as float32, one time step a solar day
    (odc-stac's own solar day, at the grid's middle longitude); `days` gets each item's."""
    ((mid_lon, _),) = geobox.extent.centroid.to_crs("EPSG:4326").points

    def solar_day(item: pystac.Item, parsed: Any, _: int) -> Any:
        days[item.id] = day = parsed.solar_date_at(mid_lon).date()
        return day

    hrefs = [str(item.assets[key].get_absolute_href()) for item in items for key in keys]
    more = f" and {len(hrefs) - 3} more" if len(hrefs) > 3 else ""
    what = (
        f"reading assets {keys} of items {[item.id for item in items]} "
        f"({', '.join(hrefs[:3])}{more}) for points {point_ids[0]}..{point_ids[-1]}"
    )
    try:
        return odc.stac.load(
            items,
            bands=keys,
            geobox=geobox,
            resampling="nearest",
            dtype="float32",
            nodata=np.nan,  # output fill: source nodata and areas no item covers become NaN
            chunks=None,
            groupby=solar_day,
            fail_on_error=True,
        )
    except (rasterio.errors.RasterioError, OSError) as e:
        # GDAL remembers failed HTTP responses: forget them so that a retry asks again
        for href in hrefs:
            rasterio.cache.invalidate(href)
        raise_classified(e, what)


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
