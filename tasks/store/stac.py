"""The STAC catalog beside a local store, with the embeddings extension
(github.com/geo-embeddings/embeddings-stac-specification, v0.0.1):

    <store>.stac/collection.json             the store: its extent, the store as an asset,
                                             each product's Collection as a child
    <store>.stac/<product>/collection.json   the product: `emb:type`, `emb:dimensions`,
                                             `data_type`, `gsd`, `emb:chip_layout`, and its
                                             `emb:model` and `emb:source-data` links
    <store>.stac/<product>/item.json         an Item over the stored windows: its
                                             `embeddings` asset is the store, its
                                             `emb:runtime_parameters` the product's identity,
                                             `emb:quantization` for a compact store

The extension puts `emb:type`, `emb:dimensions` and the chip layout on a Collection, and a
store holds products of several types and sizes, so each product has its own Collection. A
product that declares no facts (a test's or a benchmark's) has no model or source data to
link, which its Collection must: it gets no catalog entry.
"""

from __future__ import annotations

import json
import os
import re
from datetime import date
from typing import TYPE_CHECKING, Any

from tasks.store import compact
from tasks.store.conventions import CAST, PER_VECTOR_SCALE, chip_side, embedding_type

if TYPE_CHECKING:
    from tasks.results import ModelOutput
    from tasks.store.layout import StoreLayout

STAC_VERSION = "1.0.0"
STAC_EMBEDDINGS = "https://stac-extensions.github.io/embeddings/v0.0.1/schema.json"
ZARR_MEDIA_TYPE = "application/vnd+zarr"
# STAC 1.0.0's `license`: an SPDX identifier, `various` or `proprietary` (with a link).
SPDX_ID = re.compile(r"([\w\-.+]+)(?: \(.*\))?")


def write_catalog(store: str, layout: StoreLayout, window: tuple[date, date]) -> list[str]:
    """The store's STAC catalog, `<store>.stac/` (see above), for a local store; the paths of
    the files written. `window`: the first and last day the store holds (inclusive)."""
    if "://" in store:
        return []
    described = [m for m in layout.models if m.facts is not None]
    if not described:
        return []
    folder = f"{store.rstrip('/')}.stac"
    name = os.path.basename(store.rstrip("/"))
    extent = _extent(layout, window)
    root = _store_collection(name, described, extent, store, folder)
    written = [_dump(os.path.join(folder, "collection.json"), root)]
    for m in described:
        product = os.path.join(folder, m.name)
        collection = _collection(name, m, layout.dtype, extent)
        written.append(_dump(os.path.join(product, "collection.json"), collection))
        item = _item(name, m, layout, window, os.path.relpath(store, product))
        written.append(_dump(os.path.join(product, "item.json"), item))
    return written


def _dump(path: str, document: dict[str, Any]) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(document, f, indent=1)
    return path


def stac_interval(window: tuple[date, date]) -> tuple[str, str]:
    """STAC's start and end of a window of whole days: both inclusive, so the end is the last
    second of the last day (the CF `time_bounds` end is the day after, exclusive)."""
    return f"{window[0]}T00:00:00Z", f"{window[1]}T23:59:59Z"


def _extent(layout: StoreLayout, window: tuple[date, date]) -> dict[str, Any]:
    west, south, east, north = layout.points.bounds
    return {
        "spatial": {"bbox": [[west, south, east, north]]},
        "temporal": {"interval": [list(stac_interval(window))]},
    }


def _license(text: str) -> tuple[str, list[dict[str, str]]]:
    """A product's declared licence as STAC 1.0.0's `license` and its `license` links: the
    identifier when it is one (a note in brackets after it aside), else `proprietary` with a
    link to each URL the text names."""
    if match := SPDX_ID.fullmatch(text):
        return match.group(1), []
    urls = re.findall(r"https://[^\s;,)]+", text)
    return "proprietary", [{"rel": "license", "href": u, "title": text} for u in urls]


def _store_collection(
    name: str, products: list[ModelOutput], extent: dict[str, Any], store: str, folder: str
) -> dict[str, Any]:
    licenses = {_license(m.facts.licence)[0] for m in products if m.facts}
    return {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "stac_extensions": [],
        "id": name,
        "title": f"swath store {name}",
        "description": "Embeddings exported by swath: one vector (or map) per point, product "
        f"and window, for the products {', '.join(m.name for m in products)}.",
        "license": licenses.pop() if len(licenses) == 1 else "various",
        "extent": extent,
        "links": [
            {"rel": "root", "href": "./collection.json", "type": "application/json"},
            *[
                {"rel": "child", "href": f"./{m.name}/collection.json", "title": m.name}
                for m in products
            ],
        ],
        "assets": {
            "store": {
                "href": os.path.relpath(store, folder),
                "type": ZARR_MEDIA_TYPE,
                "roles": ["data"],
                "title": "the swath store (Zarr v3)",
            }
        },
    }


