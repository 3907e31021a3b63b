"""Check a whole store: every array. The coordinates, small arrays and metadata against the
sums recorded with them (tasks/store/soundness.py), and every (time entry, product, chunk) marked
done against its checksum (tasks/store/integrity.py).

`python -m flows.export --verify --out STORE` prints this report. It reads the store only:
no model library, no Prefect.
"""

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr
import zarr

from embedders.naming import setting
from tasks.plan.chunks import chunk_key
from tasks.plan.points import coords_digest
from tasks.store import soundness
from tasks.store.integrity import UNMARKED, UNREADABLE, Damage, check_done, open_array
from tasks.store.layout import CREATING, STORE_FORMAT, StoreMismatch, is_url, read_meta
from tasks.store.soundness import Finding


class NotAStore(ValueError):
    """The path holds no swath store this version can verify."""


class RootLost(ValueError):
    """The path holds swath's arrays, but its root zarr.json is missing or damaged: what
    records the store's layout and its sums, so nothing else can be checked."""


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


@dataclass(frozen=True)
class Report:
    """What `verify_store` found: the arrays checked as a whole (coordinates, small arrays,
    metadata), and per product and time entry its chunks."""

    findings: list[Finding]
    recorded: bool  # False: a store of an earlier swath, whose sums were never recorded
    checks: list[ProductCheck]

    @property
    def sound(self) -> bool:
        return not self.findings and not any(c.damaged for c in self.checks)


def verify_store(path: str) -> Report:
    """Check every array: the coordinates, small arrays and metadata against the sums
    recorded in the store, and every chunk marked done (or with a checksum and no status)
    for every time entry and product. Raises NotAStore."""
    meta = _swath_meta(path)
    layout = meta["layout"]
    try:
        findings, recorded = soundness.inspect(path, layout["models"])
    except soundness.RootDamaged as e:  # _swath_meta read it: only the seal can fail here
        return Report([Finding("zarr.json", str(e), soundness.no_fix())], True, [])
    chunks = stored_chunks(path, int(layout["chunk_size"]))
    checks = []
    for t, window in enumerate(_windows(path)):
        for product in layout["models"]:
            done, damaged = check_done(path, product, chunks, t, unmarked=True)
            marked = sum(done) + sum(d.why != UNMARKED for d in damaged)
            checks.append(ProductCheck(window, product, len(chunks), marked, damaged))
    return Report(findings, recorded, checks)


def _windows(path: str) -> list[str]:
    """Each time entry's window as first..last day (from the arrays, else as entry numbers:
    a damaged time array is among the findings)."""
    try:
        with xr.open_zarr(path) as ds:
            starts = ds["time"].values.astype("datetime64[D]")
            ends = ds["time_end"].values.astype("datetime64[D]")
        return [f"{s}..{e}" for s, e in zip(starts, ends, strict=True)]
    except (*UNREADABLE, KeyError, OSError):
        entries = open_array(path, "time_end", mode="r").shape[0]
        return [f"time entry {t}" for t in range(entries)]


def stored_chunks(path: str, chunk_size: int) -> list[StoredChunk]:
    """The store's chunks, named as the plan names them: their index and a digest of their
    points' zones and UTM coordinates (`utm_epsg`, `utm_x`, `utm_y`). Where those cannot be
    read (damage the report names), the digest is `????????`."""
    columns = [_read(path, name) for name in ("utm_epsg", "utm_x", "utm_y")]
    n = open_array(path, "utm_x", mode="r").shape[0]
    chunks = []
    for i, s in enumerate(range(0, n, chunk_size)):
        part = [c[s : s + chunk_size] if c is not None else None for c in columns]
        if any(c is None or not np.isfinite(c).all() for c in part):
            digest = "????????"
        else:
            digest = coords_digest(*part).hexdigest()[:8]  # type: ignore[arg-type]
        chunks.append(StoredChunk(i, s, min(s + chunk_size, n), chunk_key(i, digest)))
    return chunks


def _read(path: str, name: str) -> np.ndarray | None:
    try:
        return np.asarray(open_array(path, name, mode="r")[:])
    except (*UNREADABLE, FileNotFoundError, zarr.errors.BaseZarrError):
        return None


def _swath_meta(path: str) -> dict[str, Any]:
    if not is_url(path) and not os.path.isdir(path):
        what = "a file" if os.path.lexists(path) else "no such folder"
        raise NotAStore(f"{path} is not a swath store ({what}); check {setting('store')}")
    try:
        soundness.read_root(path)
    except soundness.RootDamaged as e:
        if soundness.looks_like_a_store(path):
            raise RootLost(str(e)) from e
    try:
        meta = read_meta(path).get("swath")
    except (FileNotFoundError, ValueError, KeyError, StoreMismatch, zarr.errors.BaseZarrError) as e:
        raise NotAStore(
            f"{path} is not a swath store (it holds no Zarr group); check {setting('store')}"
        ) from e
    if isinstance(meta, dict) and meta.get("state") == CREATING:
        raise NotAStore(
            f"{path} is a swath store still being laid out (an export stopped while creating "
            "it); rerun the export"
        )
    if not isinstance(meta, dict) or "fingerprint" not in meta:
        raise NotAStore(
            f"{path} is not a swath store (a Zarr group without swath's attributes); check "
            f"{setting('store')}"
        )
    if meta.get("format") != STORE_FORMAT:
        raise NotAStore(
            f"{path} was written by an older swath (store format {meta.get('format')}); it "
            f"records no checksums to verify (format {STORE_FORMAT} does)"
        )
    return meta
