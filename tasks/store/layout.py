"""The output store: one Zarr v3 store per export, laid out once, then filled one
chunk-aligned region at a time, each region marked done (its status) after its data.

Layout (the contract with users, see README):
- dims `time`, `point`, and per model `<model>_dim` (+ `<model>_y`, `<model>_x` for grids);
- coords `point_id`, `lon`, `lat`, `utm_epsg` on `point`; `time` (window start), `time_end`;
- per model: `<model>` embeddings (float32; float16, or int8 with `<model>_scale` on
  request, see tasks/store/compact.py), `<model>_status` int8 (Status codes),
  `<model>_reason` text, `<model>_valid_fraction` float32, and `<model>_checksum` int32 on
  (time, chunk): each chunk's CRC-32, written before its status (tasks/store/integrity.py);
- text (`point_id`, `<model>_reason`) as UTF-8 bytes in uint8 arrays (see TEXT_ENCODING);
- every variable of a model sharded by write blocks of K plan chunks along `point` (and
  `chunk`), one plan chunk per inner Zarr chunk (tasks/plan/shards.py); with `shards="none"`
  one plain Zarr chunk (one file) per plan chunk instead;
- attrs, as JSON text: `swath` (format, fingerprint, software version, window) and `models`
  (per model, its spec, weights, sensor configuration and inference options); `read_meta`.
"""

import hashlib
import json
import os
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from importlib.metadata import version
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from embedders.naming import setting
from embedders.spec import Status
from tasks.plan.points import BLOCK_POINTS, PointTable
from tasks.plan.shards import Shards, choose_block_chunks, chunk_encoding
from tasks.results import ModelOutput
from tasks.store import compact, conventions, soundness
from tasks.store.coords import id_bytes, write_coords
from tasks.store.integrity import CHECKSUM_ATTRS, CHECKSUM_FILL, checksum_name, checksum_variable
from tasks.store.text import TEXT_ATTR, TEXT_ENCODING, decode_text

# 2: layout fingerprints from each product's declared, versioned identity (not its spec);
#    text as uint8 UTF-8 bytes; root attributes as JSON text.
# 3: the points' part of the fingerprint from their zones and UTM coordinates (a plan's
#    digest, no id formatted for it); UTM coordinates `utm_x`, `utm_y` on `point`.
STORE_FORMAT = 3

# Reasons are one line of free text (an error message); longer ones are cut at a character
# boundary and end in "..." (ASCII, so ASCII reasons stay storable in netCDF-3).
REASON_BYTES = 256
REASON_DIM = "reason_nchar"
META_ATTRS = ("swath", "models")  # root attributes held as JSON text (netCDF takes no dicts)


Window = tuple[date, date]  # first and last day, inclusive
CREATING = "creating"


class StoreMismatch(ValueError):
    """The output path holds something this export must not write into."""


@dataclass(frozen=True)
class StoreLayout:
    """What a store holds apart from its time entries: a store is reused when this matches."""

    points: PointTable  # a sequence of Point objects is taken as an in-memory table
    chunk_size: int
    models: tuple[ModelOutput, ...]
    dtype: compact.Dtype = "float32"  # how embeddings are stored (tasks/store/compact.py)
    shards: Shards = "auto"  # "none": one file per plan chunk (tasks/plan/shards.py)

    def __post_init__(self) -> None:
        if not isinstance(self.points, PointTable):
            object.__setattr__(self, "points", PointTable.from_points(tuple(self.points)))

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        # A compact dtype and an unsharded layout join the fingerprint; float32 and shards add
        # nothing, so that stores written before --dtype and --shards keep their fingerprint.
        compact_dtype = [] if self.dtype == "float32" else [self.dtype]
        unsharded = [] if self.shards == "auto" else ["shards=none"]
        h.update(json.dumps([STORE_FORMAT, self.chunk_size, *compact_dtype, *unsharded]).encode())
        h.update(self.points.digest.encode())
        for m in self.models:
            h.update(
                json.dumps([m.name, m.embed_dim, m.grid_shape, m.identity], sort_keys=True).encode()
            )
        return h.hexdigest()[:16]

    def summary(self) -> dict[str, Any]:
        """What the fingerprint stands for, as recorded in the store (to say what differs)."""
        return {
            "points": len(self.points),
            "chunk_size": self.chunk_size,
            "dtype": self.dtype,
            "shards": self.shards,
            "models": {
                m.name: {"dim": m.embed_dim, "grid": m.grid_shape, "identity": m.identity}
                for m in self.models
            },
        }


