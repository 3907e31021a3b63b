"""Small Tessera Zarr stores in geotessera's layout, laid out by geotessera's own `init_store`.

`build_tessera_store` writes seeded int8 embeddings and float32 scales (2024 only) into a
square window around a centre, in every zone the tiles fall in, each zone only on its own
side of a zone boundary, as Tessera's tiles are. An optional block is water (NaN scales).
The rest of each zone's grid is unwritten (+inf scales: land without data), and the year
2023 holds no data at all.

SEAM: two 0.1-degree tiles meeting at the UTM seam at 6 degrees E (zones 31 and 32), near
52.05 N, with water south-west of the centre. DEMO: one tile over the demo's Sentinel-2
sample in Patagonia (zone 19 south), for exports together with on-the-fly models.
"""

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import zarr
from pyproj import Transformer

from tasks.sources.registry import patch_corner

YEAR = 2024


@dataclass(frozen=True)
class Layout:
    tiles: tuple[tuple[float, float], ...]  # tile centres (lon, lat)
    centre: tuple[float, float]  # of the written window (lon, lat)
    half_m: float  # half the window's side, metres
    water: tuple[float, float] | None = None  # water south of lat and west of lon


SEAM_LON = 6.0
SEAM = Layout(((5.95, 52.05), (6.05, 52.05)), (SEAM_LON, 52.05), 1600, water=(52.046, 5.99))
DEMO = Layout(((-67.65, -47.85),), (-67.643, -47.8545), 2000)


@dataclass
class Zone:
    epsg: int
    x: np.ndarray  # pixel centres
    y: np.ndarray
    embeddings: np.ndarray  # (128, H, W) int8 for YEAR (whole grid window as written)
    scales: np.ndarray  # (H, W) float32; the grid's (row0, col0) is where the window starts
    row0: int
    col0: int

    def pixel(self, e: float, n: float) -> tuple[int, int] | None:
        """The written window's (row, col) of the pixel containing (e, n), or None."""
        col = int(np.floor((e - (self.x[0] - 5.0)) / 10.0)) - self.col0
        row = int(np.floor(((self.y[0] + 5.0) - n) / 10.0)) - self.row0
        h, w = self.scales.shape
        return (row, col) if 0 <= row < h and 0 <= col < w else None


@dataclass
class TesseraStore:
    path: Path
    zones: dict[int, Zone]  # zone number -> what was written


def zone_of(lon: float) -> int:
    return int((lon + 180) // 6) + 1


# geotessera's v1.1 `dclimate` store (what `--tessera-store v1.1` resolves to) marks its root
# and every zone group so: NaN scales are data missing from the source, not water (from
# geotessera's transcode.py, `root_attrs` and `zone_attrs`: github avsm/geotessera,
# geotessera/transcode.py, commit f695b9412ea304f6b6bdd7149f4f8cca0e5b6216).
DCLIMATE_ROOT_ATTRS = {"geotessera:mask_source": "source_nodata", "geoemb:landmask": False}
DCLIMATE_ZONE_ATTRS = {"geotessera:mask_source": "source_nodata"}


def build_tessera_store(
    root: Path, layout: Layout = SEAM, *, seed: int = 0, dclimate: bool = False
) -> TesseraStore:
    """The store; `dclimate` marks it as geotessera's v1.1 dclimate store is marked."""
    from geotessera.registry import Registry
    from geotessera.zarr import init_store

    registry_dir = root / "registry"
    registry_dir.mkdir(parents=True)
    lons, lats = [t[0] for t in layout.tiles], [t[1] for t in layout.tiles]
    pd.DataFrame({"lat": lats, "lon": lons, "year": YEAR, "grid_size": 0.1}).to_parquet(
        registry_dir / "manifest.parquet"
    )
    pd.DataFrame({"lat": lats, "lon": lons, "file_size": 1}).to_parquet(
        registry_dir / "landmasks.parquet"
    )
    registry = Registry("v1.1", variant="cambridge", registry_dir=registry_dir)
    path = root / "tessera.zarr"
    init_store(registry, str(path), [2023, YEAR], model_version="1.1")
    rng = np.random.default_rng(seed)
    group = zarr.open_group(str(path), mode="r+")
    zones = sorted({zone_of(lon) for lon in lons})
    filled = {z: _fill_zone(group[f"utm{z:02d}"], z, layout, rng) for z in zones}
    if dclimate:
        group.attrs.update(DCLIMATE_ROOT_ATTRS)
        for z in zones:
            group[f"utm{z:02d}"].attrs.update(DCLIMATE_ZONE_ATTRS)
        with warnings.catch_warnings():  # zarr's note that v3 has no consolidated metadata
            warnings.simplefilter("ignore", UserWarning)
            zarr.consolidate_metadata(str(path))  # geotessera opens zones through it
    return TesseraStore(path, filled)


def _fill_zone(zg: zarr.Group, zone: int, layout: Layout, rng: np.random.Generator) -> Zone:
    epsg = 32600 + zone  # geotessera's zone grids are northern UTM, y < 0 in the south
    x, y = zg["x"][:], zg["y"][:]
    e0, n0 = Transformer.from_crs(4326, epsg, always_xy=True).transform(*layout.centre)
    half = layout.half_m
    col0 = max(0, int(np.floor((e0 - half - (x[0] - 5.0)) / 10.0)))
    row0 = max(0, int(np.floor(((y[0] + 5.0) - (n0 + half)) / 10.0)))
    h = w = int(2 * half / 10)
    emb = rng.integers(-127, 128, (128, h, w), dtype=np.int8)
    scales = rng.uniform(0.01, 0.1, (h, w)).astype(np.float32)
    gx, gy = np.meshgrid(x[col0 : col0 + w], y[row0 : row0 + h])
    lon, lat = Transformer.from_crs(epsg, 4326, always_xy=True).transform(gx, gy)
    own_side = (lon >= -180 + 6 * (zone - 1)) & (lon < -180 + 6 * zone)
    scales[~own_side] = np.inf
    if layout.water is not None:
        below, west_of = layout.water
        scales[own_side & (lat < below) & (lon < west_of)] = np.nan
    t = 1  # the YEAR entry
    zg["embeddings"][t, :, row0 : row0 + h, col0 : col0 + w] = emb
    zg["scales"][t, row0 : row0 + h, col0 : col0 + w] = scales
    return Zone(epsg, x, y, emb, scales, row0, col0)


def expected_patch(store: TesseraStore, epsg: int, x: float, y: float, n: int) -> np.ndarray:
    """The (N, N, 128) dequantised patch centred on (x, y) of zone `epsg`, computed pixel by
    pixel from what was written: each pixel from the zone owning its longitude, else from
    the other zone where that one has a value; NaN where neither has one."""
    to_lonlat = Transformer.from_crs(epsg, 4326, always_xy=True)
    out = np.full((n, n, 128), np.nan, np.float32)
    x0, y0 = patch_corner(x, y, n, 10.0)
    for i in range(n):
        for j in range(n):
            px = x0 + (j + 0.5) * 10.0
            py = y0 - (i + 0.5) * 10.0
            lon, _ = to_lonlat.transform(px, py)
            owner = zone_of(lon)
            for zone in sorted(store.zones, key=lambda z: z != owner):
                z = store.zones[zone]
                e, nn = Transformer.from_crs(epsg, z.epsg, always_xy=True).transform(px, py)
                hit = z.pixel(e, nn)
                if hit is not None and np.isfinite(z.scales[hit]):
                    out[i, j] = z.embeddings[:, hit[0], hit[1]].astype(np.float32) * z.scales[hit]
                    break
    return out
