"""Tessera through geotessera: a store in its layout served over HTTP on 127.0.0.1, read
through GeoTesseraZarr, compared with values computed pixel by pixel from what was written."""

import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from pyproj import Transformer

from embedders.spec import InferenceOptions, Status
from tasks.plan.points import Point, _point_id
from tasks.products import tessera
from tasks.products.registry import ProductError, ProductRequest
from tests.fakes import Request, serve_directory
from tests.tessera_data import TesseraStore, build_tessera_store, expected_patch

N = 16  # patch side, pixels


@dataclass
class Served:
    store: TesseraStore
    url: str
    log: list[Request]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("tessera")
    store = build_tessera_store(root)
    log: list[Request] = []
    with serve_directory(root, log=log) as base:
        yield Served(store, f"{base}/tessera.zarr", log)


def point(lon: float, lat: float, spacing: float = 50) -> Point:
    epsg = 32600 + int((lon + 180) // 6) + 1
    x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
    x, y = round(x / spacing) * spacing, round(y / spacing) * spacing
    plon, plat = Transformer.from_crs(epsg, 4326, always_xy=True).transform(x, y)
    return Point(_point_id(epsg, x, y), plon, plat, epsg, x, y)


INSIDE_31 = point(5.992, 52.05)
ACROSS_SEAM = point(5.9995, 52.05)  # zone 31, its patch reaches 30 m into zone 32
INSIDE_32 = point(6.005, 52.05)
WATER = point(5.985, 52.042)
OUTSIDE = point(5.5, 52.05)  # west of every zone grid of the store


def request(url: str, start: date = date(2024, 1, 1), end: date = date(2024, 12, 31)):
    return ProductRequest(
        start=start,
        end=end,
        patch_px=N,
        source="stac-catalog",
        catalog="",
        collection=None,
        max_cloud_cover=100.0,
        source_options={},
        product_options={"tessera": tessera.TesseraOptions(tessera_store=url)},
        options=InferenceOptions(),
        weights="random",
        device="cpu",
    )


def data_ranges(log: list[Request]) -> dict[str, list[tuple[int, int]]]:
    """Byte ranges of chunk data asked for, per file (shard index reads, 'bytes=-n', apart)."""
    ranges = defaultdict(list)
    for r in log:
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", r.range or "")
        if m:
            ranges[r.path].append((int(m[1]), int(m[2])))
    return ranges


def test_tessera__patches_equal_the_written_values_across_the_zone_seam(served: Served) -> None:
    gt = tessera.open_store(served.url)
    points = [INSIDE_31, ACROSS_SEAM, INSIDE_32]
    values, cause = tessera.read_patches(gt, points, 2024, N)
    for i, p in enumerate(points):
        expected = expected_patch(served.store, p.epsg, p.x, p.y, N).reshape(-1, 128)
        np.testing.assert_array_equal(values[i], expected, err_msg=p.id)
        assert (cause[i] == tessera.VALID).all(), p.id
    # The patch across the seam really takes pixels of both zones.
    lon, _ = Transformer.from_crs(ACROSS_SEAM.epsg, 4326, always_xy=True).transform(
        *tessera.patch_centres(ACROSS_SEAM, N)
    )
    assert (lon >= 6.0).sum() > 0 and (lon < 6.0).sum() > 0


def test_tessera__each_store_chunk_is_read_once_per_chunk_of_points(served: Served) -> None:
    gt = tessera.open_store(served.url)
    points = [point(5.99 + 0.0005 * k, 52.05 - 0.0004 * k) for k in range(20)] + [INSIDE_32]
    before = len(served.log)
    tessera.read_patches(gt, points, 2024, N)
    ranges = data_ranges(served.log[before:])
    assert ranges, "no chunk data was read"
    for path, spans in ranges.items():
        spans.sort()
        for (_, end), (start, _) in pairwise(spans):
            assert start > end, f"{path}: bytes read twice ({spans})"


def test_tessera__water_and_no_coverage_are_nodata_with_the_reason(served: Served) -> None:
    gt = tessera.open_store(served.url)
    values, cause = tessera.read_patches(gt, [WATER, OUTSIDE, INSIDE_31], 2024, N)
    result = tessera.summarise(values, cause, 2024, grid=False)
    assert list(result.status) == [Status.NODATA, Status.NODATA, Status.OK]
    assert result.reason[0].startswith("water")
    assert (
        "no Tessera coverage" in result.reason[1] and "outside the store 100%" in result.reason[1]
    )
    assert np.isnan(result.embeddings[:2]).all() and np.isfinite(result.embeddings[2]).all()
    assert list(result.valid_fraction) == [0.0, 0.0, 1.0]


def test_tessera__pooled_is_the_mean_of_valid_pixels_and_grid_the_map(served: Served) -> None:
    gt = tessera.open_store(served.url)
    values, cause = tessera.read_patches(gt, [ACROSS_SEAM], 2024, N)
    pooled = tessera.summarise(values, cause, 2024, grid=False).embeddings
    expected = expected_patch(served.store, ACROSS_SEAM.epsg, ACROSS_SEAM.x, ACROSS_SEAM.y, N)
    by_hand = expected.reshape(-1, 128).astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(pooled[0], by_hand, rtol=1e-6, atol=1e-7)
    grid = tessera.summarise(values, cause, 2024, grid=True).embeddings
    assert grid.shape == (1, 128, N, N)
    np.testing.assert_array_equal(grid[0], expected.transpose(2, 0, 1))


def test_tessera__a_year_without_data_is_nodata(served: Served) -> None:
    gt = tessera.open_store(served.url)
    values, cause = tessera.read_patches(gt, [INSIDE_31], 2023, N)
    result = tessera.summarise(values, cause, 2023, grid=False)
    assert result.status[0] == Status.NODATA and "no data 100%" in result.reason[0]


def test_tessera__resolve_takes_the_year_of_the_window_and_records_the_dataset(
    served: Served,
) -> None:
    product = tessera.resolve("tessera", request(served.url))
    assert product.year == 2024
    assert product.identity()["dataset"] == "https://geotessera.org/model/1.1"
    assert product.output().identity == product.identity()
    assert product.output().provenance["store"] == served.url


def test_tessera__a_window_over_two_years_is_refused_with_how_to_pick_one(served: Served) -> None:
    with pytest.raises(
        ProductError, match=r"annual.*2 years.*First day: 2024-01-01, window › Last day"
    ):
        tessera.resolve("tessera", request(served.url, date(2023, 6, 1), date(2024, 5, 31)))


def test_tessera__a_year_the_store_lacks_is_refused_with_its_years(served: Served) -> None:
    with pytest.raises(ProductError, match=r"no year 2021; its years are \[2023, 2024\]"):
        tessera.resolve("tessera", request(served.url, date(2021, 1, 1), date(2021, 12, 31)))


def test_tessera__a_store_that_is_not_there_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ProductError, match="cannot open the Tessera store"):
        tessera.resolve("tessera", request(str(tmp_path / "missing.zarr")))


