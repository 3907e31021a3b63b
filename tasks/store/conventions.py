"""Standards users already read: CF attributes on the store and the `geoemb:` fields on each
embedding variable (the STAC catalog beside the store is tasks/store/stac.py).

- CF (https://cfconventions.org, 1.11): `Conventions`, `featureType: point` (one embedding
  per point), a `crs` variable for the lon/lat coordinates, `time` bounds from the window
  (`time_bounds`: first day, day after the last), `long_name` and `units` on every variable,
  `flag_values` of the status variables' own type, and a `history` line per change.
- `geoemb:` (github.com/geo-embeddings/embeddings-zarr-convention, v1) is scoped to a group
  that holds one embedding; a swath store holds several, so each embedding variable carries
  the convention's fields and registers it (`zarr_conventions`). A store of a single
  product also registers the convention at its root, with the same fields.

In the Zarr store the fields are what the convention's schema asks: arrays and objects.
netCDF takes no nested attributes, so `tasks.store.layout.open_store` gives them as JSON
text (`netcdf_attrs`).
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

import numpy as np

from tasks.store import compact

if TYPE_CHECKING:
    import xarray as xr

    from tasks.results import ModelOutput
    from tasks.store.layout import StoreLayout

CF_VERSION = "CF-1.11"
# The convention's registration, as its README and schema (v1) spell every field.
GEOEMB = {
    "schema_url": "https://raw.githubusercontent.com/geo-embeddings/embeddings-zarr-convention/"
    "refs/tags/v1/schema.json",
    "spec_url": "https://github.com/geo-embeddings/embeddings-zarr-convention/blob/v1/README.md",
    "uuid": "61c12cc5-0e28-4056-999a-480cf3fb7e4c",
    "name": "geoemb:",
    "description": "Geoembeddings convention for geospatial embedding arrays with model provenance",
}
# Quantization method names, after the convention's examples ("linear", "per_pixel_scale").
PER_VECTOR_SCALE = "per_vector_scale"  # int8: one float32 scale per vector
CAST = "cast"  # float16: each value rounded to half precision


def time_bounds(start: np.datetime64, end: np.datetime64) -> np.ndarray:
    """CF bounds of a window of whole days: [first day, day after the last day)."""
    after = (end.astype("datetime64[D]") + np.timedelta64(1, "D")).astype("datetime64[ns]")
    return np.array([[start, after]], dtype="datetime64[ns]")


def history_line(what: str) -> str:
    """One line of the CF `history` attribute: when, which program, what it did."""
    return f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} swath {version('swath')}: {what}"


def annotate(ds: xr.Dataset, layout: StoreLayout) -> None:
    """CF and geoemb: attributes on a store template (in place)."""
    ds.attrs.update(
        Conventions=CF_VERSION,
        featureType="point",
        title="swath embeddings: one vector (or map) per point, product and window",
        history=history_line("store laid out (tasks.store.layout.create_store)"),
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
    if len(layout.models) == 1:
        fields = geoemb_fields(layout.models[0], layout.dtype)
        if "zarr_conventions" in fields:
            ds.attrs.update(fields)


def write_stac_items(store: str, layout: StoreLayout, window: tuple[date, date]) -> list[str]:
    """The store's STAC catalog, `<store>.stac/` (tasks/store/stac.py, which builds on this
    module: imported here when called)."""
    from tasks.store.stac import write_catalog

    return write_catalog(store, layout, window)


def chip_side(m: ModelOutput) -> int | None:
    """The side in pixels of what one vector of `m` stands for, when that is a chip: each
    point's own patch (pooled), or one cell of its output grid (stride > 1); None for a
    vector per pixel, or when `m` declares no patch."""
    stride = m.facts.stride_px if m.facts else 1
    if m.grid_shape is not None and stride == 1:
        return None
    side = m.patch_px if m.grid_shape is None else stride
    return side or None


def embedding_type(m: ModelOutput) -> str:
    """`pixel` for a vector per input pixel (a grid at stride 1), else `chip`."""
    stride = m.facts.stride_px if m.facts else 1
    return "pixel" if m.grid_shape is not None and stride == 1 else "chip"


def geoemb_fields(m: ModelOutput, dtype: str = "float32") -> dict[str, Any]:
    """The geoemb: fields of one product's variable, from the product's declared facts, and
    the convention's registration (`zarr_conventions`) when they are complete. An output that
    declares no facts (a test's or a benchmark's) gets only the fields its shape gives, and
    no registration: a field is absent rather than empty or guessed."""
    fields: dict[str, Any] = {
        "geoemb:type": embedding_type(m),
        "geoemb:dimensions": m.embed_dim,
        "geoemb:data_type": dtype,
    }
    if m.facts is not None:
        fields["geoemb:gsd"] = float(m.facts.resolution_m)
        fields["geoemb:model"] = m.facts.url
        fields["geoemb:source_data"] = list(m.facts.source_data)
    if fields["geoemb:type"] == "chip" and (side := chip_side(m)):
        # Chips follow each point's own patch (the patch, or its grid's cells): no one grid
        # spans the points, so the layout is irregular.
        fields["geoemb:chip_layout"] = {"layout_type": "irregular", "chip_size": [side, side]}
    if dtype != "float32":
        fields["geoemb:quantization"] = _zarr_quantization(m.name, dtype)
    complete = m.facts is not None and (
        fields["geoemb:type"] == "pixel" or "geoemb:chip_layout" in fields
    )
    return {"zarr_conventions": [GEOEMB], **fields} if complete else fields


def _zarr_quantization(model: str, dtype: str) -> dict[str, Any]:
    """The convention's quantization object for a compact store (tasks/store/compact.py)."""
    if dtype == "int8":
        return {
            "method": PER_VECTOR_SCALE,
            "original_dtype": "float32",
            "quantized_dtype": "int8",
            # value = q * scale, the scale array lacking the embedding dim; NaN: no value
            "scale": {"type": "array", "array_name": compact.scale_name(model), "nodata": "NaN"},
        }
    return {"method": CAST, "original_dtype": "float32", "quantized_dtype": dtype}


def netcdf_attrs(attrs: dict[str, Any], dtype: np.dtype | None = None) -> dict[str, Any]:
    """`attrs` as netCDF takes them: an object, or a list holding anything but numbers, as
    JSON text; `flag_values` as an array of the variable's `dtype` (CF 3.5), which Zarr's
    JSON attributes do not keep."""
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if isinstance(value, dict) or (
            isinstance(value, list | tuple) and not all(_is_number(v) for v in value)
        ):
            out[key] = json.dumps(value)
        elif key == "flag_values" and dtype is not None:
            out[key] = np.asarray(value, dtype=dtype)
        else:
            out[key] = value
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool)
