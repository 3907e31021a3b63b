"""The offline demo catalog: real Sentinel-2 COGs from the xarray-spatial sample, built once."""

from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio

from tasks.sources.demo import (
    DEMO_BBOX,
    DEMO_CATALOG_DIR,
    DEMO_COLLECTION,
    build_demo_catalog,
    demo_footprint_utm,
    sample_files,
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_catalog(tmp_path_factory.mktemp("cache"))


def _item(catalog: Path) -> pystac.Item:
    (item,) = pystac.Catalog.from_file(str(catalog)).get_items(recursive=True)
    return item


def test_demo__one_item_with_six_bands_named_from_the_band_tag(demo: Path) -> None:
    item = _item(demo)
    assert item.collection_id == DEMO_COLLECTION
    assert sorted(item.assets) == ["B02", "B03", "B04", "B07", "B11", "B12"]
    assert item.assets["B07"].extra_fields["eo:bands"][0]["common_name"] == "rededge3"
    assert item.assets["B02"].extra_fields["eo:bands"][0] == {
        "name": "B02",
        "common_name": "blue",
        "center_wavelength": 0.49,
    }


def test_demo__assets_carry_projection_and_raster_metadata(demo: Path) -> None:
    item = _item(demo)
    for key, asset in item.assets.items():
        fields = asset.extra_fields
        resolution = 20.0 if key in ("B11", "B12") else 10.0
        assert fields["proj:code"] == "EPSG:32719"
        assert fields["proj:shape"] == [200, 300]
        assert fields["proj:transform"] == [resolution, 0, 600000, 0, -resolution, 4700020]
        assert fields["raster:bands"] == [
            {"nodata": 0, "data_type": "uint16", "spatial_resolution": resolution}
        ]


def test_demo__cogs_read_back_with_crs_transform_and_the_sample_values(demo: Path) -> None:
    item = _item(demo)
    for key, asset in item.assets.items():
        with rasterio.open(asset.get_absolute_href()) as cog:
            assert cog.crs.to_epsg() == 32719
            assert cog.dtypes == ("uint16",)
            assert cog.nodata == 0
            assert cog.block_shapes == [(128, 128)]
            assert cog.transform.a == (20.0 if key in ("B11", "B12") else 10.0)
    blue = next(p for p in sample_files() if p.name == "blue_band.nc")
    with rasterio.open(f"netcdf:{blue}") as src:
        expected = src.read(1)
    with rasterio.open(item.assets["B02"].get_absolute_href()) as cog:
        np.testing.assert_array_equal(cog.read(1), expected.astype(np.uint16))


def test_demo__item_has_no_date_but_the_sentinel_2_era_and_says_so(demo: Path) -> None:
    item = _item(demo)
    assert item.datetime is None
    assert item.common_metadata.start_datetime is not None
    assert item.common_metadata.end_datetime is not None
    assert item.common_metadata.start_datetime.date().isoformat() == "2015-06-23"
    assert item.common_metadata.end_datetime.date().isoformat() == "2025-12-31"
    assert "no acquisition date" in item.properties["description"]


def test_demo__footprint_is_the_10m_bands_extent(demo: Path) -> None:
    item = _item(demo)
    assert item.bbox == pytest.approx(list(DEMO_BBOX))
    west, south, east, north = DEMO_BBOX
    assert -67.67 < west < east < -67.62 and -47.87 < south < north < -47.84
    utm = demo_footprint_utm()
    assert (utm.left, utm.bottom, utm.right, utm.top) == (600000, 4698020, 603000, 4700020)


def test_demo__catalog_is_self_contained_with_relative_hrefs(demo: Path) -> None:
    item_json = (demo.parent / _item(demo).id / f"{_item(demo).id}.json").read_text()
    assert str(demo.parent) not in item_json
    assert '"href": "./B02.tif"' in item_json


def test_demo__second_call_returns_the_catalog_without_rewriting(tmp_path: Path) -> None:
    first = build_demo_catalog(tmp_path)
    stamps = {p: p.stat().st_mtime_ns for p in first.parent.rglob("*")}
    second = build_demo_catalog(tmp_path)
    assert second == first == tmp_path / DEMO_CATALOG_DIR / "catalog.json"
    assert {p: p.stat().st_mtime_ns for p in first.parent.rglob("*")} == stamps
    assert sorted(p.name for p in tmp_path.iterdir()) == [DEMO_CATALOG_DIR]  # no temp dir left


def test_demo__builds_are_byte_identical(tmp_path: Path, demo: Path) -> None:
    other = build_demo_catalog(tmp_path)
    files = sorted(p.relative_to(demo.parent) for p in demo.parent.rglob("*") if p.is_file())
    assert files == sorted(
        p.relative_to(other.parent) for p in other.parent.rglob("*") if p.is_file()
    )
    assert len(files) == 8  # catalog, item, six COGs
    for rel in files:
        assert (demo.parent / rel).read_bytes() == (other.parent / rel).read_bytes(), rel
