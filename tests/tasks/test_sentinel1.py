"""Sentinel-1 through every source that serves it: VV and VH in dB on each point's UTM grid,
bands in the order asked, nodata and border noise masked, the median over the dates taken in
dB.

One scene (tests/stac_api_server.py: linear power 10^(s1_db / 10), Planetary Computer's
nodata -32768 in a corner, a column of border-noise zeros) is served three ways: a static
STAC catalog of its COGs, a fake Planetary Computer API (sentinel-1-rtc, signed), and a fake
Earth Engine whose COPERNICUS/S1_GRD holds what Earth Engine would answer: the same
backscatter in dB, computed on its side (float64, then float32), masked alike. The two STAC
sources read the same files through the same path and agree to the bit; Earth Engine's dB
were computed elsewhere and agree within S1_EE_TOLERANCE_DB.
"""

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pystac
import pytest

from embedders.encoding import decode, encode_int16
from tasks.options import Options
from tasks.plan.points import Point, _point_id
from tasks.sources import sensors
from tasks.sources.earthengine import EarthEngineSource
from tasks.sources.pixels import patch_geobox
from tasks.sources.registry import (
    EarthEngineOptions,
    ImagerySourceError,
    Patches,
    SensorConfig,
    StacApiOptions,
    StacCatalogOptions,
    sensor_config,
)
from tasks.sources.stac_api import StacApiSource, resolve_api
from tasks.sources.stac_catalog import StacCatalogSource
from tests.ee_server import (
    Computation,
    FakeEarthEngine,
    Raster,
    serve_earthengine,
    service_account_key,
)
from tests.stac_api_server import (
    EPSG,
    NODATA_PX,
    RES,
    S1_BANDS,
    S1_NOISE_COL,
    X0,
    Y0,
    Scene,
    s1_db,
    s1_item,
    s1_linear,
    serve_stac_api,
)
from tests.tasks.test_products import DEMO_KEY, REQUEST

SCENE = Scene("s1-a", 9, sensor="s1")
N = 8
ASKED = ("VH", "VV")  # not the order the items list them in
START, END = "2021-06-01", "2021-06-30"
# Earth Engine's dB are computed on its side in another precision: within this of swath's.
S1_EE_TOLERANCE_DB = 1e-4
# Pixel corners the points sit on: inside, across the nodata corner, across the noise column.
CORNERS = [(40, 40), (6, 6), (50, S1_NOISE_COL)]
SIGNED = StacApiOptions(stac_signing="planetary-computer")


def points() -> list[Point]:
    out = []
    for row, col in CORNERS:
        x, y = X0 + col * RES, Y0 - row * RES
        out.append(Point(_point_id(EPSG, x, y), 15.0, 45.0, EPSG, x, y))
    return out


def pixels(p: Point) -> tuple[np.ndarray, np.ndarray]:
    """The scene's (row, col) at the pixel centres of the point's patch."""
    box = patch_geobox(p, N, RES)
    cols, rows = np.meshgrid(np.arange(N) + 0.5, np.arange(N) + 0.5)
    x, y = box.affine * (cols, rows)
    col = np.floor((np.asarray(x) - X0) / RES).astype(int)
    row = np.floor((Y0 - np.asarray(y)) / RES).astype(int)
    return row, col


def masked(row: np.ndarray, col: np.ndarray) -> np.ndarray:
    return ((row < NODATA_PX) & (col < NODATA_PX)) | (col == S1_NOISE_COL)


def expected(p: Point, band: str, delta: float = 0.0) -> np.ndarray:
    """The contract: 10 log10 of the scene's linear power, NaN at nodata and border noise."""
    row, col = pixels(p)
    power = s1_linear(s1_db(row, col, S1_BANDS.index(band)) + delta)
    db = 10 * np.log10(power.astype(np.float64))
    return np.where(masked(row, col), np.nan, db).astype(np.float32)


