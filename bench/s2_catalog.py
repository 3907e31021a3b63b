"""A synthetic Sentinel-2 L2A scene as a static STAC catalog of COGs (for benchmarks).

`build_catalog` writes one item per date over a UTM box: B02, B03 and B04 as 10 m uint16
COGs and the scene classification (SCL) as a 20 m uint8 COG, as Sentinel-2 L2A products
carry them. The ground is a seeded map of four covers (water, vegetation, bare soil, built
up) at typical L2A reflectances (x 10,000), with texture and noise. Each date has its own
clouds, brighter than the ground, flagged in SCL (8, 9) with their shadows (3) darker; no
pixel is cloudy on every date, so every point gets a composite. The items say processing
baseline 05.10, so their digital numbers carry the +1000 offset that swath removes, and
state their cloud cover (`eo:cloud_cover`).
"""

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pystac
import rasterio
from affine import Affine
from odc.geo.geom import BoundingBox

COLLECTION = "sentinel-2-l2a"
BANDS = ("B02", "B03", "B04")
NODATA = 0
BOA_ADD_OFFSET = 1000  # in every L2A digital number from processing baseline 04.00 on
BASELINE = "05.10"
SCL_RES_M = 20.0

# Mean reflectance (x 10,000) of B02, B03, B04 and the SCL class of each cover; roughly
# the values of clear water, green crops, dry bare soil and roofs and roads in L2A scenes.
COVERS = {
    "water": ((450, 500, 300), 6),
    "vegetation": ((280, 550, 320), 4),
    "bare soil": ((900, 1150, 1400), 5),
    "built up": ((1100, 1150, 1200), 5),
}
COVER_SHARES = (0.08, 0.47, 0.37)  # water, vegetation, bare soil; the rest built up
CLOUD_DN = (4500, 4400, 4300)  # thick cloud, before the offset
SHADOW_FACTOR = 0.45  # cloud shadow darkens the ground
SHADOW_SHIFT_PX = 12  # at 20 m: shadows fall 240 m south-east of their clouds


@dataclass(frozen=True)
class Scene:
    """Where the catalog's rasters lie: a north-up 10 m grid in a UTM zone."""

    epsg: int
    west: float  # metres, multiples of 20 m
    north: float
    width: int  # 10 m pixels, even
    height: int

    @property
    def footprint(self) -> BoundingBox:
        south, east = self.north - 10 * self.height, self.west + 10 * self.width
        return BoundingBox(self.west, south, east, self.north, crs=f"EPSG:{self.epsg}")


def scene_over(epsg: int, bounds: tuple[float, float, float, float], margin_m: float) -> Scene:
    """The 10 m grid covering `bounds` (west, south, east, north in metres) and a margin,
    snapped outwards to the 20 m grid of SCL."""
    west, south, east, north = bounds
    step = SCL_RES_M
    w = math.floor((west - margin_m) / step) * step
    s = math.floor((south - margin_m) / step) * step
    e = math.ceil((east + margin_m) / step) * step
    n = math.ceil((north + margin_m) / step) * step
    return Scene(epsg, w, n, round((e - w) / 10), round((n - s) / 10))


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], cell_px: float) -> np.ndarray:
    """Gaussian noise on a grid of `cell_px`, interpolated bilinearly to `shape`."""
    h, w = shape
    coarse = rng.standard_normal((int(h / cell_px) + 2, int(w / cell_px) + 2))
    r, c = np.arange(h) / cell_px, np.arange(w) / cell_px
    r0, c0 = r.astype(int), c.astype(int)
    fr, fc = (r - r0)[:, None], (c - c0)[None, :]
    top = coarse[r0][:, c0] * (1 - fc) + coarse[r0][:, c0 + 1] * fc
    bottom = coarse[r0 + 1][:, c0] * (1 - fc) + coarse[r0 + 1][:, c0 + 1] * fc
    return top * (1 - fr) + bottom * fr


