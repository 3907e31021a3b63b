"""The STAC sources near a UTM zone seam: a patch is read natively from the scenes of its
point's own zone, and from another zone's scenes (resampled) only where none of its own zone
has data, whatever the order of the items in the catalog.

Two zones' scenes overlap around 6 degrees E, 45 N (zones 31 and 32), as real Sentinel-2 tiles
of adjacent zones do, on the same two days (one solar day each, so odc-stac would merge them).
A pixel's value says its zone and where it lies in that zone's raster, and each date adds
DATE_STEP: (zone tag) * ZONE_STEP + row * 1000 + col + 1 + DATE_STEP * date. The zone-32
scene stops 800 m further north than the zone-31 one, so a zone-32 point there has a patch
that only zone 31 completes.
"""

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pystac
import pytest
from odc.geo.geom import BoundingBox
from pyproj import Transformer

from flows.summary import imagery_line
from tasks.inputs import prefetch_chunk
from tasks.plan.chunks import Chunk
from tasks.plan.points import Point, _point_id
from tasks.sources.pixels import patch_geobox
from tasks.sources.registry import Patches, SensorConfig
from tasks.sources.stac_catalog import StacCatalogSource
from tests import rasters

RES, N = 10.0, 16
ZONE_STEP, DATE_STEP = 1_000_000.0, 100_000.0
TAGS = {32631: 1, 32632: 2}
DAYS = (10, 20)
CENTRE = (6.0, 45.0)  # lon, lat: on the seam


def _origin(epsg: int) -> tuple[float, float]:
    """Top-left corner of the zone's raster: 1.6 km west and north of CENTRE, on the 10 m grid."""
    x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(*CENTRE)
    return round((x - 1600) / RES) * RES, round((y + 1600) / RES) * RES


# (epsg, height in pixels, how it declares its zone): both 3.2 km wide; zone 32 800 m shorter
SCENES = ((32631, 320, "proj:code"), (32632, 240, "proj:epsg"))


def point(epsg: int, lon: float, lat: float) -> Point:
    x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
    x, y = round(x / 50) * 50, round(y / 50) * 50
    plon, plat = Transformer.from_crs(epsg, 4326, always_xy=True).transform(x, y)
    return Point(_point_id(epsg, x, y), plon, plat, epsg, x, y)


IN_31 = point(32631, 5.995, 45.0)  # both zones' scenes cover its patch
IN_32 = point(32632, 6.005, 45.0)  # both zones' scenes cover its patch
# a zone-32 point 30 m north of its zone's scene's south edge: 5 rows of its patch lie beyond
_x, _y = _origin(32632)[0] + 2200, _origin(32632)[1] - 2370
EDGE_32 = Point(
    _point_id(32632, _x, _y),
    *Transformer.from_crs(32632, 4326, always_xy=True).transform(_x, _y),
    32632,
    _x,
    _y,
)
POINTS = [IN_31, IN_32, EDGE_32]


def make_catalog(root: Path, order: list[int]) -> str:
    """One item per (zone, day), zones in `order` within each day, in the catalog and in
    time: the first is sensed a second before the other (odc-stac orders a solar day's items
    by time, then id, and the first one's pixels win where both have data)."""
    catalog = pystac.Catalog(id="seam", description="two UTM zones' scenes overlapping")
    for k, day in enumerate(DAYS):
        for second, epsg in enumerate(order):
            _, height, declares = next(s for s in SCENES if s[0] == epsg)
            x0, y0 = _origin(epsg)
            rows, cols = np.mgrid[0:height, 0:320]
            values = TAGS[epsg] * ZONE_STEP + rows * 1000 + cols + 1 + DATE_STEP * k
            box = BoundingBox(x0, y0 - height * RES, x0 + 320 * RES, y0, crs=f"EPSG:{epsg}")
            lonlat = box.polygon.to_crs("EPSG:4326", resolution=100.0)
            props: dict[str, object] = {
                declares: f"EPSG:{epsg}" if declares == "proj:code" else epsg
            }
            item = pystac.Item(
                f"zone{epsg % 100}-day{day}",
                lonlat.json,
                list(lonlat.boundingbox),
                datetime(2021, 6, day, 10, 30, second, tzinfo=UTC),
                props,
                collection="seam-s2",
            )
            (root / item.id).mkdir(parents=True)
            path = root / item.id / "B02.tif"
            rasters.write_cog(
                path, values.astype(np.float32), epsg=epsg, x0=x0, y0=y0, res=RES, nodata=0
            )
            item.add_asset("B02", pystac.Asset(str(path), media_type=pystac.MediaType.COG))
            catalog.add_item(item)
    catalog.normalize_hrefs(str(root))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return str(root / "catalog.json")


