"""Standards users already read: CF attributes on the store, the `geoemb:` fields on each
embedding variable, and a STAC Item per product with the embeddings extension.

- CF (https://cfconventions.org, 1.11): `Conventions`, `featureType: point` (one embedding
  per point), a `crs` variable for the lon/lat coordinates, `time` bounds from the window
  (`time_bounds`: first day, day after the last), `long_name` and `units` on every variable.
- `geoemb:` (github.com/geo-embeddings/embeddings-zarr-convention, v1) is scoped to a group
  that holds one embedding; a swath store holds several, so each embedding variable carries
  the convention's fields, flat (netCDF takes no nested attributes). A store of a single
  product also registers the convention at its root.
- STAC embeddings extension (github.com/geo-embeddings/embeddings-stac-specification,
  v0.0.1): `write_stac_items` writes `<store>.stac/<product>.json`, an Item whose
  `embeddings` asset is the store, with `emb:` fields and `emb:model` /
  `emb:source-data` links.

Every attribute here is a string, a number or a list of numbers, so the store still saves
as netCDF.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import xarray as xr

    from tasks.results import ModelOutput
    from tasks.store.layout import StoreLayout

CF_VERSION = "CF-1.11"
GEOEMB = {
    "uuid": "61c12cc5-0e28-4056-999a-480cf3fb7e4c",
    "name": "geoemb:",
    "spec_url": "https://github.com/geo-embeddings/embeddings-zarr-convention/blob/v1/README.md",
    "schema_url": "https://raw.githubusercontent.com/geo-embeddings/embeddings-zarr-convention/"
    "refs/tags/v1/schema.json",
}
STAC_EMBEDDINGS = "https://stac-extensions.github.io/embeddings/v0.0.1/schema.json"


def time_bounds(start: np.datetime64, end: np.datetime64) -> np.ndarray:
    """CF bounds of a window of whole days: [first day, day after the last day)."""
    after = (end.astype("datetime64[D]") + np.timedelta64(1, "D")).astype("datetime64[ns]")
    return np.array([[start, after]], dtype="datetime64[ns]")


def annotate(ds: xr.Dataset, layout: StoreLayout) -> None:
    """CF and geoemb: attributes on a store template (in place)."""
    ds.attrs.update(
        Conventions=CF_VERSION,
        featureType="point",
        title="swath embeddings: one vector (or map) per point, product and window",
    )
    ds["crs"] = ((), np.int32(0))
    ds["crs"].attrs.update(
        grid_mapping_name="latitude_longitude",
        epsg_code="EPSG:4326",
        long_name="coordinate reference system of lon and lat",
    )
    ds.time.attrs.update(bounds="time_bounds", standard_name="time")
    ds.time_bounds.attrs.update(long_name="bounds of the export window (end exclusive)")
    ds.utm_epsg.attrs.update(long_name="EPSG code of the UTM zone of each point's patch")
    ds.lon.attrs.update(long_name="longitude of the point")
    ds.lat.attrs.update(long_name="latitude of the point")
    for m in layout.models:
        fields = geoemb_fields(m, layout.dtype)
        ds[m.name].attrs.update(units="1", grid_mapping="crs", **fields)
        ds[f"{m.name}_valid_fraction"].attrs.update(
            units="1", long_name=f"share of the valid pixels of each point's {m.name} patch"
        )
    single = len(layout.models) == 1
    if single:
        fields = geoemb_fields(layout.models[0], layout.dtype)
        ds.attrs.update({"zarr_conventions": json.dumps([GEOEMB]), **fields})


def geoemb_fields(m: ModelOutput, dtype: str = "float32") -> dict[str, Any]:
    """The geoemb: fields of one product's variable, flat, from the product's declared facts.
    An output that declares none (a test's or a benchmark's) gets only the fields its shape
    gives: a field is absent rather than empty or guessed."""
    stride = m.facts.stride_px if m.facts else 1
    fields: dict[str, Any] = {
        "geoemb:type": "pixel" if m.grid_shape is not None and stride == 1 else "chip",
        "geoemb:dimensions": m.embed_dim,
        "geoemb:data_type": dtype,
    }
    if m.facts is not None:
        fields.update(
            {
                "geoemb:gsd": float(m.facts.resolution_m),
                "geoemb:model": m.facts.url,
                "geoemb:source_data": " ".join(m.facts.source_data),
            }
        )
    if fields["geoemb:type"] == "chip" and m.patch_px:
        # Each point's own patch, centred on the point: an irregular layout of chips.
        side = m.patch_px if m.grid_shape is None else stride
        fields["geoemb:chip_layout_type"] = "irregular"
        fields["geoemb:chip_size"] = [side, side]
    return fields


def _quantization(model: str, dtype: str) -> dict[str, Any]:
    """The STAC Item's `emb:quantization` for a compact store (tasks/store/compact.py)."""
    if dtype == "int8":
        method = {"method": "linear per vector", "scale": f"{model}_scale", "missing": -128}
        return {"emb:quantization": method}
    if dtype == "float16":
        return {"emb:quantization": {"method": "float16"}}
    return {}


def _links(m: ModelOutput) -> list[dict[str, str]]:
    """The Item's `emb:model` and `emb:source-data` links, from the product's facts."""
    if m.facts is None:
        return []
    return [
        {"rel": "emb:model", "href": m.facts.url},
        *[{"rel": "emb:source-data", "href": href} for href in m.facts.source_data],
    ]


def write_stac_items(store: str, layout: StoreLayout, window: tuple[Any, Any]) -> list[str]:
    """One STAC Item per product, `<store>.stac/<product>.json`, for local stores."""
    import shapely
    from shapely.geometry import mapping

    if "://" in store:
        return []
    folder = f"{store.rstrip('/')}.stac"
    os.makedirs(folder, exist_ok=True)
    west, south, east, north = layout.points.bounds
    hull = shapely.envelope(shapely.multipoints([(west, south), (east, north)]))
    start, end = window
    written = []
    for m in layout.models:
        fields = geoemb_fields(m, layout.dtype)
        item = {
            "type": "Feature",
            "stac_version": "1.0.0",
            "stac_extensions": [STAC_EMBEDDINGS],
            "id": f"{os.path.basename(store.rstrip('/'))}-{m.name}",
            "geometry": mapping(hull),
            "bbox": list(hull.bounds),
            "properties": {
                "start_datetime": f"{start}T00:00:00Z",
                "end_datetime": f"{end + timedelta(days=1)}T00:00:00Z",
                "datetime": None,
                "emb:type": fields["geoemb:type"],
                "emb:dimensions": m.embed_dim,
                "data_type": layout.dtype,
                **_quantization(m.name, layout.dtype),
                **({"gsd": fields["geoemb:gsd"]} if "geoemb:gsd" in fields else {}),
                "emb:runtime_parameters": m.identity,
            },
            "links": _links(m),
            "assets": {
                "embeddings": {
                    "href": os.path.relpath(store, folder),
                    "type": "application/vnd+zarr",
                    "roles": ["data"],
                    "title": f"variable {m.name} of the swath store",
                }
            },
        }
        if "geoemb:chip_size" in fields:
            item["properties"]["emb:chip_layout"] = {
                "layout_type": "variable_grid",
                "chip_size": fields["geoemb:chip_size"],
            }
        path = os.path.join(folder, f"{m.name}.json")
        with open(path, "w") as f:
            json.dump(item, f, indent=1, default=str)
        written.append(path)
    return written