def static_catalog(root: Path, scenes: list[Scene]) -> str:
    """A static catalog of the COGs the fake API wrote, items in Planetary Computer's shape."""
    catalog = pystac.Catalog("s1", "Sentinel-1 scenes, for the cross-source test")
    for scene in scenes:
        item = pystac.Item.from_dict(s1_item(scene, "http://unused", str(root)))
        for key, asset in item.assets.items():
            asset.href = str(root / "blobs" / scene.id / f"{key}.tif")
        item.clear_links()
        catalog.add_item(item)
    catalog.normalize_and_save(str(root / "catalog"), pystac.CatalogType.SELF_CONTAINED)
    return str(root / "catalog" / "catalog.json")


def ee_world(delta: float = 0.0) -> dict[str, list[Raster]]:
    """COPERNICUS/S1_GRD over the scene as Earth Engine answers it: dB, masked alike."""
    rows, cols = np.mgrid[0 : SCENE.size, 0 : SCENE.size]
    bands = {
        b: (10 * np.log10(s1_linear(s1_db(rows, cols, k) + delta).astype(np.float64))).astype(
            np.float32
        )
        for k, b in enumerate(S1_BANDS)
    }
    raster = Raster(EPSG, X0, Y0, RES, bands, ~masked(rows, cols), start=START, end="2021-07-01")
    return {sensors.SENTINEL_1.collections["earthengine"]: [raster]}


def config(source: str, catalog: str, access: Options | None = None, **kw: str) -> SensorConfig:
    return SensorConfig(
        sensors.SENTINEL_1.name,
        catalog,
        sensors.default_collection(sensors.SENTINEL_1.name, source),
        RES,
        N,
        START,
        END,
        source=source,
        max_cloud_cover=80.0,  # what a run passes; radar's searches must not filter on it
        options=access,
        **kw,  # type: ignore[arg-type]
    )


def ee_fetch(tmp: Path, fake: FakeEarthEngine, cfg: dict[str, str] | None = None) -> Patches:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(tmp / "home"))
        mp.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
        key = tmp / "key.json"
        service_account_key(key, fake)
        access = EarthEngineOptions(ee_key_file=str(key), ee_url=fake.url, ee_project="fake")
        return EarthEngineSource().fetch(
            points(), ASKED, config("earthengine", "", access, **(cfg or {}))
        )


computations: list[Computation] = []  # what the fixture's Earth Engine requests asked for


@pytest.fixture(scope="module")
def fetched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Patches]]:
    tmp = tmp_path_factory.mktemp("s1")
    out: dict[str, Patches] = {}
    computations.clear()
    with serve_stac_api(tmp / "pc", [SCENE]) as pc:
        out["stac-api"] = StacApiSource().fetch(points(), ASKED, config("stac-api", pc.url, SIGNED))
        assert not any("query" in s for s in pc.searches), "no cloud-cover filter for radar"
        catalog = static_catalog(tmp / "pc", [SCENE])
        out["stac-catalog"] = StacCatalogSource().fetch(
            points(), ASKED, config("stac-catalog", catalog)
        )
    with serve_earthengine(ee_world()) as fake:
        out["earthengine"] = ee_fetch(tmp, fake)
        computations.extend(fake.computations)
    yield out


@pytest.mark.parametrize("source", ["stac-catalog", "stac-api", "earthengine"])
def test_s1__every_source_serves_vv_and_vh_in_db_on_the_points_grid(
    fetched: dict[str, Patches], source: str
) -> None:
    patches = fetched[source]
    assert tuple(patches.bands) == ASKED
    for band in ASKED:
        got = patches.bands[band]
        assert got.dtype == np.float32 and got.shape == (len(CORNERS), N, N)
        for i, p in enumerate(points()):
            want = expected(p, band)
            np.testing.assert_array_equal(np.isnan(got[i]), np.isnan(want), err_msg=source)
            np.testing.assert_allclose(got[i], want, rtol=0, atol=S1_EE_TOLERANCE_DB)
    assert np.isnan(patches.bands["VV"][1]).any(), "the nodata corner is masked"
    assert np.isnan(patches.bands["VV"][2]).any(), "the border noise is masked"
    assert not patches.notes


