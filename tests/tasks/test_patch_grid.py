"""One tie rule for where a patch lies, in every source: its middle pixel (N odd) or middle
corner (N even) is the one nearest the point, and where four are equally near (a point on a
pixel corner with N odd, in a pixel's middle with N even), the one south-east of the point
(tasks/sources/registry.py patch_corner).

A COG on Tessera's zone-31 grid whose pixels hold their own (row, col) is read by the STAC
source; the Tessera store's patch is matched back to the store's pixels; both must be the
same window, for odd and even sizes, for a point on a pixel corner and one off it.
"""

from datetime import UTC, datetime

import numpy as np
import pystac
import pytest
from pyproj import Transformer

from tasks.plan.points import Point, _point_id
from tasks.products import tessera
from tasks.sources.earthengine import plan_grids
from tasks.sources.pixels import patch_geobox
from tasks.sources.registry import SensorConfig
from tasks.sources.stac_catalog import StacCatalogSource
from tests import rasters
from tests.tessera_data import TesseraStore, Zone, build_tessera_store

RES = 10.0
SIZES = [3, 4, 5, 16]


def on_corner(lon: float, lat: float) -> Point:
    epsg = 32600 + int((lon + 180) // 6) + 1
    x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
    x, y = round(x / 50) * 50, round(y / 50) * 50  # whole multiples of 10 m: a pixel corner
    return Point(_point_id(epsg, x, y), lon, lat, epsg, x, y)


CORNER = on_corner(5.992, 52.05)
OFF = Point("off", CORNER.lon, CORNER.lat, CORNER.epsg, CORNER.x + 3.0, CORNER.y - 3.0)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> TesseraStore:
    return build_tessera_store(tmp_path_factory.mktemp("tessera"))


@pytest.fixture(scope="module")
def catalog(store: TesseraStore, tmp_path_factory: pytest.TempPathFactory) -> str:
    """One item whose B02 covers Tessera's written zone-31 window, pixel for pixel, each pixel
    holding row * 1000 + col + 1 of that window."""
    zone = store.zones[31]
    root = tmp_path_factory.mktemp("grid")
    h, w = zone.scales.shape
    x0, y0 = zone.x[zone.col0] - RES / 2, zone.y[zone.row0] + RES / 2
    rows, cols = np.mgrid[0:h, 0:w]
    rasters.write_cog(
        root / "B02.tif",
        (rows * 1000 + cols + 1).astype(np.float32),
        epsg=zone.epsg,
        x0=x0,
        y0=y0,
        res=RES,
    )
    to_lonlat = Transformer.from_crs(zone.epsg, 4326, always_xy=True)
    (west, east), (north, south) = to_lonlat.transform([x0, x0 + w * RES], [y0, y0 - h * RES])
    box = [west - 0.01, south - 0.01, east + 0.01, north + 0.01]
    item = pystac.Item(
        "grid",
        {
            "type": "Polygon",
            "coordinates": [
                [
                    [box[0], box[1]],
                    [box[2], box[1]],
                    [box[2], box[3]],
                    [box[0], box[3]],
                    [box[0], box[1]],
                ]
            ],
        },
        box,
        datetime(2024, 6, 1, 10, tzinfo=UTC),
        {"proj:code": f"EPSG:{zone.epsg}"},
        collection="grid-s2",
    )
    item.add_asset("B02", pystac.Asset(str(root / "B02.tif"), media_type=pystac.MediaType.COG))
    cat = pystac.Catalog("grid", "pixels that say where they are")
    cat.add_item(item)
    cat.normalize_and_save(str(root / "catalog"), pystac.CatalogType.SELF_CONTAINED)
    return str(root / "catalog" / "catalog.json")


def window(zone: Zone, p: Point, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The rule's window, as (rows, cols) of the written window: it starts N // 2 pixels
    north-west of the pixel south-east of the point's nearest pixel corner."""
    cx, cy = round(p.x / RES) * RES, round(p.y / RES) * RES  # the nearest corner
    row, col = zone.pixel(cx + 1.0, cy - 1.0)  # the pixel south-east of it
    rows, cols = np.mgrid[0:n, 0:n]
    return rows + row - n // 2, cols + col - n // 2


def imagery_window(catalog: str, p: Point, n: int) -> tuple[np.ndarray, np.ndarray]:
    config = SensorConfig("sentinel-2-l2a", catalog, "grid-s2", RES, n, "2024-01-01", "2024-12-31")
    patch = StacCatalogSource().fetch([p], ["B02"], config).bands["B02"][0].astype(int) - 1
    return patch // 1000, patch % 1000


def tessera_window(store: TesseraStore, p: Point, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each Tessera patch pixel matched to the written pixel whose value it is."""
    zone = store.zones[31]
    values, _ = tessera.read_patches(tessera.open_store(str(store.path)), [p], 2024, n)
    known = {}
    row, col = zone.pixel(p.x, p.y) or (0, 0)
    for r in range(row - n, row + n + 1):
        for c in range(col - n, col + n + 1):
            deq = zone.embeddings[:, r, c].astype(np.float32) * zone.scales[r, c]
            known[deq.tobytes()] = (r, c)
    found = np.array([known[v.tobytes()] for v in values[0]]).reshape(n, n, 2)
    return found[..., 0], found[..., 1]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("p", [CORNER, OFF], ids=["on a corner", "3 m off it"])
def test_tie__imagery_and_tessera_read_the_same_window(
    store: TesseraStore, catalog: str, p: Point, n: int
) -> None:
    want_rows, want_cols = window(store.zones[31], p, n)
    for source, (rows, cols) in (
        ("stac-catalog", imagery_window(catalog, p, n)),
        ("tessera", tessera_window(store, p, n)),
    ):
        np.testing.assert_array_equal(rows, want_rows, err_msg=f"{source} rows, N={n}")
        np.testing.assert_array_equal(cols, want_cols, err_msg=f"{source} cols, N={n}")


@pytest.mark.parametrize("n", SIZES)
def test_tie__earth_engine_asks_for_the_same_grid(n: int) -> None:
    """Earth Engine resamples on its side: the grid asked for is the rule's window itself,
    on the 10 m grid, so its nearest-neighbour reading meets no pixel centre on an edge."""
    (grid,) = plan_grids([CORNER], n, RES)
    box = patch_geobox(CORNER, n, RES)
    assert (grid.x0, grid.y0) == (box.affine.c, box.affine.f)
    assert grid.x0 % RES == 0 and grid.y0 % RES == 0
    assert (grid.x0 + (n // 2) * RES, grid.y0 - (n // 2) * RES) == (CORNER.x, CORNER.y)


@pytest.mark.parametrize("n", [2, 4, 8, 16, 64])
def test_tie__even_sizes_on_a_corner_and_any_point_off_a_tie_are_unchanged(n: int) -> None:
    """The grid before the rule was (x - N r / 2, y + N r / 2): it stays that where there is
    no tie, so even sizes (the default) keep the values of existing stores."""
    for p in (CORNER, OFF):
        box = patch_geobox(p, n, RES)
        assert (box.affine.c, box.affine.f) == (p.x - n * RES / 2, p.y + n * RES / 2)
    odd = patch_geobox(OFF, n + 1, RES)
    assert (odd.affine.c, odd.affine.f) == (OFF.x - (n + 1) * 5.0, OFF.y + (n + 1) * 5.0)
