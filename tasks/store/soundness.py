"""Every array of a store is checked, not only the products' data.

The products' arrays (embeddings and their scales, reasons, valid fractions, statuses)
are checked a chunk at a time against `<model>_checksum` (tasks/store/integrity.py). Everything
else is recorded when the store is laid out or gets a window, in the root attribute
`swath_sums` (JSON text), and sealed with the CRC-32 of all root attributes
(`swath_seal`):
- `metadata`: each array's zarr.json, as a CRC-32 of its canonical JSON; the root holds a
  second copy of each (consolidated metadata), so one damaged copy is restored from the
  other;
- `coords`: the point coordinates (tasks/store/coords.py), a CRC-32 per block of the plan;
- `values`: the small arrays (`time`, `time_end`, `time_bounds`, `crs`), by value.
`--verify` checks all of it; a rerun restores metadata from its good copy, coordinates from
the plan and the small arrays from their recorded values. The root's own zarr.json cannot
be restored: it records which export wrote the store.
"""

import json
import warnings
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from fsspec.core import url_to_fs

from embedders.naming import setting
from tasks.plan.points import BLOCK_POINTS, PointTable
from tasks.store.coords import POINT_COORDS, block_crcs, repair_coords
from tasks.store.integrity import UNREADABLE, checksum_name, data_names, open_array

SUMS_ATTR = "swath_sums"
SEAL_ATTR = "swath_seal"
SUMS_VERSION = 1
BY_VALUE = ("time", "time_end", "time_bounds", "crs")


class RootDamaged(ValueError):
    """The store's root zarr.json is missing, not JSON, or its attributes were changed."""


@dataclass(frozen=True)
class Finding:
    """Something wrong with one array (or the root), and what repairs it."""

    array: str
    why: str
    fix: str


RERUN = "a rerun of the export repairs it"


def no_fix() -> str:
    return f"a rerun cannot repair it: export into another {setting('store')}"


def _crc(text: str) -> int:
    return zlib.crc32(text.encode())


def metadata_crc(meta: dict[str, Any]) -> int:
    return _crc(json.dumps(meta, sort_keys=True, separators=(",", ":")))


def seal(attrs: dict[str, Any]) -> int:
    """The CRC-32 of every root attribute but the seal itself, as a signed 32-bit number:
    netCDF-3 (a store saved with `to_netcdf`) holds no integer attribute of 2**31 or more."""
    crc = _crc(json.dumps({k: v for k, v in attrs.items() if k != SEAL_ATTR}, sort_keys=True))
    return crc - 2**32 if crc >= 2**31 else crc


def sealed(attrs: dict[str, Any]) -> bool:
    """Whether the attributes carry their seal: signed, or unsigned as swath wrote it
    before stores were saved to netCDF-3."""
    recorded = attrs.get(SEAL_ATTR)
    return isinstance(recorded, int) and recorded % 2**32 == seal(attrs) % 2**32


def record(path: str, coords: dict[str, list[int]] | None = None) -> None:
    """Record the sums of every array but the products' data in the root attributes, seal
    them and consolidate the metadata. `coords`: the coordinates' CRC-32s per block as
    written (tasks/store/coords.py); else those recorded before, else read from the store."""
    group = zarr.open_group(path, mode="r+", use_consolidated=False)
    names = sorted(name for name, _ in group.arrays())
    fs, root = url_to_fs(path)
    if coords is None and isinstance(text := group.attrs.get(SUMS_ATTR), str):
        coords = json.loads(text).get("coords")
    sums = {
        "version": SUMS_VERSION,
        "block_points": BLOCK_POINTS,
        "metadata": {n: metadata_crc(_json(fs, f"{root}/{n}/zarr.json")) for n in names},
        "coords": coords
        or {n: block_crcs(zarr.open_array(path, path=n, mode="r")) for n in POINT_COORDS},
        "values": {
            n: np.asarray(zarr.open_array(path, path=n, mode="r")[...]).tolist()
            for n in BY_VALUE
            if n in names
        },
    }
    attrs = {**group.attrs, SUMS_ATTR: json.dumps(sums, sort_keys=True)}
    group.attrs.update({SUMS_ATTR: attrs[SUMS_ATTR], SEAL_ATTR: seal(attrs)})
    with warnings.catch_warnings():  # zarr: consolidated metadata is not in the v3 spec (known)
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(path)