def test_s1__static_catalog_and_stac_api_agree_to_the_bit(fetched: dict[str, Patches]) -> None:
    for band in ASKED:
        np.testing.assert_array_equal(
            fetched["stac-catalog"].bands[band], fetched["stac-api"].bands[band]
        )


def test_s1__earth_engine_gets_iw_scenes_with_both_polarisations_above_the_floor(
    fetched: dict[str, Patches],
) -> None:
    assert computations
    for c in computations:
        assert ("instrumentMode", "==", "IW") in c.property_filters
        for pol in ("VV", "VH"):
            assert ("transmitterReceiverPolarisation", "contains", pol) in c.property_filters
        assert not [f for f in c.property_filters if f[0] == "CLOUDY_PIXEL_PERCENTAGE"]
        assert set(c.above) == {sensors.S1_DB_FLOOR}
        assert c.reducer == "reduce.median"


def test_s1__the_median_over_dates_is_taken_in_db(tmp_path: Path) -> None:
    """Two dates 2 dB apart: their median is the mean of their dB (in linear power it would
    be 10 log10 of the mean power, 1.1 dB above the lower one, not 1.0)."""
    scenes = [SCENE, Scene("s1-b", 21, sensor="s1", delta=-2.0)]
    with serve_stac_api(tmp_path, scenes) as pc:
        got = StacApiSource().fetch(points(), ASKED, config("stac-api", pc.url, SIGNED))
    np.testing.assert_allclose(got.bands["VV"][0], expected(points()[0], "VV", -1.0), atol=1e-4)


def test_s1__scenes_of_the_other_orbit_pass_are_left_out(tmp_path: Path) -> None:
    scenes = [SCENE, Scene("s1-asc", 21, sensor="s1", delta=-6.0, orbit_state="ascending")]
    with serve_stac_api(tmp_path, scenes) as pc:
        asc = config("stac-api", pc.url, SIGNED, orbit_pass="ascending")
        got = StacApiSource().fetch(points(), ASKED, asc)
    np.testing.assert_allclose(got.bands["VH"][0], expected(points()[0], "VH", -6.0), atol=1e-4)
    assert asc.key() != config("stac-api", pc.url, SIGNED).key()
    assert "orbit_pass" not in config("stac-api", pc.url).record(), "unset: keys stay as before"


def test_s1__earth_engine_filters_on_the_orbit_pass(tmp_path: Path) -> None:
    with serve_earthengine(ee_world()) as fake:
        ee_fetch(tmp_path, fake, {"orbit_pass": "descending"})
        c = fake.computations[0]
    assert ("orbitProperties_pass", "==", "DESCENDING") in c.property_filters


def test_s1__a_scene_without_vh_is_left_out_of_the_composite(tmp_path: Path) -> None:
    scenes = [SCENE, Scene("s1-vv", 21, sensor="s1", delta=-9.0, polarizations=("VV",))]
    with serve_stac_api(tmp_path, scenes) as pc:
        got = StacApiSource().fetch(points(), ASKED, config("stac-api", pc.url, SIGNED))
    np.testing.assert_allclose(got.bands["VV"][0], expected(points()[0], "VV"), atol=1e-5)


def test_s1__a_collection_without_vh_is_refused_naming_the_band(tmp_path: Path) -> None:
    scenes = [Scene("s1-vv", 9, sensor="s1", polarizations=("VV",))]
    with serve_stac_api(tmp_path, scenes) as pc:
        with pytest.raises(ImagerySourceError, match=r"band VH is in no item of collection"):
            StacApiSource().fetch(points(), ASKED, config("stac-api", pc.url, SIGNED))
        with pytest.raises(ImagerySourceError, match=r"band VH is in no item.*assets are \['vv'\]"):
            StacApiSource().check(ASKED, config("stac-api", pc.url, SIGNED))


