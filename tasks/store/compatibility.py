"""Whether a path already holds this export's store (a resume), is free, or holds something
else: then the one difference, in words, with the flag that would resume it. Nothing is
written here."""

from __future__ import annotations

import json
from typing import Any

import zarr
from fsspec.core import url_to_fs

from embedders.naming import given, setting
from tasks.store import soundness
from tasks.store.layout import CREATING, STORE_FORMAT, StoreLayout, StoreMismatch, read_meta


def check_store(path: str, layout: StoreLayout) -> bool:
    """True when `path` already holds this export's store (resume), False when it is free.

    Raises StoreMismatch when the path holds anything else; nothing is written.
    """
    fs, root = url_to_fs(path)
    if not fs.exists(root) or (fs.isdir(root) and not fs.ls(root)):
        return False
    try:
        soundness.read_root(path)
    except soundness.RootDamaged as e:
        if soundness.looks_like_a_store(path):
            raise StoreMismatch(
                f"output store {path} is damaged: {e}, and it records which export wrote "
                f"the store, so a rerun cannot repair it: restore {path}/zarr.json from a "
                f"backup, or export into another {setting('store')}"
            ) from e
    try:
        meta = read_meta(path).get("swath")
    except (FileNotFoundError, ValueError, KeyError, zarr.errors.BaseZarrError) as e:
        raise StoreMismatch(
            f"output path {path} exists and is not a swath store (it holds no Zarr group); "
            f"choose another {setting('store')} or remove it"
        ) from e
    if isinstance(meta, dict) and meta.get("state") == CREATING:
        return False  # an object-store layout that a crash interrupted: lay it out again
    if not isinstance(meta, dict) or "fingerprint" not in meta:
        raise StoreMismatch(
            f"output path {path} exists and is not a swath store (a Zarr group without swath's "
            f"attributes); choose another {setting('store')} or remove it"
        )
    if meta.get("format") != STORE_FORMAT:
        raise StoreMismatch(
            f"output store {path} was written by an older swath (store format "
            f"{meta.get('format')}, this one writes {STORE_FORMAT}: points named by their UTM "
            "coordinates, utm_x and utm_y stored); it stays readable, but "
            f"cannot be resumed or appended to: export into another {setting('store')}, or "
            "remove it to start over"
        )
    if meta["fingerprint"] != layout.fingerprint():
        diff = _difference(meta.get("layout", {}), layout.summary())
        raise StoreMismatch(
            f"output store {path} holds a different export ({diff}); "
            f"use another {setting('store')}, or remove the store to start over"
        )
    return True


def _difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The first field that differs, named by its path (e.g. models.x.identity.weights)."""
    new = json.loads(json.dumps(new))  # tuples as lists, as stored
    for key, before in LAYOUT_DEFAULTS.items():
        was = old.get(key, before)
        if was != new.get(key):
            fix = f", to resume give {given(**{key: was})}" if key in CHOSEN else ""
            return f"{key}: store has {_short(was)}, this run has {_short(new[key])}{fix}"
    old_models, new_models = old.get("models", {}), new.get("models", {})
    if list(old_models) != list(new_models):
        return f"models: store has {list(old_models)}, this run has {list(new_models)}"
    for name in new_models:
        found = _first_difference(old_models[name], new_models[name], f"models.{name}")
        if found:
            return found
    return "same sizes and models, other points: another region or spacing"


# The layout's plain fields, each with what a store written before the field existed had.
LAYOUT_DEFAULTS: dict[str, Any] = {
    "points": None,
    "chunk_size": None,
    "dtype": "float32",
    "shards": "auto",
}
CHOSEN = ("dtype", "shards")  # ... of which these are chosen by a setting of the same name


def _first_difference(old: Any, new: Any, where: str) -> str | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            found = _first_difference(old.get(key), new.get(key), f"{where}.{key}")
            if found:
                return found
        return None
    if old != new:
        return f"{where}: store has {_short(old)}, this run has {_short(new)}"
    return None


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 160 else text[:157] + "..."
