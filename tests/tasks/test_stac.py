"""StacCatalogSource: patches from a static STAC catalog of COGs, local and over loopback HTTP."""

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pystac
import pytest
from odc.geo.geom import BoundingBox

from tasks.plan.points import Point
from tasks.sources.demo import DEMO_COLLECTION, build_demo_catalog
from tasks.sources.pixels import nanmedian_over_time, plan_loads
from tasks.sources.registry import ImagerySourceError, SensorConfig, TransientSourceError
from tasks.sources.stac_catalog import StacCatalogSource, read_catalog
from tests import rasters
from tests.fakes import Fault, Request, serve_directory

# The synthetic scene: 120 x 120 px of 10 m on EPSG:32633 whose pixel (row, col) holds
# row * 1000 + col + 1, plus DATE_STEP * k on the k-th date. A 10 x 10 px block in the
# north-west corner is nodata (0).
EPSG, X0, Y0, RES, SIZE = 32633, 500_000.0, 5_000_000.0, 10.0, 120
DATE_STEP = 100_000.0
NODATA_BLOCK = 10


def pixel_value(row: int, col: int, date_index: int = 0) -> float:
    return row * 1000 + col + 1 + DATE_STEP * date_index


def write_cog(path: Path, data: np.ndarray, nodata: float) -> None:
    rasters.write_cog(path, data, epsg=EPSG, x0=X0, y0=Y0, res=RES, nodata=nodata)


def make_catalog(
    root: Path,
    offsets: Sequence[float] = (0,),
    scl: Sequence[np.ndarray] = (),
    properties: Sequence[dict[str, object]] = (),
    add_dn: Sequence[float] = (),
) -> str:
    """A catalog of one item per date. Assets are found by key (B02), by common name (red is
    B04) and by eo:bands name only (data_nir is B08); `scl` adds an SCL asset per date,
    `properties` item properties, and `add_dn` a number added to each date's valid DNs."""
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    footprint = BoundingBox(X0, Y0 - SIZE * RES, X0 + SIZE * RES, Y0, crs=f"EPSG:{EPSG}")
    lonlat = footprint.polygon.to_crs("EPSG:4326")
    catalog = pystac.Catalog(id="synthetic", description="pixel values encode row and column")
    for k, offset in enumerate(offsets):
        item = pystac.Item(
            id=f"scene-{k}",
            geometry=lonlat.json,
            bbox=list(lonlat.boundingbox),
            datetime=datetime(2021, 6, 1 + k, 10, tzinfo=UTC),
            properties=dict(properties[k]) if properties else {},
            collection="synthetic-s2",
        )
        (root / item.id).mkdir(parents=True)
        values = (rows * 1000 + cols + 1 + offset * DATE_STEP).astype(np.float32)
        values += add_dn[k] if add_dn else 0
        values[:NODATA_BLOCK, :NODATA_BLOCK] = 0
        for key, band in (("B02", "B02"), ("red", "B04"), ("data_nir", "B08")):
            write_cog(root / item.id / f"{key}.tif", values, nodata=0)
            asset = pystac.Asset(
                str(root / item.id / f"{key}.tif"), media_type=pystac.MediaType.COG
            )
            asset.extra_fields["eo:bands"] = [{"name": band}]
            asset.extra_fields["raster:bands"] = [{"nodata": 0}]
            item.add_asset(key, asset)
        if scl:
            write_cog(root / item.id / "SCL.tif", scl[k].astype(np.uint8), nodata=0)
            item.add_asset("SCL", pystac.Asset(str(root / item.id / "SCL.tif")))
        catalog.add_item(item)
    catalog.normalize_hrefs(str(root))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return str(root / "catalog.json")


def config_for(
    catalog: str,
    patch_px: int,
    *,
    collection: str = "synthetic-s2",
    start: str = "2021-06-01",
    end: str = "2021-06-30",
    composite: str = "median",
) -> SensorConfig:
    return SensorConfig("sentinel-2-l2a", catalog, collection, RES, patch_px, start, end, composite)


