"""Every imagery source delivers the same thing for the same point: an N x N patch on the
point's UTM grid, north-up, centred to the pixel, bands in the requested order, float32 on
the harmonised scale, NaN where masked.

One scene of known pixel values (tests/stac_api_server.py) is served four ways: a static STAC
catalog, a fake Planetary Computer API (signed COGs, B02.. keys), a fake Earth Search API
(common-name keys with -jp2 duplicates, raster:bands offsets), and a fake Earth Engine (its
S2_SR_HARMONIZED world: the same values, already harmonised). The scene is of processing
baseline 05.00, so its DNs carry +1000 on the STAC side, which each STAC source must remove.
"""

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pystac
import pytest
import shapely
import shapely.ops
from pyproj import Transformer

from tasks.options import Options
from tasks.plan.points import Point, _point_id
from tasks.sources import sensors
from tasks.sources.earthengine import EarthEngineSource
from tasks.sources.pixels import patch_geobox
from tasks.sources.registry import (
    SOURCES,
    EarthEngineOptions,
    Patches,
    SensorConfig,
    StacApiOptions,
    get_source,
)
from tasks.sources.stac_api import StacApiSource
from tasks.sources.stac_catalog import StacCatalogSource
from tests.ee_server import Raster, serve_earthengine, service_account_key
from tests.stac_api_server import (
    BAND_STEP,
    BANDS,
    COMMON,
    EPSG,
    NODATA_PX,
    RES,
    X0,
    Y0,
    Scene,
    serve_stac_api,
)

SCENE = Scene("s2-new", 9, baseline="05.00", add_dn=1000)
N = 8  # patch side, pixels
ASKED = ("B08", "B02", "B04")  # not the order the sources store them in
START, END = "2021-06-01", "2021-06-30"
# Points (row, col of the pixel corner they sit on, or a point 3 m off it): inside the scene,
# one patch across the nodata corner, two sharing one request, one off the pixel lattice.
CORNERS = [(40, 40), (44, 52), (6, 6), (70, 20)]


def points() -> list[Point]:
    out = []
    for row, col in CORNERS:
        x, y = X0 + col * RES, Y0 - row * RES
        out.append(Point(_point_id(EPSG, x, y), 15.0, 45.0, EPSG, x, y))
    x, y = X0 + 60 * RES + 3.0, Y0 - 30 * RES - 3.0  # 3 m off the lattice: snapped the same
    out.append(Point(_point_id(EPSG, x, y), 15.0, 45.0, EPSG, x, y))
    return out


def expected(p: Point, band: str) -> np.ndarray:
    """The contract: the harmonised scene at the pixel centres of the point's patch_geobox."""
    box = patch_geobox(p, N, RES)
    cols, rows = np.meshgrid(np.arange(N) + 0.5, np.arange(N) + 0.5)
    x, y = box.affine * (cols, rows)
    col = np.floor((np.asarray(x) - X0) / RES).astype(int)
    row = np.floor((Y0 - np.asarray(y)) / RES).astype(int)
    values = row * 37 + col * 3 + 1 + BANDS.index(band) * BAND_STEP
    nodata = (row < NODATA_PX) & (col < NODATA_PX)
    return np.where(nodata, np.nan, values).astype(np.float32)


def static_catalog(root: Path) -> str:
    """A static catalog of the Planetary-Computer-style COGs the fake API wrote, read from disk."""
    blobs = root / "blobs" / SCENE.id
    box = shapely.box(X0, Y0 - SCENE.size * RES, X0 + SCENE.size * RES, Y0)
    to_lonlat = Transformer.from_crs(EPSG, 4326, always_xy=True).transform
    footprint = shapely.ops.transform(to_lonlat, box)
    item = pystac.Item(
        SCENE.id,
        shapely.geometry.mapping(footprint),
        list(footprint.bounds),
        datetime(2021, 6, SCENE.day, 10, tzinfo=UTC),
        {sensors.S2_PROCESSING_BASELINE_PROPERTY: SCENE.baseline, "eo:cloud_cover": 5.0},
        collection="sentinel-2-l2a",
    )
    for band in (*BANDS, "SCL"):
        item.add_asset(band, pystac.Asset(str(blobs / f"{band}.tif")))
    catalog = pystac.Catalog("same-scene", "one scene, for the cross-source test")
    catalog.add_item(item)
    catalog.normalize_and_save(str(root / "catalog"), pystac.CatalogType.SELF_CONTAINED)
    return str(root / "catalog" / "catalog.json")


