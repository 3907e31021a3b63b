"""Reading the points' patches from STAC items: each patch's N x N grid on its point's UTM
grid, which patches are read together as one raster, and the odc-stac loads of a load's
scenes, zone by zone, masked and harmonised, down to the per-pixel median over the dates
(tasks/sources/stac.py selects the items and assembles the patches).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import odc.stac
import pystac
import rasterio.cache
import rasterio.errors
import shapely
from affine import Affine
from odc.geo.geobox import GeoBox

from tasks.plan.points import Point
from tasks.sources import sensors
from tasks.sources.failures import raise_classified
from tasks.sources.plausibility import drop_implausible, items_by_date
from tasks.sources.registry import SensorConfig, patch_corner
from tasks.sources.sensors import SCL_MASKED_CLASSES, dn_offset

if TYPE_CHECKING:
    from tasks.sources.stac import CatalogItem

Corner = tuple[int, float, float]  # a patch's index and top-left corner (x, y), in metres
Cells = tuple[tuple[int, int, int], ...]  # each patch's (index, row, col) in a box

# A group of points is loaded as one raster when the box around all its patches is at most
# this many times the patches' own area; beyond that, reading the gaps costs more than the
# extra requests of one load per patch.
UNION_MAX_AREA_RATIO = 4.0


@dataclass(frozen=True)
class PatchLoad:
    """One odc-stac load: a pixel grid, the items to read and where each patch sits in it."""

    geobox: GeoBox
    items: tuple[pystac.Item, ...]
    members: Cells  # (point index, row, col) of each patch


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
            if config.sensor == sensors.SENTINEL_1_SENSOR:
                values, floor = linear_to_db(values)
                nodata |= floor
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


def linear_to_db(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sentinel-1 backscatter in linear power -> dB (10 log10, float32), and where it is no
    signal: at or below sensors.S1_DB_FLOOR, zero or negative (border noise, fill). Each date
    is converted before the median, so the composite is the median in dB, as Earth Engine's
    median of its dB collection is (the two differ for an even number of dates otherwise)."""
    positive = values > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        db = (np.float32(10) * np.log10(np.where(positive, values, np.float32(1)))).astype(
            np.float32
        )
    return db, ~positive | (db <= np.float32(sensors.S1_DB_FLOOR))


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