def test_windows__are_disjoint_and_cover_every_cell() -> None:
    rng = np.random.default_rng(1)
    cells = {(int(y), int(x)) for y, x in rng.integers(0, 40, (120, 2))}
    boxes = tessera.windows(cells)
    covered: dict[tuple[int, int], int] = defaultdict(int)
    for y0, y1, x0, x1 in boxes:
        for y in range(y0, y1):
            for x in range(x0, x1):
                covered[(y, x)] += 1
    assert cells <= set(covered)
    assert max(covered.values()) == 1


# --- the default store's meaning of NaN ------------------------------------------------------


@pytest.fixture(scope="module")
def dclimate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A store marked as geotessera's v1.1 dclimate store, the default `--tessera-store v1.1`."""
    root = tmp_path_factory.mktemp("tessera-dclimate")
    store = build_tessera_store(root, dclimate=True)
    log: list[Request] = []
    with serve_directory(root, log=log) as base:
        yield Served(store, f"{base}/tessera.zarr", log)


def test_tessera__in_the_default_store_nan_scales_are_missing_source_data_not_water(
    dclimate: Served,
) -> None:
    gt = tessera.open_store(dclimate.url)
    values, cause = tessera.read_patches(gt, [WATER, INSIDE_31], 2024, N)
    assert not (cause == tessera.WATER).any()
    result = tessera.summarise(values, cause, 2024, grid=False)
    assert list(result.status) == [Status.NODATA, Status.OK]
    assert result.reason[0].startswith("missing: Tessera's source data has no embedding")
    assert "water" not in result.reason[0].split(";")[0]
    assert np.isnan(result.embeddings[0]).all() and list(result.valid_fraction) == [0.0, 1.0]


def test_tessera__a_patch_partly_missing_in_the_default_store_names_both_causes(
    dclimate: Served,
) -> None:
    # On the NaN block's edge: pixels south-west of it are missing, the others valid.
    edge = point(5.99, 52.046)
    gt = tessera.open_store(dclimate.url)
    values, cause = tessera.read_patches(gt, [edge], 2024, N)
    assert (cause == tessera.MISSING).any() and (cause == tessera.VALID).any()
    assert not (cause == tessera.WATER).any()
    result = tessera.summarise(values, cause, 2024, grid=False)
    missing = float((cause == tessera.MISSING).mean())
    assert result.status[0] == Status.OK and result.valid_fraction[0] == pytest.approx(1 - missing)
