"""Check a whole store: every (time entry, product, chunk) marked done against its checksum.

`python -m flows.export --verify --out STORE` prints this report. It reads the store only:
no model library, no Prefect.
"""

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr
import zarr

from tasks.chunks import chunk_key
from tasks.integrity import Damage, check_done
from tasks.plan import coords_digest
from tasks.store import CREATING, STORE_FORMAT, StoreMismatch, is_url, read_meta


class NotAStore(ValueError):
    """The path holds no swath store this version can verify."""


@dataclass(frozen=True)
class StoredChunk:
    """A chunk as the store knows it (the plan's points are not needed to check it)."""

    index: int
    start: int
    stop: int
    key: str


@dataclass(frozen=True)
class ProductCheck:
    """What `verify_store` found for one product in one time entry."""

    window: str  # first..last day
    product: str
    chunks: int
    marked_done: int  # chunks whose status marks every point done
    damaged: list[Damage]  # of those, the ones whose data does not match


def verify_store(path: str) -> list[ProductCheck]:
    """Check every chunk marked done, for every time entry and product. Raises NotAStore."""
    meta = _swath_meta(path)
    layout = meta["layout"]
    chunks = stored_chunks(path, int(layout["chunk_size"]))
    with xr.open_zarr(path) as ds:
        starts = ds["time"].values.astype("datetime64[D]")
        ends = ds["time_end"].values.astype("datetime64[D]")
    checks = []
    for t, (start, end) in enumerate(zip(starts, ends, strict=True)):
        for product in layout["models"]:
            done, damaged = check_done(path, product, chunks, t)
            checks.append(
                ProductCheck(
                    f"{start}..{end}", product, len(chunks), sum(done) + len(damaged), damaged
                )
            )
    return checks


def stored_chunks(path: str, chunk_size: int) -> list[StoredChunk]:
    """The store's chunks, named as the plan names them: their index and a digest of their
    points' zones and UTM coordinates (`utm_epsg`, `utm_x`, `utm_y`)."""
    epsg, x, y = (
        np.asarray(zarr.open_array(path, path=name, mode="r")[:])
        for name in ("utm_epsg", "utm_x", "utm_y")
    )
    chunks = []
    for i, s in enumerate(range(0, len(epsg), chunk_size)):
        part = slice(s, s + chunk_size)
        digest = coords_digest(epsg[part], x[part], y[part]).hexdigest()[:8]
        chunks.append(StoredChunk(i, s, min(s + chunk_size, len(epsg)), chunk_key(i, digest)))
    return chunks


def _swath_meta(path: str) -> dict[str, Any]:
    if not is_url(path) and not os.path.isdir(path):
        raise NotAStore(f"{path} is not a swath store (no such folder); check --out")
    try:
        meta = read_meta(path).get("swath")
    except (FileNotFoundError, ValueError, KeyError, StoreMismatch, zarr.errors.BaseZarrError) as e:
        raise NotAStore(f"{path} is not a swath store (it holds no Zarr group); check --out") from e
    if isinstance(meta, dict) and meta.get("state") == CREATING:
        raise NotAStore(
            f"{path} is a swath store still being laid out (an export stopped while creating "
            "it); rerun the export"
        )
    if not isinstance(meta, dict) or "fingerprint" not in meta:
        raise NotAStore(
            f"{path} is not a swath store (a Zarr group without swath's attributes); check --out"
        )
    if meta.get("format") != STORE_FORMAT:
        raise NotAStore(
            f"{path} was written by an older swath (store format {meta.get('format')}); it "
            f"records no checksums to verify (format {STORE_FORMAT} does)"
        )
    return meta
