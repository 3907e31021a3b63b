"""CF, geoemb: and STAC metadata of stores written by swath's own code, checked against the
published JSON schemas (local copies, tests/schemas.py) and CF's compliance checker."""

import json
from datetime import date
from pathlib import Path

import numpy as np
import pystac
import pytest
import xarray as xr
from compliance_checker.runner import CheckSuite, ComplianceChecker

from tasks.plan.points import plan_points
from tasks.plan.regions import bbox_region
from tasks.results import ModelOutput
from tasks.store import conventions, stac
from tasks.store.compact import Dtype
from tasks.store.layout import StoreLayout, add_window, create_store, open_store
from tests import schemas
from tests.stores import BBOX, GRID, MODELS, POOLED, SPACING_M, WINDOW, facts, write_store

DTYPES: tuple[Dtype, ...] = ("float32", "float16", "int8")
# A vector per pixel (stride 1): the `pixel` type, which needs no chip layout.
PIXEL = ModelOutput(
    "pixel_model",
    3,
    (2, 2),
    identity={"product": "model", "weights": {"kind": "random", "identity": "seed=1"}},
    facts=facts(3, 1),
    patch_px=2,
)
EVERY_KIND = (*MODELS, PIXEL)  # pooled chips, grid chips, tessera (pooled), pixels
BARE = ModelOutput("bare", 5, None, identity={"product": "bench"})  # declares no facts


def layout_of(models: tuple[ModelOutput, ...], dtype: Dtype = "float32") -> StoreLayout:
    points = tuple(plan_points(bbox_region(*BBOX), SPACING_M))
    return StoreLayout(points=points, chunk_size=8, models=models, dtype=dtype)


def laid_out(path: Path, models: tuple[ModelOutput, ...], dtype: Dtype = "float32") -> str:
    create_store(str(path), layout_of(models, dtype), WINDOW, attrs={})
    return str(path)


def zarr_json(store: str, node: str = "") -> dict:
    return json.loads((Path(store) / node / "zarr.json").read_text())


def test_conventions__cf_attributes_time_bounds_a_crs_and_history(tmp_path):
    path = write_store(tmp_path / "e.zarr").path
    with xr.open_zarr(path) as ds:
        assert ds.attrs["Conventions"] == "CF-1.11" and ds.attrs["featureType"] == "point"
        assert "swath" in ds.attrs["history"] and "create_store" in ds.attrs["history"]
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


def test_conventions__a_new_window_adds_a_history_line(tmp_path):
    layout = layout_of((POOLED,))
    path = laid_out(tmp_path / "e.zarr", (POOLED,))
    add_window(path, layout, (date(2025, 1, 1), date(2025, 12, 31)))
    lines = zarr_json(path)["attributes"]["history"].splitlines()
    assert len(lines) == 2 and lines[1].endswith("time entry added for 2025-01-01..2025-12-31")


@pytest.mark.parametrize("dtype", DTYPES)
def test_conventions__each_embedding_array_passes_the_geoemb_schema(tmp_path, dtype):
    """Several products in one group: each array carries the group-scoped convention's
    fields and registration, and passes the schema's `attributes` part."""
    path = laid_out(tmp_path / "e.zarr", EVERY_KIND, dtype)
    schema = schemas.geoemb_attributes_schema()
    for m in EVERY_KIND:
        attrs = zarr_json(path, m.name)["attributes"]
        assert schemas.errors(attrs, schema) == [], m.name
        assert attrs["zarr_conventions"] == [conventions.GEOEMB]
        assert attrs["geoemb:data_type"] == dtype
        assert attrs["geoemb:source_data"] == list(m.facts.source_data)
    kinds = {m.name: zarr_json(path, m.name)["attributes"]["geoemb:type"] for m in EVERY_KIND}
    assert kinds == {"pooled_model": "chip", "grid_model": "chip", "tessera": "chip"} | {
        "pixel_model": "pixel"
    }
    assert "zarr_conventions" not in zarr_json(path)["attributes"]  # not one embedding


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("model", [POOLED, GRID, PIXEL], ids=lambda m: m.name)
def test_conventions__a_single_product_store_passes_the_geoemb_schema_at_its_root(
    tmp_path, model, dtype
):
    path = laid_out(tmp_path / "one.zarr", (model,), dtype)
    root = zarr_json(path)
    assert schemas.errors(root, schemas.load(schemas.GEOEMB)) == []
    assert root["attributes"]["geoemb:dimensions"] == model.embed_dim