def ground(scene: Scene, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The clear-sky scene: (3, H, W) float32 reflectance x 10,000 and (H, W) SCL classes."""
    rng = np.random.default_rng(seed)
    shape = (scene.height, scene.width)
    landscape = smooth_field(rng, shape, 60) + 0.5 * smooth_field(rng, shape, 15)
    edges = np.quantile(landscape, np.cumsum(COVER_SHARES))
    cover = np.digitize(landscape, edges)
    means = np.array([m for m, _ in COVERS.values()], dtype=np.float32)  # (4, 3)
    classes = np.array([c for _, c in COVERS.values()], dtype=np.uint8)
    texture = 1 + 0.10 * smooth_field(rng, shape, 5)
    dn = np.empty((len(BANDS), *shape), dtype=np.float32)
    for b in range(len(BANDS)):
        noise = 1 + 0.03 * rng.standard_normal(shape)
        dn[b] = means[cover, b] * texture * noise
    return dn, classes[cover]


def shadow_of(cloud20: np.ndarray) -> np.ndarray:
    """Where the clouds of a 20 m mask cast their shadows (not under a cloud)."""
    return np.roll(cloud20, (SHADOW_SHIFT_PX, SHADOW_SHIFT_PX), axis=(0, 1)) & ~cloud20


def clouds(scene: Scene, seed: int, share: float, masked: np.ndarray | None) -> np.ndarray:
    """A 20 m cloud mask covering about `share` of the scene. Where `masked` (cloud or
    shadow on an earlier date) is set, neither these clouds nor their shadows fall."""
    rng = np.random.default_rng(seed)
    field = smooth_field(rng, (scene.height // 2, scene.width // 2), 25)
    cloud = field > np.quantile(field, 1 - share)
    if masked is None:
        return cloud
    shift = (-SHADOW_SHIFT_PX, -SHADOW_SHIFT_PX)
    return cloud & ~masked & ~np.roll(masked, shift, axis=(0, 1))


def date_rasters(
    dn: np.ndarray, scl: np.ndarray, cloud20: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One date: (3, H, W) uint16 digital numbers (offset added) and (H/2, W/2) SCL."""
    shadow20 = shadow_of(cloud20)
    scl20 = scl[::2, ::2].copy()
    scl20[shadow20] = 3
    scl20[cloud20] = 9
    scl20[cloud20 & ~np.roll(cloud20, 2, axis=0)] = 8  # the northern rim: medium probability

    def at10(mask: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(mask, 2, axis=0), 2, axis=1)

    out = dn.copy()
    out[:, at10(shadow20)] *= SHADOW_FACTOR
    cloud10 = at10(cloud20)
    for b, value in enumerate(CLOUD_DN):
        out[b][cloud10] = value
    raw = np.clip(np.round(out) + BOA_ADD_OFFSET, 1, 65535).astype(np.uint16)
    return raw, scl20


def write_cog(path: Path, data: np.ndarray, scene: Scene, res: float) -> None:
    profile = {
        "driver": "COG",
        "width": data.shape[1],
        "height": data.shape[0],
        "count": 1,
        "dtype": data.dtype.name,
        "crs": f"EPSG:{scene.epsg}",
        "transform": Affine(res, 0, scene.west, 0, -res, scene.north),
        "nodata": NODATA,
        "compress": "DEFLATE",
        "predictor": 2,
        "blocksize": 256,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)


def build_catalog(root: Path, scene: Scene, dates: list[datetime], *, seed: int = 0) -> Path:
    """Write the catalog under `root` (one item per date) and return its catalog.json."""
    dn, scl = ground(scene, seed)
    lonlat = scene.footprint.polygon.to_crs("EPSG:4326", resolution=500.0)
    catalog = pystac.Catalog(id="swath-bench-s2", description="synthetic Sentinel-2 L2A scene")
    masked: np.ndarray | None = None  # cloud or shadow on an earlier date
    for k, when in enumerate(dates):
        cloud20 = clouds(scene, seed + 100 + k, 0.15 if k == 0 else 0.04, masked)
        here = cloud20 | shadow_of(cloud20)
        masked = here if masked is None else masked | here
        raw, scl20 = date_rasters(dn, scl, cloud20)
        item = pystac.Item(
            id=f"S2A_SYNTH_{when:%Y%m%d}",
            geometry=lonlat.json,
            bbox=list(lonlat.boundingbox),
            datetime=when.astimezone(UTC),
            properties={
                "eo:cloud_cover": round(100 * float(cloud20.mean()), 2),
                "s2:processing_baseline": BASELINE,
                "platform": "sentinel-2a",
            },
            collection=COLLECTION,
        )
        folder = root / item.id
        folder.mkdir(parents=True)
        for b, band in enumerate(BANDS):
            write_cog(folder / f"{band}.tif", raw[b], scene, 10.0)
            _add_asset(item, band, folder / f"{band}.tif", "uint16")
        write_cog(folder / "SCL.tif", scl20, scene, SCL_RES_M)
        _add_asset(item, "SCL", folder / "SCL.tif", "uint8")
        catalog.add_item(item)
    catalog.normalize_hrefs(str(root))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return root / "catalog.json"


def _add_asset(item: pystac.Item, name: str, path: Path, dtype: str) -> None:
    asset = pystac.Asset(str(path), media_type=pystac.MediaType.COG, roles=["data"])
    asset.extra_fields["eo:bands"] = [{"name": name}]
    asset.extra_fields["raster:bands"] = [{"nodata": NODATA, "data_type": dtype}]
    item.add_asset(name, asset)