def ee_world() -> dict[str, list[Raster]]:
    """Earth Engine's S2_SR_HARMONIZED over the scene: the harmonised values, masked alike."""
    rows, cols = np.mgrid[0 : SCENE.size, 0 : SCENE.size]
    bands = {
        sensors.BANDS[b].ee_name: (rows * 37 + cols * 3 + 1 + k * BAND_STEP).astype(np.float32)
        for k, b in enumerate(BANDS)
    }
    mask = np.ones(rows.shape, bool)
    mask[:NODATA_PX, :NODATA_PX] = False
    raster = Raster(EPSG, X0, Y0, RES, bands, mask, start=START, end="2021-07-01")
    return {sensors.SENTINEL_2_L2A.collections["earthengine"]: [raster]}


def config(source: str, catalog: str, access: Options | None = None) -> SensorConfig:
    return SensorConfig(
        "sentinel-2-l2a",
        catalog,
        sensors.default_collection("sentinel-2-l2a", source),
        RES,
        N,
        START,
        END,
        source=source,
        max_cloud_cover=80.0,
        options=access,
    )


@pytest.fixture(scope="module")
def fetched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Patches]]:
    """The same points through every source."""
    tmp = tmp_path_factory.mktemp("sources")
    pts = points()
    out: dict[str, Patches] = {}
    with serve_stac_api(tmp / "pc", [SCENE], style="planetary-computer") as pc:
        signed = StacApiOptions(stac_signing="planetary-computer")
        out["stac-api planetary-computer"] = StacApiSource().fetch(
            pts, ASKED, config("stac-api", pc.url, signed)
        )
        catalog = static_catalog(tmp / "pc")
        out["stac-catalog"] = StacCatalogSource().fetch(pts, ASKED, config("stac-catalog", catalog))
    with serve_stac_api(tmp / "es", [SCENE], style="earth-search") as es:
        out["stac-api earth-search"] = StacApiSource().fetch(
            pts, ASKED, config("stac-api", es.url, StacApiOptions(stac_signing="none"))
        )
    with serve_earthengine(ee_world()) as fake, pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(tmp / "home"))  # no developer's stored credentials
        mp.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
        key = tmp / "key.json"
        service_account_key(key, fake)
        access = EarthEngineOptions(
            ee_key_file=str(key), ee_url=fake.url, ee_project="fake-project"
        )
        out["earthengine"] = EarthEngineSource().fetch(
            pts, ASKED, config("earthengine", "", access)
        )
    yield out


def test_sources__every_registered_source_is_in_this_test() -> None:
    assert set(SOURCES) == {"stac-catalog", "stac-api", "earthengine"}
    assert type(get_source("stac-api")) is StacApiSource  # the registry builds these classes


@pytest.mark.parametrize(
    "source",
    ["stac-catalog", "stac-api planetary-computer", "stac-api earth-search", "earthengine"],
)
def test_sources__same_shape_grid_band_order_and_values(
    fetched: dict[str, Patches], source: str
) -> None:
    patches = fetched[source]
    pts = points()
    assert patches.point_ids == tuple(p.id for p in pts)
    assert tuple(patches.bands) == ASKED, "bands in the order asked for"
    for band in ASKED:
        got = patches.bands[band]
        assert got.dtype == np.float32 and got.shape == (len(pts), N, N)
        for i, p in enumerate(pts):
            np.testing.assert_array_equal(got[i], expected(p, band), err_msg=f"{source} {band} {p}")
    corner = patches.bands["B02"][2]
    assert np.isnan(corner).any() and np.isfinite(corner).any(), "part of it is nodata"
    assert not patches.notes, "every patch has valid pixels"


def test_sources__all_four_agree_to_the_bit(fetched: dict[str, Patches]) -> None:
    first, *others = fetched.values()
    for patches in others:
        for band in ASKED:
            np.testing.assert_array_equal(patches.bands[band], first.bands[band])


def test_sources__earth_search_keys_and_common_names_are_declared_once() -> None:
    """The fake Earth Search's asset keys are the sensor facts' common names, so the source
    finds them through the facts, not through names retyped in the source."""
    assert all(sensors.BANDS[b].common_name == COMMON[b] for b in BANDS)