def test_conventions__chip_layouts_say_what_one_vector_stands_for(tmp_path):
    path = laid_out(tmp_path / "e.zarr", EVERY_KIND)
    layouts = {
        m.name: zarr_json(path, m.name)["attributes"].get("geoemb:chip_layout") for m in EVERY_KIND
    }
    assert layouts["pooled_model"] == {"layout_type": "irregular", "chip_size": [8, 8]}  # patch
    assert layouts["grid_model"] == {"layout_type": "irregular", "chip_size": [4, 4]}  # cell
    assert layouts["pixel_model"] is None


def test_conventions__compact_stores_describe_their_quantization(tmp_path):
    int8 = laid_out(tmp_path / "int8.zarr", (POOLED, GRID), "int8")
    for m in (POOLED, GRID):
        q = zarr_json(int8, m.name)["attributes"]["geoemb:quantization"]
        assert q["original_dtype"] == "float32" and q["quantized_dtype"] == "int8"
        assert q["scale"] == {"type": "array", "array_name": f"{m.name}_scale", "nodata": "NaN"}
        scale = zarr_json(int8, q["scale"]["array_name"])  # the array it names is there
        assert scale["shape"] == [1, zarr_json(int8, m.name)["shape"][1], *(m.grid_shape or ())]
    f16 = laid_out(tmp_path / "f16.zarr", (POOLED,), "float16")
    q = zarr_json(f16, POOLED.name)["attributes"]["geoemb:quantization"]
    assert q == {"method": "cast", "original_dtype": "float32", "quantized_dtype": "float16"}


def test_conventions__a_product_without_facts_is_neither_registered_nor_catalogued(tmp_path):
    path = laid_out(tmp_path / "e.zarr", (POOLED, BARE))
    attrs = zarr_json(path, "bare")["attributes"]
    assert "zarr_conventions" not in attrs and "geoemb:model" not in attrs
    assert attrs["geoemb:dimensions"] == 5
    written = conventions.write_stac_items(path, layout_of((POOLED, BARE)), WINDOW)
    assert not (tmp_path / "e.zarr.stac" / "bare").exists() and len(written) == 3
    alone = laid_out(tmp_path / "bare.zarr", (BARE,))
    assert "zarr_conventions" not in zarr_json(alone)["attributes"]
    assert conventions.write_stac_items(alone, layout_of((BARE,)), WINDOW) == []


def stac_catalog(tmp_path: Path, dtype: Dtype) -> tuple[str, list[dict]]:
    path = laid_out(tmp_path / "e.zarr", EVERY_KIND, dtype)
    written = conventions.write_stac_items(path, layout_of(EVERY_KIND, dtype), WINDOW)
    return path, [json.loads(Path(p).read_text()) for p in written]


@pytest.mark.parametrize("dtype", DTYPES)
def test_stac__items_and_collections_pass_the_embeddings_extension(tmp_path, dtype):
    """Every Item and product Collection passes the extension's current schema (and as it
    was since `data_type` replaced `emb:dtype`); the store's Collection passes STAC's."""
    _, documents = stac_catalog(tmp_path, dtype)
    extended = [d for d in documents if d["stac_extensions"]]  # Items, product Collections
    for doc in extended:
        for rev in schemas.CURRENT:
            assert schemas.errors(doc, schemas.stac_embeddings(rev, doc["type"])) == [], rev
            assert schemas.errors(doc, schemas.load(schemas.STAC_EMBEDDINGS[rev])) == [], rev
    kinds = sorted(d["type"] for d in extended)
    assert kinds == ["Collection"] * len(EVERY_KIND) + ["Feature"] * len(EVERY_KIND)
    (root,) = [d for d in documents if not d["stac_extensions"]]
    assert schemas.errors(root, schemas.load(schemas.STAC_COLLECTION)) == []
    compact = {"float32": None, "float16": "cast", "int8": "per_vector_scale"}[dtype]
    for item in (d for d in extended if d["type"] == "Feature"):
        assert item["properties"]["data_type"] == dtype
        assert item["properties"].get("emb:quantization", {}).get("method") == compact


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_stac__an_item_passes_every_v0_0_1_revision(tmp_path, dtype):
    """The first v0.0.1 draft on main (c3c8451) too. It lacked the quantization's `link`,
    which an int8 store's Item has (to its scale array), and wanted `emb:dtype` on a
    Collection where later revisions want `data_type`."""
    _, documents = stac_catalog(tmp_path, dtype)
    items = [d for d in documents if d["type"] == "Feature"]
    assert items
    for item in items:
        for rev in schemas.STAC_EMBEDDINGS:
            assert schemas.errors(item, schemas.stac_embeddings(rev, "Feature")) == [], rev
            assert schemas.errors(item, schemas.load(schemas.STAC_EMBEDDINGS[rev])) == [], rev


