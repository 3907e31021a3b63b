"""CF, geoemb: and STAC metadata of a store written by swath's own code."""

import json

import numpy as np
import pystac
import xarray as xr

from tasks.plan.points import plan_points
from tasks.plan.regions import bbox_region
from tasks.store import conventions
from tasks.store.layout import StoreLayout, create_store
from tests.stores import BBOX, MODELS, SPACING_M, WINDOW, write_store


def write_test_store(tmp_path):
    return write_store(tmp_path / "e.zarr").path


def layout_of(models: int) -> StoreLayout:
    points = tuple(plan_points(bbox_region(*BBOX), SPACING_M))
    return StoreLayout(points=points, chunk_size=8, models=MODELS[:models])


def test_conventions__cf_attributes_time_bounds_and_a_crs(tmp_path):
    path = write_test_store(tmp_path)
    with xr.open_zarr(path) as ds:
        assert ds.attrs["Conventions"] == "CF-1.11" and ds.attrs["featureType"] == "point"
        assert ds.crs.attrs["grid_mapping_name"] == "latitude_longitude"
        assert ds.time.attrs["bounds"] == "time_bounds"
        start, after = ds.time_bounds.values[0]
        end = ds.time_end.values[0]
        assert start == ds.time.values[0]
        assert after - end == np.timedelta64(1, "D")  # the day after the last day
        for name, var in ds.variables.items():
            assert "long_name" in var.attrs, name
        for name in [v for v in ds.data_vars if f"{v}_status" in ds]:
            assert ds[name].attrs["units"] == "1" and ds[name].attrs["grid_mapping"] == "crs"


def test_conventions__each_embedding_variable_carries_the_geoemb_fields(tmp_path):
    path = write_test_store(tmp_path)
    with xr.open_zarr(path) as ds:
        models = [v for v in ds.data_vars if f"{v}_status" in ds]
        assert len(models) > 1
        for name in models:
            attrs = ds[name].attrs
            assert attrs["geoemb:type"] in ("chip", "pixel")
            assert attrs["geoemb:dimensions"] == ds.sizes[f"{name}_dim"]
            assert attrs["geoemb:data_type"] == "float32"
            assert attrs["geoemb:source_data"].startswith("https://")
        # several products in one group: the group-scoped convention is not registered
        assert "zarr_conventions" not in ds.attrs


def test_conventions__a_single_product_store_registers_geoemb_at_its_root(tmp_path):
    layout = layout_of(models=1)
    path = str(tmp_path / "one.zarr")
    create_store(path, layout, WINDOW, attrs={})
    with xr.open_zarr(path) as ds:
        registered = json.loads(ds.attrs["zarr_conventions"])
        assert registered[0]["uuid"] == conventions.GEOEMB["uuid"]
        assert ds.attrs["geoemb:dimensions"] == layout.models[0].embed_dim


def test_conventions__a_stac_item_per_product_with_the_embeddings_extension(tmp_path):
    layout = layout_of(models=2)
    path = str(tmp_path / "e.zarr")
    create_store(path, layout, WINDOW, attrs={})
    written = conventions.write_stac_items(path, layout, WINDOW)
    assert len(written) == 2
    for item_path, m in zip(written, layout.models, strict=True):
        item = pystac.Item.from_file(item_path)
        assert conventions.STAC_EMBEDDINGS in item.stac_extensions
        assert item.properties["emb:dimensions"] == m.embed_dim
        assert item.properties["end_datetime"].startswith("2025-01-01")
        assert {link.rel for link in item.links} >= {"emb:model", "emb:source-data"}
        asset = item.assets["embeddings"]
        assert asset.get_absolute_href() == str(tmp_path / "e.zarr")
