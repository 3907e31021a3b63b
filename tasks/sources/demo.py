"""The offline demo catalog: a static STAC catalog of real Sentinel-2 COGs, built on first use.

The imagery is the Sentinel-2 sample that the installed xarray-spatial wheel ships
(`xrspatial/datasets/sentinel-2/*_band.nc`, MIT licence): six bands of 300 x 200 px over
Patagonia. The files carry their georeference only as netCDF attributes, so it is read from
the tags `crs` ('+init=epsg:32719') and `transform` ('{10,0,600000,0,-10,4700020}'); the
SWIR bands have their own 20 m transform. The band number is the tag `Band` ("02" ...;
the file called "nir" is band 07). The sample is read from the installed package, never
copied into the repository.
"""

import importlib.util
import os
import re
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pystac
import rasterio
from affine import Affine
from odc.geo.geom import BoundingBox
from pystac.extensions.eo import Band as EOBand
from pystac.extensions.eo import EOExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension

from tasks.sources.sensors import BANDS

DEMO_CATALOG_DIR = "demo-catalog-v1"  # bump the version when the catalog's content changes
DEMO_COLLECTION = "sentinel-2-l2a"
DEMO_ITEM_ID = "xrspatial-sentinel-2-sample"
DEMO_NODATA = 0  # uint16 DN 0 is Sentinel-2 L2A's own no-data value; the sample's minimum is 659

# The sample carries no acquisition date, so the item spans an interval: from the launch of
# Sentinel-2A on 2015-06-23 (ESA) to 2025-12-31 (the project's choice). Any time window that
# overlaps it finds the item.
DEMO_START = datetime(2015, 6, 23, tzinfo=UTC)
DEMO_END = datetime(2025, 12, 31, tzinfo=UTC)

# Footprint of the 10 m bands, from their tags: transform {10,0,600000,0,-10,4700020}, 300 x 200 px.
# The 20 m SWIR bands reach twice as far east and south; the item footprint is the 10 m one.
DEMO_EPSG = 32719
DEMO_FOOTPRINT_UTM = BoundingBox(600000.0, 4698020.0, 603000.0, 4700020.0, crs=f"EPSG:{DEMO_EPSG}")
# The footprint in lon/lat, its edges densified every 500 m, and its bounds (west, south, east,
# north): computed here with pyproj through odc-geo, not copied from elsewhere.
DEMO_GEOMETRY = DEMO_FOOTPRINT_UTM.polygon.to_crs("EPSG:4326", resolution=500.0)
_bounds = DEMO_GEOMETRY.boundingbox
DEMO_BBOX = (_bounds.left, _bounds.bottom, _bounds.right, _bounds.top)


def demo_footprint_utm() -> BoundingBox:
    """The 10 m bands' footprint in EPSG:32719: a point inside it has data in every band."""
    return DEMO_FOOTPRINT_UTM


def sample_files() -> list[Path]:
    """The six `*_band.nc` files of the installed xarray-spatial wheel."""
    spec = importlib.util.find_spec("xrspatial")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("xarray-spatial is not installed: pip install xarray-spatial")
    folder = Path(spec.submodule_search_locations[0]) / "datasets" / "sentinel-2"
    files = sorted(folder.glob("*_band.nc"))
    if len(files) != 6:
        raise FileNotFoundError(f"expected 6 Sentinel-2 sample bands in {folder}, found {files}")
    return files


def demo_catalog_path(cache_dir: Path) -> Path:
    """Where `build_demo_catalog` puts the catalog.json (nothing is written)."""
    return cache_dir / DEMO_CATALOG_DIR / "catalog.json"


def build_demo_catalog(cache_dir: Path) -> Path:
    """Build (once) the demo catalog under `cache_dir` and return the path of its catalog.json.

    A second call returns the existing catalog untouched. The build writes into a temporary
    folder beside the final one and renames it, so a reader never sees half a catalog.
    """
    final = cache_dir / DEMO_CATALOG_DIR
    if (final / "catalog.json").is_file():
        return final / "catalog.json"
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEMO_CATALOG_DIR}-", dir=cache_dir))
    try:
        _write_catalog(tmp)
        os.rename(tmp, final)
    except OSError:
        if not (final / "catalog.json").is_file():
            raise
        # another process finished the same build first: keep its catalog
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final / "catalog.json"


