"""Google's Satellite Embedding through the Earth Engine source and the fake Earth Engine:
fetched by prefetch into the inputs store, pooled by `produce`, compared with the world."""

import dataclasses
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from embedders.spec import InferenceOptions, Status
from tasks.inputs import prefetch_chunk
from tasks.plan.chunks import Chunk
from tasks.plan.points import Point, _point_id
from tasks.products import gse
from tasks.products.registry import ProductError, ProductRequest
from tasks.sources.earthengine import EarthEngineSource
from tasks.sources.registry import EarthEngineOptions
from tasks.sources.sensors import SATELLITE_EMBEDDING
from tests.ee_server import FakeEarthEngine, Raster, serve_earthengine, service_account_key

COLLECTION = SATELLITE_EMBEDDING.collections["earthengine"]
EPSG, WEST, NORTH = 32633, 400_000.0, 6_000_000.0
N = 6


def unit_raster(seed: int, year: int) -> Raster:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(64, 100, 100)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=0, keepdims=True)
    mask = np.ones((100, 100), bool)
    mask[60:, 60:] = False  # no embedding there (water, no data)
    mask[20, 20:23] = False  # three pixels of one patch
    bands = {b: vectors[k] for k, b in enumerate(gse.BANDS)}
    return Raster(EPSG, WEST, NORTH, 10.0, bands, mask, f"{year}-01-01", f"{year + 1}-01-01")


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeEarthEngine]:
    with serve_earthengine({COLLECTION: [unit_raster(1, 2023), unit_raster(2, 2024)]}) as f:
        yield f


def request(fake: FakeEarthEngine, key: Path, start: date, end: date, output: str = "pooled"):
    return ProductRequest(
        start=start,
        end=end,
        patch_px=N,
        source="stac-catalog",  # the run's source: gse comes from Earth Engine whatever it is
        catalog="unused.json",
        collection=None,
        max_cloud_cover=30.0,
        source_options={"earthengine": EarthEngineOptions(ee_key_file=str(key), ee_url=fake.url)},
        options=InferenceOptions(output=output),
        weights="random",
        device="cpu",
    )


def point(col: int, row: int) -> Point:
    """The point whose patch's top-left pixel is (row, col) of the world."""
    x, y = WEST + (col + N / 2) * 10, NORTH - (row + N / 2) * 10
    return Point(_point_id(EPSG, x, y), 15.0, 54.0, EPSG, x, y)


def world_patch(raster: Raster, col: int, row: int) -> np.ndarray:
    """(64, N, N) of the world, NaN where masked."""
    values = np.stack([raster.bands[b][row : row + N, col : col + N] for b in gse.BANDS])
    return np.where(raster.mask[row : row + N, col : col + N], values, np.nan)


@pytest.fixture
def key(tmp_path: Path, fake: FakeEarthEngine) -> Path:
    service_account_key(tmp_path / "key.json", fake)
    return tmp_path / "key.json"


@pytest.mark.parametrize("output", ["pooled", "grid"])
def test_gse__pooled_is_the_unit_mean_of_valid_pixels_and_grid_the_map(fake, key, tmp_path, output):
    product = gse.resolve("gse", request(fake, key, date(2024, 3, 1), date(2024, 8, 31), output))
    (fetch,) = product.fetches
    cells = [(10, 10), (18, 18), (70, 70)]  # clear, three masked pixels, all masked
    chunk = Chunk.of(0, 0, tuple(point(c, r) for c, r in cells))
    inputs = str(tmp_path / "inputs")
    report = prefetch_chunk(EarthEngineSource(), chunk, fetch.bands, fetch.config, inputs)
    assert report.requests >= 1 and report.bytes_read > 64 * 4 * N * N
    c = fake.computations[-1]
    assert (c.collection, c.reducer, c.dates) == (
        COLLECTION,
        "ImageCollection.mosaic",
        ("2024-01-01", "2025-01-01"),
    )
    assert c.linked == () and c.property_filters == ()  # no cloud masking for embeddings
    result = product.produce(chunk, inputs)
    world = fake.world[COLLECTION][1]  # 2024's
    assert list(result.status) == [Status.OK, Status.OK, Status.NODATA]
    np.testing.assert_allclose(result.valid_fraction, [1.0, 1 - 3 / 36, 0.0], rtol=1e-6)
    assert "every pixel of its 6 px patch is masked" in result.reason[2]
    assert result.reason[:2] == ["", ""]
    for i, (col, row) in enumerate(cells[:2]):
        patch = world_patch(world, col, row)
        if output == "grid":
            np.testing.assert_array_equal(result.embeddings[i], patch)
        else:
            mean = np.nanmean(patch.reshape(64, -1).astype(np.float64), axis=1)
            by_hand = mean / np.linalg.norm(mean)
            np.testing.assert_allclose(result.embeddings[i], by_hand, rtol=1e-5, atol=1e-6)
            assert abs(np.linalg.norm(result.embeddings[i]) - 1) < 1e-5
    assert np.isnan(result.embeddings[2]).all()


def test_gse__the_year_of_the_window_is_fetched_over_the_whole_year(fake, key):
    product = gse.resolve("gse", request(fake, key, date(2023, 5, 1), date(2023, 5, 31)))
    assert (product.year, product.config.start, product.config.end) == (
        2023,
        "2023-01-01",
        "2023-12-31",
    )
    assert (product.config.source, product.config.composite) == ("earthengine", "mosaic")
    assert product.config.collection == COLLECTION
    other = gse.resolve("gse", request(fake, key, date(2024, 1, 1), date(2024, 12, 31)))
    assert product.key() != other.key() and product.identity() == other.identity()
    assert product.identity()["version"] == gse.VERSION
    assert "unit length" in product.identity()["pooling"]


def test_gse__a_window_over_two_years_is_refused_with_how_to_pick_one(fake, key):
    with pytest.raises(ProductError, match=r"gse is annual.*spans 2 years.*First day: 2024-01-01"):
        gse.resolve("gse", request(fake, key, date(2023, 6, 1), date(2024, 5, 31)))


def test_gse__the_runs_cloud_limit_is_not_its_own(fake, key):
    """--max-cloud-cover is for Sentinel-2: changing it must not refetch the embeddings."""
    a = request(fake, key, date(2024, 1, 1), date(2024, 12, 31))
    b = dataclasses.replace(a, max_cloud_cover=90.0)
    first, second = gse.resolve("gse", a), gse.resolve("gse", b)
    assert first.config.max_cloud_cover == 100.0
    assert first.config.key() == second.config.key() and first.key() == second.key()
