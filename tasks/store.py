"""The output store: one Zarr v3 store per export, laid out once, then filled one
chunk-aligned region at a time, each region marked done (its status) after its data.

Layout (the contract with users, see README):
- dims `time`, `point`, and per model `<model>_dim` (+ `<model>_y`, `<model>_x` for grids);
- coords `point_id`, `lon`, `lat`, `utm_epsg` on `point`; `time` (window start), `time_end`;
- per model: `<model>` float32 embeddings, `<model>_status` int8 (Status codes),
  `<model>_reason` text, `<model>_valid_fraction` float32;
- attrs: `swath` (format, fingerprint, software version, window) and, per model, its spec,
  weights, sensor configuration and inference options.
"""

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from datetime import date
from importlib.metadata import version
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from embedders.spec import Status
from tasks.plan import Chunk, Point

STORE_FORMAT = 1


class StoreMismatch(ValueError):
    """The output path holds something this export must not write into."""


@dataclass(frozen=True)
class ModelOutput:
    """One model's variables in the store, and everything that makes its results what they are."""

    name: str
    embed_dim: int
    grid_shape: tuple[int, int] | None  # None for pooled output
    identity: dict[str, Any] = field(default_factory=dict)  # JSON-able: spec, weights, config
    provenance: dict[str, Any] = field(default_factory=dict)  # recorded, not compared: files, notes


@dataclass(frozen=True)
class StoreLayout:
    points: tuple[Point, ...]
    chunk_size: int
    models: tuple[ModelOutput, ...]
    start: date
    end: date

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(
            json.dumps([STORE_FORMAT, self.chunk_size, str(self.start), str(self.end)]).encode()
        )
        for p in self.points:
            h.update(p.id.encode() + b"\n")
        for m in self.models:
            h.update(
                json.dumps([m.name, m.embed_dim, m.grid_shape, m.identity], sort_keys=True).encode()
            )
        return h.hexdigest()[:16]

    def summary(self) -> dict[str, Any]:
        return {
            "points": len(self.points),
            "chunk_size": self.chunk_size,
            "window": [str(self.start), str(self.end)],
            "models": {
                m.name: {
                    "dim": m.embed_dim,
                    "grid": m.grid_shape,
                    "weights": m.identity.get("weights"),
                }
                for m in self.models
            },
        }


def check_store(path: str, layout: StoreLayout) -> bool:
    """True when `path` already holds this export's store (resume), False when it is free.

    Raises StoreMismatch when the path holds anything else; nothing is written.
    """
    if not os.path.exists(path) or (os.path.isdir(path) and not os.listdir(path)):
        return False
    try:
        group = zarr.open_group(path, mode="r")
        meta = dict(group.attrs).get("swath")
    except (FileNotFoundError, ValueError, KeyError, zarr.errors.BaseZarrError) as e:
        raise StoreMismatch(
            f"output path {path} exists and is not a swath store (it holds no Zarr group); "
            "choose another --out or remove it"
        ) from e
    if not isinstance(meta, dict) or "fingerprint" not in meta:
        raise StoreMismatch(
            f"output path {path} exists and is not a swath store (a Zarr group without swath's "
            "attributes); choose another --out or remove it"
        )
    if meta["fingerprint"] != layout.fingerprint():
        diff = _difference(meta.get("layout", {}), layout.summary())
        raise StoreMismatch(
            f"output store {path} holds a different export ({diff}); "
            "use another --out, or remove the store to start over"
        )
    return True


def _difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    new = json.loads(json.dumps(new))  # tuples as lists, as stored
    for key in ("points", "chunk_size", "window", "models"):
        if old.get(key) != new.get(key):
            return f"{key}: store has {_short(old.get(key))}, this run has {_short(new.get(key))}"
    return "same sizes, different point ids or model settings"


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 160 else text[:157] + "..."