def test_stac__the_time_span_ends_at_the_last_second_of_the_last_day(tmp_path):
    _, documents = stac_catalog(tmp_path, "float32")
    for doc in documents:
        if doc["type"] == "Feature":
            span = (doc["properties"]["start_datetime"], doc["properties"]["end_datetime"])
        else:
            span = tuple(doc["extent"]["temporal"]["interval"][0])
        assert span == ("2024-01-01T00:00:00Z", "2024-12-31T23:59:59Z"), doc["id"]


def test_stac__the_catalog_reads_as_one_tree_down_to_the_store(tmp_path):
    path, _ = stac_catalog(tmp_path, "int8")
    root = pystac.Collection.from_file(str(tmp_path / "e.zarr.stac" / "collection.json"))
    assert root.assets["store"].get_absolute_href() == path
    children = {c.id: c for c in root.get_children()}
    assert set(children) == {f"e.zarr-{m.name}" for m in EVERY_KIND}
    for m in EVERY_KIND:
        collection = children[f"e.zarr-{m.name}"]
        assert collection.extra_fields["emb:dimensions"] == m.embed_dim
        rels = {link.rel for link in collection.links}
        assert {"emb:model", "emb:source-data", "item", "parent"} <= rels
        (item,) = collection.get_items()
        assert item.collection_id == collection.id
        assert item.assets["embeddings"].get_absolute_href() == path
        quantization = item.properties["emb:quantization"]
        assert quantization["method"] == "per_vector_scale"
        scale = Path(item.get_self_href()).parent / quantization["link"]["href"]
        assert scale.resolve() == (Path(path) / f"{m.name}_scale").resolve() and scale.is_dir()


def test_stac__licences_are_stac_identifiers_or_proprietary_with_a_link():
    assert stac._license("CC-BY-4.0 (weights)") == ("CC-BY-4.0", [])
    license, links = stac._license("not verified here; see https://github.com/x/y")
    assert license == "proprietary"
    assert links == [
        {
            "rel": "license",
            "href": "https://github.com/x/y",
            "title": "not verified here; see https://github.com/x/y",
        }
    ]


def cf_errors(nc: Path, tmp_path: Path) -> list[str]:
    """What the IOOS compliance checker's CF 1.11 suite reports as errors (its high
    priorities) for the netCDF file `nc`."""
    CheckSuite.load_all_available_checkers()
    report = tmp_path / "cf.json"
    ComplianceChecker.run_checker(
        str(nc), ["cf:1.11"], 0, "normal", output_filename=str(report), output_format="json"
    )
    results = json.loads(report.read_text())["cf:1.11"]
    return [f"{r['name']}: {m}" for r in results["high_priorities"] for m in r["msgs"]]


@pytest.mark.parametrize("dtype", DTYPES)
def test_cf__the_netcdf_export_has_no_compliance_checker_error(tmp_path, dtype):
    written = write_store(tmp_path / "e.zarr", dtype=dtype)
    nc = tmp_path / "e.nc"
    open_store(written.path).to_netcdf(nc, engine="scipy")
    assert cf_errors(nc, tmp_path) == []
    with xr.open_dataset(nc, engine="scipy") as back:
        flags = back.pooled_model_status.attrs["flag_values"]
        assert flags.dtype == back.pooled_model_status.dtype == np.int8
        assert json.loads(back.pooled_model.attrs["geoemb:source_data"]) == list(
            POOLED.facts.source_data
        )
        assert "create_store" in back.attrs["history"]