def _json(fs: Any, key: str) -> dict[str, Any]:
    """A JSON file of the store. Raises FileNotFoundError, or ValueError when not JSON."""
    value = json.loads(fs.cat_file(key))
    if not isinstance(value, dict):
        raise ValueError(f"{key} holds JSON {type(value).__name__}, not an object")
    return value


@dataclass
class Root:
    """The store's root zarr.json, read and checked."""

    attrs: dict[str, Any]
    sums: dict[str, Any] | None  # None: a store of an earlier swath, which recorded none
    copies: dict[str, dict[str, Any]]  # the consolidated copy of each array's metadata


def read_root(path: str) -> Root:
    """The root zarr.json. Raises RootDamaged when it is missing, not JSON or changed."""
    fs, root = url_to_fs(path)
    try:
        meta = _json(fs, f"{root}/zarr.json")
    except FileNotFoundError as e:
        raise RootDamaged("its root zarr.json is missing") from e
    except (ValueError, UnicodeDecodeError) as e:
        raise RootDamaged(f"its root zarr.json is not JSON ({e})") from e
    attrs = meta.get("attributes") or {}
    sums = None
    if SUMS_ATTR in attrs:
        if not sealed(attrs):
            raise RootDamaged("its root attributes were changed after swath wrote them")
        sums = json.loads(attrs[SUMS_ATTR])
    copies = (meta.get("consolidated_metadata") or {}).get("metadata") or {}
    return Root(attrs, sums, copies)


def looks_like_a_store(path: str) -> bool:
    """Whether `path` holds swath's arrays, whatever its root zarr.json says."""
    fs, root = url_to_fs(path)
    return all(fs.exists(f"{root}/{n}/zarr.json") for n in ("point_id", "utm_x", "utm_y"))


def metadata_states(path: str, root: Root) -> dict[str, tuple[str, str]]:
    """Per array: the state of its own zarr.json and of the root's copy of it, each "ok",
    "missing", "damaged" (not JSON) or "changed" (not what swath recorded)."""
    fs, base = url_to_fs(path)
    recorded = (root.sums or {}).get("metadata", {})
    listed = {
        entry.rstrip("/").rsplit("/", 1)[-1]
        for entry in fs.ls(base, detail=False)
        if fs.exists(f"{entry.rstrip('/')}/zarr.json")
    }
    states = {}
    for name in sorted(set(root.copies) | set(recorded) | listed):
        try:
            own = _json(fs, f"{base}/{name}/zarr.json")
            own_state = _state(own, recorded.get(name), root.copies.get(name))
        except FileNotFoundError:
            own, own_state = None, "missing"
        except (ValueError, UnicodeDecodeError):
            own, own_state = None, "damaged"
        copy = root.copies.get(name)
        copy_state = "missing" if copy is None else _state(copy, recorded.get(name), own)
        states[name] = (own_state, copy_state)
    return states


def _state(meta: dict[str, Any], recorded: int | None, other: dict[str, Any] | None) -> str:
    if recorded is not None:
        return "ok" if metadata_crc(meta) == recorded else "changed"
    return "ok" if other is None or meta == other else "changed"  # no record: copies agree


def metadata_findings(states: dict[str, tuple[str, str]]) -> list[Finding]:
    findings = []
    for name, (own, copy) in states.items():
        fix = RERUN if "ok" in (own, copy) else no_fix()
        if own != "ok":
            findings.append(Finding(name, f"its zarr.json is {own}", fix))
        if copy != "ok":
            findings.append(Finding(name, f"the root's copy of its metadata is {copy}", fix))
    return findings