def at(x: float, y: float, name: str = "p") -> Point:
    return Point(name, lon=0.0, lat=0.0, epsg=EPSG, x=x, y=y)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_catalog(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_catalog(tmp_path_factory.mktemp("cache"))


# --- geometry -------------------------------------------------------------------------------


def test_patch__even_size_is_centred_on_the_point_and_north_up(synthetic: str) -> None:
    row, col, n = 50, 60, 8  # the point is the corner shared by pixels (49..50, 59..60)
    patches = StacCatalogSource().fetch(
        [at(X0 + col * RES, Y0 - row * RES)], ["B02"], config_for(synthetic, n)
    )
    expected = [[pixel_value(row - 4 + r, col - 4 + c) for c in range(n)] for r in range(n)]
    np.testing.assert_array_equal(patches.bands["B02"][0], np.array(expected, dtype=np.float32))
    assert patches.bands["B02"].dtype == np.float32 and patches.notes == {}


def test_patch__odd_size_puts_the_points_pixel_in_the_middle(synthetic: str) -> None:
    row, col = 30, 70
    point = at(X0 + col * RES + 5, Y0 - row * RES - 5)  # centre of pixel (30, 70)
    patch = StacCatalogSource().fetch([point], ["B02"], config_for(synthetic, 5)).bands["B02"][0]
    assert patch[2, 2] == pixel_value(row, col)
    assert patch[0, 2] == pixel_value(row - 2, col)  # north is up: row 0 is the northmost
    assert patch[2, 0] == pixel_value(row, col - 2)  # west is left


def test_patch__bands_resolve_by_key_common_name_and_eo_bands_name(synthetic: str) -> None:
    point = at(X0 + 600, Y0 - 600)
    patches = StacCatalogSource().fetch([point], ["B02", "B04", "B08"], config_for(synthetic, 4))
    np.testing.assert_array_equal(patches.bands["B04"], patches.bands["B02"])
    np.testing.assert_array_equal(patches.bands["B08"], patches.bands["B02"])


# --- masking, composite and notes -----------------------------------------------------------


def test_nodata__source_nodata_becomes_nan(synthetic: str) -> None:
    point = at(X0 + NODATA_BLOCK * RES, Y0 - NODATA_BLOCK * RES)  # the nodata block's corner
    patch = StacCatalogSource().fetch([point], ["B02"], config_for(synthetic, 4)).bands["B02"][0]
    assert np.isnan(patch[:2, :2]).all()  # north-west quarter: inside the nodata block
    assert np.isfinite(patch[2:, :]).all() and np.isfinite(patch[:, 2:]).all()


def test_nodata__patch_reaching_past_the_scene_edge_is_nan_outside(synthetic: str) -> None:
    point = at(X0 + SIZE * RES, Y0 - 60 * RES)  # on the east edge
    patches = StacCatalogSource().fetch([point], ["B02"], config_for(synthetic, 6))
    patch = patches.bands["B02"][0]
    assert np.isfinite(patch[:, :3]).all() and np.isnan(patch[:, 3:]).all()
    assert patches.notes == {}


def test_notes__point_outside_coverage_gets_a_note_not_an_error(synthetic: str) -> None:
    inside, outside = at(X0 + 600, Y0 - 600, "in"), at(X0 + 50_000, Y0 - 600, "out")
    patches = StacCatalogSource().fetch([inside, outside], ["B02"], config_for(synthetic, 4))
    assert patches.point_ids == ("in", "out")
    assert list(patches.notes) == ["out"]
    assert "no synthetic-s2 item between 2021-06-01 and 2021-06-30" in patches.notes["out"]
    assert np.isnan(patches.bands["B02"][1]).all() and np.isfinite(patches.bands["B02"][0]).all()


def test_notes__window_without_items_notes_every_point(synthetic: str) -> None:
    config = config_for(synthetic, 4, start="2022-01-01", end="2022-12-31")
    patches = StacCatalogSource().fetch([at(X0 + 600, Y0 - 600)], ["B02"], config)
    assert "between 2022-01-01 and 2022-12-31" in patches.notes["p"]


def test_notes__fully_masked_patch_gets_a_note(synthetic: str) -> None:
    point = at(X0 + 2 * RES, Y0 - 2 * RES)  # inside the nodata block
    patches = StacCatalogSource().fetch([point], ["B02"], config_for(synthetic, 4))
    assert np.isnan(patches.bands["B02"]).all()
    assert "every pixel of its 4 px patch is masked" in patches.notes["p"]


def test_composite__median_over_dates_after_scl_cloud_mask(tmp_path: Path) -> None:
    vegetation, cloud = 4, 9
    clouds = [np.full((SIZE, SIZE), vegetation) for _ in range(3)]
    clouds[1][:60, :] = cloud  # date 1 is cloudy in the north half
    clouds[0][:60, :60] = clouds[2][:60, :60] = cloud  # the north-west quarter: cloud every date
    catalog = make_catalog(tmp_path, offsets=(0, 1, 5), scl=clouds)
    points = [
        at(X0 + 900, Y0 - 900, "south"),
        at(X0 + 900, Y0 - 300, "north"),
        at(X0 + 300, Y0 - 300, "north-west"),
    ]
    patches = StacCatalogSource().fetch(points, ["B02"], config_for(catalog, 2))
    south, north, north_west = patches.bands["B02"]
    assert south[0, 0] == pixel_value(89, 89, date_index=1)  # median of dates 0, 1, 5
    assert north[0, 0] == pixel_value(29, 89, date_index=0) + 2.5 * DATE_STEP  # of 0 and 5
    assert np.isnan(north_west).all()
    assert (
        "masked (nodata, cloud, shadow or cirrus) in the 3 date(s)" in patches.notes["north-west"]
    )


BASELINE = "s2:processing_baseline"


def test_harmonise__items_either_side_of_baseline_04_00_composite_on_one_scale(
    tmp_path: Path,
) -> None:
    """A 05.00 item's DNs carry +1000: removed per item, after masking its raw nodata (0)."""
    both = make_catalog(
        tmp_path / "both",
        offsets=(0, 1),
        properties=[{BASELINE: "03.01"}, {BASELINE: "05.00"}],
        add_dn=(0, 1000),
    )
    harmonised = make_catalog(
        tmp_path / "harmonised", offsets=(0, 1), properties=[{BASELINE: "03.01"}] * 2
    )
    corner = at(X0 + NODATA_BLOCK * RES, Y0 - NODATA_BLOCK * RES)  # half in the nodata block
    points = [corner, at(X0 + 600, Y0 - 600, "q")]
    mixed = StacCatalogSource().fetch(points, ["B02", "B04"], config_for(both, 4))
    plain = StacCatalogSource().fetch(points, ["B02", "B04"], config_for(harmonised, 4))
    for band in ("B02", "B04"):
        np.testing.assert_array_equal(mixed.bands[band], plain.bands[band])
    # the median of dates 0 and 1 on the harmonised scale; the nodata corner stays NaN
    assert mixed.bands["B02"][1, 0, 0] == pixel_value(58, 58) + 0.5 * DATE_STEP
    assert np.isnan(mixed.bands["B02"][0, :2, :2]).all()
    assert np.isfinite(mixed.bands["B02"][0, 2:, 2:]).all()


def test_harmonise__only_for_sentinel_2_l2a(tmp_path: Path) -> None:
    catalog = make_catalog(tmp_path, properties=[{BASELINE: "05.00"}], add_dn=(1000,))
    config = dataclasses.replace(config_for(catalog, 2), sensor="some-other-sensor")
    patch = StacCatalogSource().fetch([at(X0 + 600, Y0 - 600)], ["B02"], config).bands["B02"][0]
    assert patch[0, 0] == pixel_value(59, 59) + 1000


def test_cloud_cover__cloudier_items_are_not_read(tmp_path: Path) -> None:
    covers: list[dict[str, object]] = [{"eo:cloud_cover": 10}, {"eo:cloud_cover": 95}, {}]
    catalog = make_catalog(tmp_path, offsets=(0, 1, 2), properties=covers)
    point = at(X0 + 600, Y0 - 600)
    config = dataclasses.replace(config_for(catalog, 2), max_cloud_cover=80)
    kept = StacCatalogSource().fetch([point], ["B02"], config).bands["B02"][0]
    assert kept[0, 0] == pixel_value(59, 59) + 1 * DATE_STEP  # median of dates 0 and 2
    every = StacCatalogSource().fetch([point], ["B02"], config_for(catalog, 2)).bands["B02"][0]
    assert every[0, 0] == pixel_value(59, 59, date_index=1)  # 100%: all three dates


def test_cloud_cover__a_point_with_only_cloudy_items_gets_a_note(tmp_path: Path) -> None:
    catalog = make_catalog(tmp_path, properties=[{"eo:cloud_cover": 95}])
    config = dataclasses.replace(config_for(catalog, 2), max_cloud_cover=50)
    patches = StacCatalogSource().fetch([at(X0 + 600, Y0 - 600)], ["B02"], config)
    assert np.isnan(patches.bands["B02"]).all()
    assert "no synthetic-s2 item of cloud cover 50% or less between" in patches.notes["p"]


def test_composite__median_matches_numpy_nanmedian() -> None:
    rng = np.random.default_rng(0)
    stack = rng.normal(size=(5, 7, 9)).astype(np.float32)
    stack[rng.random(stack.shape) < 0.4] = np.nan
    stack[:, 0, 0] = np.nan
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        expected = np.nanmedian(stack, axis=0)
    np.testing.assert_array_equal(nanmedian_over_time(stack), expected)


# --- loading strategy -----------------------------------------------------------------------


def test_loads__close_points_load_once_far_points_one_by_one(synthetic: str) -> None:
    config = config_for(synthetic, 8)
    window = read_catalog(synthetic)
    close = [at(X0 + 200 + 80 * i, Y0 - 300, f"c{i}") for i in range(4)]
    far = [at(X0 + 100, Y0 - 100, "f0"), at(X0 + 1100, Y0 - 1100, "f1")]
    (union,), _ = plan_loads(close, window, config)
    assert union.geobox.shape == (8, 8 + 3 * 8)
    assert [m[2] for m in union.members] == [0, 8, 16, 24]
    assert len(plan_loads(far, window, config)[0]) == 2


def test_loads__union_load_equals_per_point_loads(
    synthetic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(1)
    # points on two pixel phases, a few patches apart: two union loads
    points = [
        at(
            X0 + 300 + 10 * rng.integers(0, 40) + phase,
            Y0 - 300 - 10 * rng.integers(0, 40),
            f"p{i}",
        )
        for i, phase in enumerate([0.0, 3.0] * 6)
    ]
    config = config_for(synthetic, 16)
    assert len(plan_loads(points, read_catalog(synthetic), config)[0]) == 2
    together = StacCatalogSource().fetch(points, ["B02", "B04"], config)
    monkeypatch.setattr("tasks.sources.pixels.UNION_MAX_AREA_RATIO", 0.0)
    assert len(plan_loads(points, read_catalog(synthetic), config)[0]) == len(points)
    alone = StacCatalogSource().fetch(points, ["B02", "B04"], config)
    for band in ("B02", "B04"):
        assert np.isfinite(together.bands[band]).all()
        np.testing.assert_array_equal(together.bands[band], alone.bands[band])


# --- errors ---------------------------------------------------------------------------------


def test_errors__band_no_item_offers_names_band_collection_and_assets(synthetic: str) -> None:
    with pytest.raises(ImagerySourceError, match=r"band B11 .*'synthetic-s2'.*'B02', 'data_nir'"):
        StacCatalogSource().fetch(
            [at(X0 + 600, Y0 - 600)], ["B02", "B11"], config_for(synthetic, 4)
        )


def test_errors__unknown_collection_lists_the_catalogs_collections(synthetic: str) -> None:
    config = config_for(synthetic, 4, collection="landsat")
    with pytest.raises(ImagerySourceError, match=r"'landsat'.*\['synthetic-s2'\]"):
        StacCatalogSource().fetch([at(X0 + 600, Y0 - 600)], ["B02"], config)


def test_errors__unsupported_composite(synthetic: str) -> None:
    config = config_for(synthetic, 4, composite="mean")
    with pytest.raises(ImagerySourceError, match=r"composite 'mean'.*\('median',\)"):
        StacCatalogSource().fetch([at(X0 + 600, Y0 - 600)], ["B02"], config)


def test_errors__missing_catalog_is_not_transient(tmp_path: Path) -> None:
    config = config_for(str(tmp_path / "nothing" / "catalog.json"), 4)
    with pytest.raises(ImagerySourceError, match=r"reading the STAC catalog .*nothing"):
        StacCatalogSource().fetch([at(X0, Y0)], ["B02"], config)


# --- over HTTP ------------------------------------------------------------------------------


def demo_points() -> list[Point]:
    xs = np.linspace(600_300, 602_700, 4)
    ys = np.linspace(4_698_300, 4_699_700, 3)
    return [
        Point(f"d{i}", 0.0, 0.0, 32719, float(x), float(y))
        for i, (x, y) in enumerate((x, y) for x in xs for y in ys)
    ]


def demo_config(catalog: str) -> SensorConfig:
    return SensorConfig(
        "sentinel-2-l2a", catalog, DEMO_COLLECTION, 10.0, 32, "2020-01-01", "2020-12-31"
    )


DEMO_BANDS = ["B02", "B03", "B04", "B07", "B11", "B12"]


def test_http__demo_over_range_http_equals_local_files(demo: Path) -> None:
    local = StacCatalogSource().fetch(demo_points(), DEMO_BANDS, demo_config(str(demo)))
    log: list[Request] = []
    with serve_directory(demo.parent, log=log) as url:
        remote = StacCatalogSource().fetch(
            demo_points(), DEMO_BANDS, demo_config(f"{url}/catalog.json")
        )
    assert remote.notes == local.notes == {}
    for band in DEMO_BANDS:
        assert np.isfinite(remote.bands[band]).all()
        np.testing.assert_array_equal(remote.bands[band], local.bands[band])
    tif_gets = [r for r in log if r.method == "GET" and r.path.endswith(".tif")]
    assert len({r.path for r in tif_gets}) == 6
    assert all(r.range is not None and r.range.startswith("bytes=") for r in tif_gets)


def _fetch_with_fault(demo: Path, fault: Fault, target: str) -> None:
    def hook(request: Request) -> Fault:
        return fault if request.path.endswith(target) else None

    with serve_directory(demo.parent, fault=hook) as url:
        StacCatalogSource().fetch(demo_points()[:1], ["B02"], demo_config(f"{url}/catalog.json"))


@pytest.mark.parametrize(
    ("fault", "target", "error"),
    [
        (503, "catalog.json", TransientSourceError),
        (429, "catalog.json", TransientSourceError),
        (404, "catalog.json", ImagerySourceError),
        ("drop", "catalog.json", TransientSourceError),
        (503, "B02.tif", TransientSourceError),
        (404, "B02.tif", ImagerySourceError),
        ("drop", "B02.tif", TransientSourceError),
    ],
)
def test_http__failures_are_classified_for_retry(
    demo: Path, fault: Fault, target: str, error: type[Exception]
) -> None:
    with pytest.raises(error, match=target.replace(".", r"\.")):
        _fetch_with_fault(demo, fault, target)


def test_http__retry_after_a_transient_failure_reads_afresh(demo: Path) -> None:
    """GDAL caches failed responses; the source forgets them so a Prefect retry can succeed."""
    failing = [True]

    def hook(request: Request) -> Fault:
        return 503 if failing[0] and request.path.endswith("B02.tif") else None

    with serve_directory(demo.parent, fault=hook) as url:
        source, config = StacCatalogSource(), demo_config(f"{url}/catalog.json")
        with pytest.raises(TransientSourceError):
            source.fetch(demo_points()[:1], ["B02"], config)
        failing[0] = False
        patches = source.fetch(demo_points()[:1], ["B02"], config)
    assert np.isfinite(patches.bands["B02"]).all()


def test_check__an_asset_host_that_does_not_resolve_is_refused_naming_it(tmp_path: Path) -> None:
    """A catalog on disk whose assets are on a host that does not resolve: refused by the
    check before the run, with the host named, not left to minutes of retries."""
    catalog = pystac.Catalog(id="remote", description="assets on a host that does not resolve")
    item = pystac.Item("scene", None, None, datetime(2021, 6, 2, 10, tzinfo=UTC), {},
                       collection="synthetic-s2")  # fmt: skip
    item.add_asset("B02", pystac.Asset("http://cogs.nowhere.invalid/scene/B02.tif"))
    catalog.add_item(item)
    catalog.normalize_and_save(str(tmp_path), pystac.CatalogType.SELF_CONTAINED)
    config = config_for(str(tmp_path / "catalog.json"), 8)
    with pytest.raises(
        ImagerySourceError, match=r"the image host cogs\.nowhere\.invalid cannot be reached"
    ):
        StacCatalogSource().check(["B02"], config)