def test_s1__scenes_not_of_the_iw_mode_are_not_read(tmp_path: Path) -> None:
    with serve_stac_api(tmp_path, [Scene("s1-ew", 9, sensor="s1", mode="EW")]) as pc:
        got = StacApiSource().fetch(points(), ASKED, config("stac-api", pc.url, SIGNED))
    assert np.isnan(got.bands["VV"]).all()
    assert set(got.notes) == {p.id for p in points()}
    assert "no sentinel-1-rtc item" in next(iter(got.notes.values()))


def test_s1__earth_search_is_refused_with_where_to_read_it_instead() -> None:
    with pytest.raises(ImagerySourceError, match=r"requester-pays.*planetary-computer"):
        resolve_api(config("stac-api", "earth-search"))
    with pytest.raises(ImagerySourceError, match=r"requester-pays"):
        resolve_api(config("stac-api", "https://earth-search.aws.element84.com/v1/"))


def test_s1__the_inputs_store_keeps_hundredths_of_a_db() -> None:
    """int16 of dB x 100: within 0.005 dB, NaN kept, the range of backscatter (and far
    beyond) representable."""
    encoding = sensors.encoding_of(sensors.SENTINEL_1.name)
    values = np.array([-45.123456, -12.345, 0.004999, 31.0, np.nan], np.float32)
    back = decode(encode_int16(values, encoding), encoding)
    np.testing.assert_allclose(back[:4], values[:4], rtol=0, atol=0.005 + 1e-6)
    assert np.isnan(back[4])
    assert encoding.scale * 32767 > 300


def test_s1__the_runs_orbit_pass_reaches_sentinel_1_alone_and_no_cloud_limit_splits_it() -> None:
    request = replace(
        REQUEST,
        source_options={"stac-catalog": StacCatalogOptions(orbit_pass="ascending")},
        max_cloud_cover=30.0,
    )
    s1 = sensor_config(request, sensors.SENTINEL_1.name, 10)
    assert (s1.orbit_pass, s1.max_cloud_cover, s1.collection) == (
        "ascending",
        100.0,
        "sentinel-1-rtc",
    )
    s2 = sensor_config(replace(request, max_cloud_cover=80.0), "sentinel-2-l2a", 10)
    assert s2.orbit_pass == "" and s2.key() == DEMO_KEY, "S2's inputs groups keep their names"


def test_s1__the_check_before_a_run_looks_past_a_scene_without_vh(tmp_path: Path) -> None:
    scenes = [Scene("s1-vv", 5, sensor="s1", polarizations=("VV",)), SCENE]
    with serve_stac_api(tmp_path, scenes) as pc:
        StacApiSource().check(ASKED, config("stac-api", pc.url, SIGNED))
        assert pc.count("/blobs/s1-a/vh.tif") >= 1, "the dual-polarisation scene's header read"


def test_s1__the_earth_engine_check_asks_for_a_scene_with_both_polarisations(
    tmp_path: Path,
) -> None:
    with serve_earthengine(ee_world()) as fake, pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(tmp_path / "home"))
        mp.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
        key = tmp_path / "key.json"
        service_account_key(key, fake)
        access = EarthEngineOptions(ee_key_file=str(key), ee_url=fake.url, ee_project="fake")
        EarthEngineSource().check(ASKED, config("earthengine", "", access))
        (c,) = fake.computations
    assert ("transmitterReceiverPolarisation", "contains", "VH") in c.property_filters


def test_s1__a_patch_with_no_signal_says_so_without_clouds(tmp_path: Path) -> None:
    x, y = X0 + 4 * RES, Y0 - 4 * RES  # the patch is the nodata corner, 8 x 8
    corner = Point(_point_id(EPSG, x, y), 15.0, 45.0, EPSG, x, y)
    with serve_stac_api(tmp_path, [SCENE]) as pc:
        got = StacApiSource().fetch([corner], ASKED, config("stac-api", pc.url, SIGNED))
    assert "is masked (nodata or no signal) in the 1 date(s)" in got.notes[corner.id]