def create_store(
    path: str,
    layout: StoreLayout,
    window: Window,
    attrs: dict[str, Any],
    *,
    block_chunks: int | None = None,
) -> None:
    """Lay the store out once, with its first time entry: coordinates written, data variables
    left to their fill values. A crash leaves either no store or one a rerun lays out again:
    a local store is built beside `path` and renamed into place; an object-store URL (which
    has no rename) is marked as being created until its attributes are written last.

    Data variables are sharded by write blocks of `block_chunks` plan chunks (default:
    `default_block_chunks(layout)`), unless the layout asks for no shards."""
    k = None if layout.shards == "none" else block_chunks or default_block_chunks(layout)
    ds, encoding = _template(layout, window, block_chunks=k)
    models = {m.name: {**m.identity, **m.provenance} for m in layout.models}
    ds.attrs["models"] = json.dumps(models, sort_keys=True)
    meta = {
        **attrs,
        "format": STORE_FORMAT,
        "fingerprint": layout.fingerprint(),
        "layout": layout.summary(),
        "software": {"swath": version("swath"), "torch": version("torch"), "zarr": version("zarr")},
    }
    if is_url(path):
        ds.attrs["swath"] = json.dumps({"state": CREATING})
        with _quiet_consolidation():
            ds.to_zarr(path, mode="w", compute=False, zarr_format=3, encoding=encoding)
            coords = write_coords(path, layout.points)
            zarr.open_group(path, mode="r+").attrs.update({"swath": json.dumps(meta)})
            soundness.record(path, coords)  # consolidates, last
        return
    ds.attrs["swath"] = json.dumps(meta)
    staging = f"{path.rstrip('/')}.creating-{uuid.uuid4().hex[:8]}"
    with _quiet_consolidation():
        ds.to_zarr(
            staging, mode="w-", compute=False, zarr_format=3, encoding=encoding, consolidated=True
        )
        soundness.record(staging, write_coords(staging, layout.points))
    if os.path.isdir(path) and not os.listdir(path):
        os.rmdir(path)
    os.rename(staging, path)


def is_url(path: str) -> bool:
    """Whether a store path is an fsspec URL (s3://, gs://, file://, ...) rather than a path."""
    return "://" in path


def read_meta(path: str) -> dict[str, Any]:
    """The store's root attributes, `swath` and `models` parsed from their JSON text. Stores
    of format 1 hold them as nested objects, which are returned as they are."""
    attrs: dict[str, Any] = dict(zarr.open_group(path, mode="r").attrs)
    for key in META_ATTRS:
        if isinstance(text := attrs.get(key), str):
            try:
                attrs[key] = json.loads(text)
            except json.JSONDecodeError as e:
                raise StoreMismatch(
                    f"store {path}: root attribute {key!r} is not JSON ({e}); swath did not "
                    f"write it: choose another {setting('store')} or remove it"
                ) from e
    return attrs


TEXT_BLOCK = 16_384  # rows of a text array that open_store decodes at a time


def open_store(path: str) -> xr.Dataset:
    """`xr.open_zarr(path)` with its text arrays (point ids, reasons) decoded to strings,
    float16 and int8 embeddings decoded to float32 (int8 with their per-vector scales), and
    attributes as netCDF takes them (`conventions.netcdf_attrs`): nested ones as JSON text,
    `flag_values` of their variable's type. `open_store(path).to_netcdf(...)` saves it."""
    ds = xr.open_zarr(path)
    ds.attrs = conventions.netcdf_attrs(ds.attrs)
    for var in ds.variables.values():
        var.attrs = conventions.netcdf_attrs(var.attrs, var.dtype)
    for name in [n for n, v in ds.variables.items() if v.attrs.get(TEXT_ATTR)]:
        var = ds[name]
        if var.chunks and max(var.chunks[-2]) > TEXT_BLOCK:  # decode a part without the rest
            var = var.chunk({var.dims[-2]: TEXT_BLOCK})
        text = xr.apply_ufunc(
            decode_text,
            var,
            input_core_dims=[[var.dims[-1]]],
            dask="parallelized",
            output_dtypes=[np.dtypes.StringDType()],
            keep_attrs=True,
        )
        del text.attrs[TEXT_ATTR]
        ds = ds.assign_coords({name: text}) if name in ds.coords else ds.assign({name: text})
    for name in [n for n, v in ds.data_vars.items() if v.dtype == np.float16]:
        ds[name] = ds[name].astype("float32")
    for name in [n for n in ds.data_vars if compact.scale_name(str(n)) in ds.data_vars]:
        q, scale = ds[name], ds[compact.scale_name(str(name))]
        values = (q.astype("float32") * scale).where(q != compact.INT8_MISSING)
        ds[name] = values.transpose(*q.dims).assign_attrs(q.attrs)
        ds = ds.drop_vars(compact.scale_name(str(name)))
    return ds