def create_store(path: str, layout: StoreLayout, attrs: dict[str, Any]) -> None:
    """Lay the store out once: coordinates written, data variables left to the fill values."""
    n, cs = len(layout.points), layout.chunk_size
    pts = layout.points
    coords = {
        "point_id": ("point", np.array([p.id for p in pts])),
        "lon": ("point", np.array([p.lon for p in pts], dtype="float64")),
        "lat": ("point", np.array([p.lat for p in pts], dtype="float64")),
        "utm_epsg": ("point", np.array([p.epsg for p in pts], dtype="int32")),
        "time": ("time", np.array([np.datetime64(layout.start, "ns")])),
        "time_end": ("time", np.array([np.datetime64(layout.end, "ns")])),
    }
    data_vars: dict[str, Any] = {}
    encoding: dict[str, dict[str, Any]] = {}
    for m in layout.models:
        for name, (dims, shape, dtype, fill) in _model_variables(m, n).items():
            chunks = (1, cs, *shape[2:])
            data_vars[name] = (dims, da.full(shape, fill, dtype=dtype, chunks=chunks))
            if dtype != "str":
                encoding[name] = {"fill_value": fill}
    ds = xr.Dataset(data_vars, coords=coords)
    for m in layout.models:
        ds[m.name].attrs.update(_variable_attrs(m))
        ds[f"{m.name}_status"].attrs.update(
            flag_values=[int(s) for s in Status],
            flag_meanings=" ".join(s.name.lower() for s in Status),
            long_name=f"state of each point's {m.name} embedding",
        )
    ds.lon.attrs.update(units="degrees_east", standard_name="longitude")
    ds.lat.attrs.update(units="degrees_north", standard_name="latitude")
    ds.attrs["swath"] = {
        **attrs,
        "format": STORE_FORMAT,
        "fingerprint": layout.fingerprint(),
        "layout": layout.summary(),
        "software": {"swath": version("swath"), "torch": version("torch"), "zarr": version("zarr")},
    }
    ds.attrs["models"] = {m.name: {**m.identity, **m.provenance} for m in layout.models}
    with warnings.catch_warnings():
        # Consolidated metadata lets `xr.open_zarr(path)` open the store in one read; zarr
        # warns that it is not yet in the v3 spec, which is known and accepted here.
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        ds.to_zarr(
            path, mode="w-", compute=False, zarr_format=3, encoding=encoding, consolidated=True
        )


def _model_variables(
    m: ModelOutput, n: int
) -> dict[str, tuple[tuple[str, ...], tuple[int, ...], Any, Any]]:
    if m.grid_shape is None:
        dims: tuple[str, ...] = ("time", "point", f"{m.name}_dim")
        shape: tuple[int, ...] = (1, n, m.embed_dim)
    else:
        dims = ("time", "point", f"{m.name}_dim", f"{m.name}_y", f"{m.name}_x")
        shape = (1, n, m.embed_dim, *m.grid_shape)
    return {
        m.name: (dims, shape, "float32", np.float32("nan")),
        f"{m.name}_status": (("time", "point"), (1, n), "int8", np.int8(Status.PENDING)),
        f"{m.name}_reason": (("time", "point"), (1, n), np.dtypes.StringDType(), ""),
        f"{m.name}_valid_fraction": (("time", "point"), (1, n), "float32", np.float32("nan")),
    }


def _variable_attrs(m: ModelOutput) -> dict[str, Any]:
    weights = m.identity.get("weights", {})
    return {
        "long_name": f"{m.name} embedding",
        "weights": f"{weights.get('kind', '?')} {weights.get('identity', '?')}",
        "identity": json.dumps(m.identity, sort_keys=True),
    }


def done_mask(path: str, model: str, chunks: list[Chunk], time_index: int = 0) -> list[bool]:
    """For each chunk, whether its region of `model` is marked done in the store."""
    status = np.asarray(zarr.open_array(path, path=f"{model}_status", mode="r")[time_index, :])
    return [bool((status[c.start : c.stop] != Status.PENDING).all()) for c in chunks]


@dataclass
class ChunkResult:
    """A chunk's results for one model, as written into the store."""

    embeddings: np.ndarray  # (n, D) or (n, D, gy, gx) float32
    status: np.ndarray  # (n,) int8
    reason: list[str]
    valid_fraction: np.ndarray  # (n,) float32


def write_chunk(
    path: str, chunk: Chunk, model: str, result: ChunkResult, time_index: int = 0
) -> None:
    """Write one chunk's region of one model, data first and the status (the done mark) last."""
    region = {"time": slice(time_index, time_index + 1), "point": slice(chunk.start, chunk.stop)}
    emb = result.embeddings[np.newaxis]
    emb_dims = ("time", "point", f"{model}_dim", f"{model}_y", f"{model}_x")[: emb.ndim]
    data = xr.Dataset(
        {
            model: (emb_dims, emb.astype("float32")),
            f"{model}_reason": (
                ("time", "point"),
                np.array([result.reason], dtype=np.dtypes.StringDType()),
            ),
            f"{model}_valid_fraction": (
                ("time", "point"),
                result.valid_fraction[np.newaxis].astype("float32"),
            ),
        }
    )
    data.to_zarr(path, region=region, mode="r+", consolidated=False)
    status = xr.Dataset(
        {f"{model}_status": (("time", "point"), result.status[np.newaxis].astype("int8"))}
    )
    status.to_zarr(path, region=region, mode="r+", consolidated=False)


def status_counts(path: str, model: str, time_index: int = 0) -> dict[str, int]:
    """How many points of `model` are in each state."""
    status = np.asarray(zarr.open_array(path, path=f"{model}_status", mode="r")[time_index, :])
    return {s.name.lower(): int((status == s).sum()) for s in Status}