def _emb_links(m: ModelOutput) -> list[dict[str, str]]:
    """The `emb:model` and `emb:source-data` links, from the product's facts."""
    assert m.facts is not None
    return [
        {"rel": "emb:model", "href": m.facts.url, "title": m.facts.weights},
        *[{"rel": "emb:source-data", "href": href} for href in m.facts.source_data],
    ]


def _collection(name: str, m: ModelOutput, dtype: str, extent: dict[str, Any]) -> dict[str, Any]:
    assert m.facts is not None
    license_id, license_links = _license(m.facts.licence)
    collection: dict[str, Any] = {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "stac_extensions": [STAC_EMBEDDINGS],
        "id": f"{name}-{m.name}",
        "title": f"{m.name} embeddings of swath store {name}",
        "description": m.facts.description,
        "license": license_id,
        "extent": extent,
        "emb:type": embedding_type(m),
        "emb:dimensions": m.embed_dim,
        "data_type": dtype,
        "gsd": float(m.facts.resolution_m),
        "links": [
            {"rel": "root", "href": "../collection.json", "type": "application/json"},
            {"rel": "parent", "href": "../collection.json", "type": "application/json"},
            {"rel": "item", "href": "./item.json", "type": "application/geo+json"},
            *_emb_links(m),
            *license_links,
        ],
    }
    if collection["emb:type"] == "chip" and (side := chip_side(m)):
        # Each point's own patch (or its grid's cells), centred on the point: not one grid.
        collection["emb:chip_layout"] = {"layout_type": "variable_grid", "chip_size": [side, side]}
    return collection


def _quantization(m: ModelOutput, dtype: str, store_href: str) -> dict[str, Any]:
    """The Item's `emb:quantization` for a compact store (tasks/store/compact.py). The
    extension's `scale` is a list of numbers; int8 has a scale per vector, stored in the
    `<model>_scale` array, which the `link` names. The quantized type is the Item's
    `data_type` (no `quantized_dtype`, which the extension's first v0.0.1 draft lacked)."""
    if dtype == "int8":
        scale = compact.scale_name(m.name)
        return {
            "method": PER_VECTOR_SCALE,
            "original_dtype": "float32",
            "link": {
                "rel": "about",
                "href": f"{store_href}/{scale}",
                "type": ZARR_MEDIA_TYPE,
                "title": f"array {scale} of the store: value = q * {scale} along the embedding "
                f"dim, one float32 per vector; q = {int(compact.INT8_MISSING)} and a NaN scale "
                "mark a vector with no value",
            },
        }
    return {"method": CAST, "original_dtype": "float32"}


def _item(
    name: str, m: ModelOutput, layout: StoreLayout, window: tuple[date, date], store_href: str
) -> dict[str, Any]:
    import shapely
    from shapely.geometry import mapping

    assert m.facts is not None
    west, south, east, north = layout.points.bounds
    hull = shapely.envelope(shapely.multipoints([(west, south), (east, north)]))
    start, end = stac_interval(window)
    properties: dict[str, Any] = {
        "datetime": None,
        "start_datetime": start,
        "end_datetime": end,
        "data_type": layout.dtype,
        "gsd": float(m.facts.resolution_m),
        "emb:runtime_parameters": m.identity,
    }
    if layout.dtype != "float32":
        properties["emb:quantization"] = _quantization(m, layout.dtype, store_href)
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": [STAC_EMBEDDINGS],
        "id": f"{name}-{m.name}-{window[0]}-{window[1]}",
        "collection": f"{name}-{m.name}",
        "geometry": mapping(hull),
        "bbox": list(hull.bounds),
        "properties": properties,
        "links": [
            {"rel": "root", "href": "../collection.json", "type": "application/json"},
            {"rel": "parent", "href": "./collection.json", "type": "application/json"},
            {"rel": "collection", "href": "./collection.json", "type": "application/json"},
            *_emb_links(m),
        ],
        "assets": {
            "embeddings": {
                "href": store_href,
                "type": ZARR_MEDIA_TYPE,
                "roles": ["data"],
                "title": f"variable {m.name} of the swath store",
            }
        },
    }