def from_zone(p: Point, epsg: int) -> tuple[np.ndarray, np.ndarray]:
    """The (row, col) in zone `epsg`'s raster of the pixel holding each patch pixel's centre,
    (-1, -1) where that raster has none."""
    box = patch_geobox(p, N, RES)
    cols, rows = np.meshgrid(np.arange(N) + 0.5, np.arange(N) + 0.5)
    x, y = box.affine * (cols, rows)
    e, n = Transformer.from_crs(p.epsg, epsg, always_xy=True).transform(x, y)
    x0, y0 = _origin(epsg)
    height = next(s[1] for s in SCENES if s[0] == epsg)
    row = np.floor((y0 - np.asarray(n)) / RES).astype(int)
    col = np.floor((np.asarray(e) - x0) / RES).astype(int)
    inside = (row >= 0) & (row < height) & (col >= 0) & (col < 320)
    return np.where(inside, row, -1), np.where(inside, col, -1)


def median_value(epsg: int, row: np.ndarray, col: np.ndarray) -> np.ndarray:
    """The median over the two days of zone `epsg`'s pixel (row, col)."""
    return (TAGS[epsg] * ZONE_STEP + row * 1000 + col + 1 + DATE_STEP / 2).astype(np.float32)


def config(catalog: str) -> SensorConfig:
    return SensorConfig("sentinel-2-l2a", catalog, "seam-s2", RES, N, "2021-06-01", "2021-06-30")


@pytest.fixture(scope="module", params=["zone 31 first", "zone 32 first"])
def fetched(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Patches:
    order = [32631, 32632] if request.param == "zone 31 first" else [32632, 32631]
    catalog = make_catalog(tmp_path_factory.mktemp("seam"), order)
    return StacCatalogSource().fetch(POINTS, ["B02"], config(catalog))


@pytest.mark.parametrize("p", [IN_31, IN_32], ids=["zone 31", "zone 32"])
def test_zones__a_patch_both_zones_cover_is_its_own_zones_pixels_natively(
    fetched: Patches, p: Point
) -> None:
    row, col = from_zone(p, p.epsg)
    assert (row >= 0).all(), "the test's own premise: its own zone covers the patch"
    assert (from_zone(p, 32631 if p.epsg == 32632 else 32632)[0] >= 0).all(), "and the other"
    patch = fetched.bands["B02"][POINTS.index(p)]
    np.testing.assert_array_equal(patch, median_value(p.epsg, row, col))


def test_zones__beyond_its_zones_scene_a_patch_takes_the_other_zone_resampled(
    fetched: Patches,
) -> None:
    patch = fetched.bands["B02"][POINTS.index(EDGE_32)]
    row, col = from_zone(EDGE_32, 32632)
    own = row >= 0
    assert 0 < own.sum() < N * N, "the test's own premise: the patch crosses its scene's edge"
    np.testing.assert_array_equal(patch[own], median_value(32632, row, col)[own])
    # The rest from zone 31, by nearest neighbour: each value is the zone-31 pixel holding the
    # patch pixel's centre, or (GDAL's warp approximates the transform to 1/8 pixel) one that
    # holds a point within 1/8 pixel of it.
    assert np.isfinite(patch[~own]).all()
    assert ((patch[~own] // ZONE_STEP) == TAGS[32631]).all()
    rest = patch[~own] - TAGS[32631] * ZONE_STEP - 1 - DATE_STEP / 2
    got_row, got_col = rest // 1000, rest % 1000
    want_row, want_col = (a[~own] for a in from_zone(EDGE_32, 32631))
    assert (np.abs(got_row - want_row) <= 1).all() and (np.abs(got_col - want_col) <= 1).all()
    assert ((got_row == want_row) & (got_col == want_col)).mean() > 0.9


def test_zones__the_summary_count_is_the_points_that_needed_resampling(fetched: Patches) -> None:
    assert fetched.resampled == 1  # EDGE_32 only
    assert not fetched.notes


def test_zones__the_count_reaches_the_prefetch_report_and_the_summary_line(
    tmp_path: Path,
) -> None:
    catalog = make_catalog(tmp_path / "catalog", [32631, 32632])
    chunk = Chunk.of(0, 0, POINTS)
    report = prefetch_chunk(
        StacCatalogSource(), chunk, ["B02"], config(catalog), str(tmp_path / "inputs")
    )
    assert report.resampled == 1
    fetched = {"fetches": 1, "requests": 0, "bytes": 1, "retries": 0}
    line = imagery_line({**fetched, "resampled": report.resampled})
    assert "1 point(s) with pixels resampled from another UTM zone's scene" in line
    assert "resampled" not in imagery_line({**fetched, "resampled": 0})