def _write_catalog(root: Path) -> None:
    item_dir = root / DEMO_ITEM_ID
    item_dir.mkdir()
    item = pystac.Item(
        id=DEMO_ITEM_ID,
        geometry=DEMO_GEOMETRY.json,
        bbox=list(DEMO_BBOX),
        datetime=None,
        start_datetime=DEMO_START,
        end_datetime=DEMO_END,
        properties={
            "description": (
                "Sentinel-2 sample shipped with xarray-spatial (MIT licence). It carries no "
                "acquisition date: the item spans the Sentinel-2 era, from the launch of "
                "Sentinel-2A (2015-06-23) to 2025-12-31."
            ),
        },
        collection=DEMO_COLLECTION,
    )
    for ext in (EOExtension, ProjectionExtension, RasterExtension):
        ext.add_to(item)
    for path in sample_files():
        name, epsg, transform, shape = _write_cog(path, item_dir)
        _add_asset(item, name, f"{item_dir}/{name}.tif", epsg, transform, shape)

    catalog = pystac.Catalog(
        id="swath-demo",
        description="Offline demo catalog for swath: one real Sentinel-2 L2A sample item.",
    )
    catalog.add_item(item)
    catalog.normalize_hrefs(str(root))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)


def _write_cog(path: Path, out_dir: Path) -> tuple[str, int, Affine, tuple[int, int]]:
    """Convert one sample band to a uint16 COG; return its asset name, EPSG, transform, shape."""
    with rasterio.open(f"netcdf:{path}") as src:
        tags = src.tags(1)
        values = src.read(1)
    name = f"B{tags['Band']}"
    if name not in BANDS:
        raise ValueError(f"{path}: tag Band={tags['Band']!r} is not a Sentinel-2 band")
    crs_match = re.fullmatch(r"\+init=epsg:(\d+)", tags["crs"])
    if crs_match is None:
        raise ValueError(f"{path}: cannot read an EPSG code from tag crs={tags['crs']!r}")
    epsg = int(crs_match.group(1))
    transform = Affine(*(float(v) for v in tags["transform"].strip("{}").split(",")))
    dn = np.where(np.isfinite(values), np.clip(np.round(values), 1, 65535), DEMO_NODATA)
    profile = {
        "driver": "COG",
        "width": values.shape[1],
        "height": values.shape[0],
        "count": 1,
        "dtype": "uint16",
        "crs": f"EPSG:{epsg}",
        "transform": transform,
        "nodata": DEMO_NODATA,
        "compress": "DEFLATE",
        "blocksize": 128,  # GDAL's COG driver minimum
    }
    with rasterio.open(out_dir / f"{name}.tif", "w", **profile) as dst:
        dst.write(dn.astype(np.uint16), 1)
    return name, epsg, transform, (values.shape[0], values.shape[1])


def _add_asset(
    item: pystac.Item,
    name: str,
    href: str,
    epsg: int,
    transform: Affine,
    shape: tuple[int, int],
) -> None:
    band = BANDS[name]
    asset = pystac.Asset(
        href=href,
        media_type=pystac.MediaType.COG,
        roles=["data"],
        title=f"{name} ({band.common_name}, {transform.a:g} m)",
        extra_fields={"gsd": transform.a},
    )
    item.add_asset(name, asset)
    proj = ProjectionExtension.ext(asset)
    proj.code = f"EPSG:{epsg}"
    proj.shape = list(shape)
    proj.transform = list(transform)[:6]
    EOExtension.ext(asset).bands = [
        EOBand.create(name=name, common_name=band.common_name, center_wavelength=band.wavelength_um)
    ]
    RasterExtension.ext(asset).bands = [
        RasterBand.create(
            nodata=DEMO_NODATA, data_type=DataType.UINT16, spatial_resolution=transform.a
        )
    ]