def time_index(path: str, window: Window) -> int | None:
    """The index of `window` in the store's time entries, None when it has none for it.

    Raises StoreMismatch when the store holds another window starting the same day.
    """
    with xr.open_zarr(path, consolidated=True) as ds:
        starts = ds["time"].values.astype("datetime64[D]")
        ends = ds["time_end"].values.astype("datetime64[D]")
    for i, (s, e) in enumerate(zip(starts, ends, strict=True)):
        if s == np.datetime64(window[0]):
            if e != np.datetime64(window[1]):
                raise StoreMismatch(
                    f"store {path} holds a window {s}..{e}, this run asks for "
                    f"{window[0]}..{window[1]}: one entry per start day; use another "
                    f"{setting('store')}"
                )
            return i
    return None


def stored_windows(path: str) -> Window:
    """The first day of the store's first window and the last day of its last."""
    with xr.open_zarr(path, consolidated=True) as ds:
        starts = ds["time"].values.astype("datetime64[D]")
        ends = ds["time_end"].values.astype("datetime64[D]")
    return starts.min().astype(date), ends.max().astype(date)


def add_window(path: str, layout: StoreLayout, window: Window) -> int:
    """Append one time entry for `window` (the store's other entries are untouched)."""
    ds, _ = _template(layout, window)
    ds = ds.drop_vars([v for v in ds.variables if "time" not in ds[v].dims])
    ds.attrs = dict(zarr.open_group(path, mode="r").attrs)  # an append rewrites the root attrs
    line = conventions.history_line(f"time entry added for {window[0]}..{window[1]}")
    ds.attrs["history"] = "\n".join(filter(None, [ds.attrs.get("history"), line]))
    with _quiet_consolidation():
        ds.to_zarr(path, append_dim="time", compute=False, consolidated=True)
        soundness.record(path)  # the time arrays' values and every time array's shape
    index = time_index(path, window)
    assert index is not None
    return index


@contextmanager
def _quiet_consolidation() -> Iterator[None]:
    # Consolidated metadata lets `xr.open_zarr(path)` open the store in one read; zarr warns
    # that it is not yet in the v3 spec, which is known and accepted here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        yield