def coord_findings(path: str, root: Root) -> list[Finding]:
    """The point coordinates against their recorded CRC-32s per block."""
    findings = []
    for name, want in (root.sums or {}).get("coords", {}).items():
        try:
            array = open_array(path, name, mode="r")
            got = block_crcs(array)
        except (*UNREADABLE, FileNotFoundError, KeyError, zarr.errors.BaseZarrError) as e:
            findings.append(Finding(name, f"cannot be read ({e})", RERUN))
            continue
        if len(got) != len(want):
            findings.append(Finding(name, f"has {array.shape[0]} points, not as written", RERUN))
            continue
        bad = [i * BLOCK_POINTS for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
        spans = [f"{a}..{min(a + BLOCK_POINTS, array.shape[0]) - 1}" for a in bad[:3]]
        if spans:
            findings.append(
                Finding(name, f"points {', '.join(spans)} differ from what swath wrote", RERUN)
            )
    return findings


def value_findings(path: str, root: Root) -> list[Finding]:
    """The small arrays (time, time_end, time_bounds, crs) against their recorded values."""
    findings = []
    for name, want in (root.sums or {}).get("values", {}).items():
        try:
            got = np.asarray(open_array(path, name, mode="r")[...]).tolist()
        except (*UNREADABLE, FileNotFoundError, KeyError, zarr.errors.BaseZarrError) as e:
            findings.append(Finding(name, f"cannot be read ({e})", RERUN))
            continue
        if got != want:
            findings.append(Finding(name, f"holds {got}, swath wrote {want}", RERUN))
    return findings


def coverage_findings(names: Iterable[str], root: Root, models: Iterable[str]) -> list[Finding]:
    """Arrays no check covers: none of a product's, the coordinates or the small arrays."""
    covered = set(POINT_COORDS) | set(BY_VALUE)
    for model in models:
        covered |= {*data_names(model), f"{model}_status", f"{model}_scale", checksum_name(model)}
    return [
        Finding(name, "is not an array swath writes: no check covers it", "remove it")
        for name in sorted(set(names) - covered)
    ]


def inspect(path: str, models: Iterable[str]) -> tuple[list[Finding], bool]:
    """Every array but the products' data, checked: what is wrong, and whether sums were
    recorded (False: a store of an earlier swath; only its metadata copies are compared).
    Raises RootDamaged."""
    root = read_root(path)
    states = metadata_states(path, root)
    findings = metadata_findings(states)
    findings += coord_findings(path, root) + value_findings(path, root)
    findings += coverage_findings(states, root, models)
    return findings, root.sums is not None


def restore_metadata(path: str, root: Root, states: dict[str, tuple[str, str]]) -> list[str]:
    """Write back each array's zarr.json from the root's good copy; the root's copies are
    made again from the arrays by `record`. Raises RootDamaged when both are bad."""
    fs, base = url_to_fs(path)
    done = []
    for name, (own, copy) in states.items():
        if own == "ok" or copy != "ok":
            if own != "ok":
                raise RootDamaged(
                    f"the metadata of its array {name} is damaged in both copies (its "
                    f"zarr.json is {own}, the root's copy {copy})"
                )
            continue
        fs.pipe_file(f"{base}/{name}/zarr.json", json.dumps(root.copies[name], indent=2).encode())
        done.append(f"{name}: its zarr.json ({own}) restored from the root's copy")
    return done


def restore_values(path: str, root: Root) -> list[str]:
    """Write back the small arrays that differ from their recorded values."""
    done = []
    for finding in value_findings(path, root):
        if finding.array in BY_VALUE and root.sums is not None:
            want = root.sums["values"][finding.array]
            array = open_array(path, finding.array, mode="r+")
            array[...] = np.asarray(want, dtype=array.dtype)
            done.append(f"{finding.array}: {finding.why}; rewritten")
    return done


def repair(path: str, table: PointTable) -> list[str]:
    """Repair what a rerun can in a store of this export (its fingerprint matched): array
    metadata from its good copy, coordinates from the plan (`table`), the small arrays from
    their recorded values; record the sums where something changed or none were (a store
    of an earlier swath). One line per repair. Raises RootDamaged."""
    root = read_root(path)
    states = metadata_states(path, root)
    done = restore_metadata(path, root, states)
    fixed, coords = repair_coords(path, table, (root.sums or {}).get("coords"))
    done += fixed
    done += restore_values(path, root)
    stale = any(copy != "ok" for _, copy in states.values())
    if done or stale or root.sums is None:
        record(path, coords)
    return done