def default_block_chunks(layout: StoreLayout, *, at_most: int | None = None) -> int:
    """The plan chunks per shard of a new store of `layout` (tasks/plan/shards.py); at most
    `at_most`, the chunks one flow run carries."""
    n, cs = len(layout.points), layout.chunk_size
    widest = max(
        (
            int(np.prod(shape[2:], dtype=np.int64)) * np.dtype(dtype).itemsize
            for m in layout.models
            for _, shape, dtype, _ in _model_variables(m, n, layout.dtype).values()
        ),
        default=1,
    )
    return choose_block_chunks(-(-n // cs), widest * cs, at_most=at_most)


def _template(
    layout: StoreLayout, window: Window, *, block_chunks: int | None = 1
) -> tuple[xr.Dataset, dict[str, Any]]:
    """The store's variables, lazily: the point coordinates are placeholders that
    `write_coords` fills from the plan a block at a time, and data variables stay at their
    fill values until written (no chunk of them is stored). Data variables are sharded by
    `block_chunks` plan chunks; None: not sharded."""
    n, cs = len(layout.points), layout.chunk_size
    block = (min(BLOCK_POINTS, max(n, 1)),)
    coords = {
        "point_id": (
            ("point", "point_id_nchar"),
            da.zeros((n, id_bytes(layout.points)), dtype="uint8", chunks=(block[0], -1)),
        ),
        "lon": ("point", da.zeros(n, dtype="float64", chunks=block)),
        "lat": ("point", da.zeros(n, dtype="float64", chunks=block)),
        "utm_epsg": ("point", da.zeros(n, dtype="int32", chunks=block)),
        "utm_x": ("point", da.zeros(n, dtype="float64", chunks=block)),
        "utm_y": ("point", da.zeros(n, dtype="float64", chunks=block)),
        "time": ("time", np.array([np.datetime64(window[0], "ns")])),
        "time_end": ("time", np.array([np.datetime64(window[1], "ns")])),
    }
    data_vars: dict[str, Any] = {}
    encoding: dict[str, dict[str, Any]] = {}
    for m in layout.models:
        for name, (dims, shape, dtype, fill) in _model_variables(m, n, layout.dtype).items():
            stored = chunk_encoding((1, cs, *shape[2:]), block_chunks)
            data_vars[name] = (dims, da.full(shape, fill, dtype=dtype, chunks=_files(stored)))
            encoding[name] = {"fill_value": fill, **stored}
        dims, values, along = checksum_variable(m.name, -(-n // cs))
        stored = chunk_encoding((1, along), block_chunks)
        data_vars[checksum_name(m.name)] = (dims, da.from_array(values, chunks=_files(stored)))
        encoding[checksum_name(m.name)] = {"fill_value": values.dtype.type(CHECKSUM_FILL), **stored}
    ds = xr.Dataset(data_vars, coords=coords)
    ds.point_id.attrs.update({TEXT_ATTR: TEXT_ENCODING, "long_name": "point id, UTF-8 bytes"})
    for m in layout.models:
        ds[m.name].attrs.update(_variable_attrs(m, layout.dtype))
        if layout.dtype == "int8":
            ds[compact.scale_name(m.name)].attrs.update(
                long_name=f"scale of each {m.name} vector: value = {m.name} * this"
            )
        ds[f"{m.name}_reason"].attrs.update(
            {TEXT_ATTR: TEXT_ENCODING, "long_name": f"why {m.name} failed or has no data"}
        )
        ds[f"{m.name}_status"].attrs.update(
            flag_values=np.array([int(s) for s in Status], dtype=np.int8),  # the variable's type
            flag_meanings=" ".join(s.name.lower() for s in Status),
            long_name=f"state of each point's {m.name} embedding",
        )
        ds[checksum_name(m.name)].attrs.update(CHECKSUM_ATTRS)
    ds.utm_x.attrs.update(units="m", long_name="UTM easting of the point in its zone (utm_epsg)")
    ds.utm_y.attrs.update(units="m", long_name="UTM northing of the point in its zone (utm_epsg)")
    ds.lon.attrs.update(units="degrees_east", standard_name="longitude")
    ds.lat.attrs.update(units="degrees_north", standard_name="latitude")
    ds.time.attrs.update(long_name="first day of the export window")
    ds.time_end.attrs.update(long_name="last day of the export window")
    start, end = coords["time"][1][0], coords["time_end"][1][0]
    ds["time_bounds"] = (("time", "bnds"), conventions.time_bounds(start, end))
    conventions.annotate(ds, layout)
    return ds, encoding


def _files(encoding: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    """The shape of one stored file of an array: its shard, or its chunk where it has none."""
    return encoding.get("shards", encoding["chunks"])


def _model_variables(
    m: ModelOutput, n: int, dtype: str
) -> dict[str, tuple[tuple[str, ...], tuple[int, ...], Any, Any]]:
    if m.grid_shape is None:
        dims: tuple[str, ...] = ("time", "point", f"{m.name}_dim")
        shape: tuple[int, ...] = (1, n, m.embed_dim)
    else:
        dims = ("time", "point", f"{m.name}_dim", f"{m.name}_y", f"{m.name}_x")
        shape = (1, n, m.embed_dim, *m.grid_shape)
    fill = compact.INT8_MISSING if dtype == "int8" else np.dtype(dtype).type("nan")
    scale: dict[str, tuple[tuple[str, ...], tuple[int, ...], Any, Any]] = {}
    if dtype == "int8":  # one scale per vector: the embedding dim dropped
        scale[compact.scale_name(m.name)] = (
            dims[:2] + dims[3:],
            shape[:2] + shape[3:],
            "float32",
            np.float32("nan"),
        )
    return {
        m.name: (dims, shape, dtype, fill),
        **scale,
        f"{m.name}_status": (("time", "point"), (1, n), "int8", np.int8(Status.PENDING)),
        f"{m.name}_reason": (
            ("time", "point", REASON_DIM),
            (1, n, REASON_BYTES),
            "uint8",
            np.uint8(0),
        ),
        f"{m.name}_valid_fraction": (("time", "point"), (1, n), "float32", np.float32("nan")),
    }


def _variable_attrs(m: ModelOutput, dtype: str) -> dict[str, Any]:
    weights = m.identity.get("weights", {})
    return {
        "long_name": f"{m.name} embedding",
        "quantization": compact.quantization_attr(dtype).replace("{model}", m.name),
        "weights": f"{weights.get('kind', '?')} {weights.get('identity', '?')}",
        "identity": json.dumps(m.identity, sort_keys=True),
    }


def status_counts(path: str, model: str, t: int) -> dict[str, int]:
    """How many points of `model` are in each state."""
    status = np.asarray(zarr.open_array(path, path=f"{model}_status", mode="r")[t, :])
    return {s.name.lower(): int((status == s).sum()) for s in Status}
