"""`--verify` checks every array of a store, not only the embeddings: each kind of damage
(a file deleted, truncated or with bytes flipped, a zarr.json deleted) to any array is
named, with exit 1; damage to the root zarr.json, which records the rest, is named too. The
store is a finished one, written by swath's own create_store and write_chunk."""

import json
import re
from pathlib import Path

import pytest
import zarr

from flows.cli import main
from tasks.store.soundness import SEAL_ATTR, SUMS_ATTR
from tests.stores import write_store

# A store of tests/stores.py holds these arrays; each one is damaged below.
ARRAYS = sorted(
    ["point_id", "lon", "lat", "utm_epsg", "utm_x", "utm_y", "time", "time_end", "time_bounds",
     "crs"]
    + [f"{m}{s}" for m in ("pooled_model", "grid_model", "tessera")
       for s in ("", "_status", "_reason", "_valid_fraction", "_checksum")]
)  # fmt: skip


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clean") / "e.zarr"
    write_store(path)
    return path


@pytest.fixture
def store(clean: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(clean, tmp_path / "e.zarr"))


def verify(capsys, store: Path) -> tuple[int, str]:
    code = main(["--verify", "--out", str(store)])
    return code, capsys.readouterr().out


def delete(path: Path) -> None:
    path.unlink()


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(8):  # 8 bytes in the middle, as a bad disk or a bad copy does
        data[len(data) // 2 + i - 4] ^= 0xFF
    path.write_bytes(bytes(data))


def test_verify__the_store_holds_every_array_named_here_and_is_sound(capsys, store):
    assert sorted(zarr.open_group(str(store), mode="r").array_keys()) == ARRAYS
    code, out = verify(capsys, store)
    assert code == 0, out
    # grid_model's last chunk was never written (an interrupted export): sound, not complete
    assert "sound but incomplete: every chunk marked done holds its data, and 1 chunk(s)" in out
    assert "sound and complete" not in out


def test_verify__a_file_is_named_as_a_file_not_a_missing_folder(capsys, tmp_path):
    notes = tmp_path / "README.md"
    notes.write_text("# not a store\n")
    assert main(["--verify", "--out", str(notes)]) == 2
    err = capsys.readouterr().err
    assert "is not a swath store (a file)" in err and "no such folder" not in err


@pytest.mark.parametrize("name", ARRAYS)
def test_verify__a_deleted_zarr_json_of_any_array_is_named(capsys, store, name):
    (store / name / "zarr.json").unlink()
    code, out = verify(capsys, store)
    assert code == 1, out
    assert re.search(rf"\n  {name} +its zarr.json is missing: a rerun of the export repairs", out)
    assert "Traceback" not in out


def _data_files() -> list[tuple[str, str]]:
    """Every array with a data file in the store, with its first file (arrays whose values
    all equal their fill value have none: nothing of theirs is on disk to damage)."""
    return [
        ("lon", "c/0"), ("lat", "c/0"), ("utm_epsg", "c/0"), ("utm_x", "c/0"), ("utm_y", "c/0"),
        ("point_id", "c/0/0"), ("time_bounds", "c/0/0"),
        ("pooled_model", "c/0/0/0"), ("pooled_model_status", "c/0/0"),
        ("pooled_model_reason", "c/0/0/0"), ("pooled_model_valid_fraction", "c/0/0"),
        ("pooled_model_checksum", "c/0/0"), ("grid_model", "c/0/0/0/0/0"),
        ("tessera_reason", "c/0/0/0"), ("tessera_status", "c/0/0"),
    ]  # fmt: skip


@pytest.mark.parametrize("damage", [delete, truncate, flip], ids=lambda f: f.__name__)
@pytest.mark.parametrize(("name", "file"), _data_files(), ids=[n for n, _ in _data_files()])
def test_verify__a_damaged_data_file_of_any_array_is_named(capsys, store, name, file, damage):
    path = store / name / file
    assert path.is_file(), f"{name} has no file {file}"
    damage(path)
    code, out = verify(capsys, store)
    assert code == 1, out
    if name.startswith(("pooled_model", "grid_model", "tessera")):  # per chunk: the chunk
        model = name.removesuffix("_status").removesuffix("_reason")
        model = model.removesuffix("_valid_fraction").removesuffix("_checksum")
        assert re.search(rf"{model} +\d+ of \d+ chunks marked done, [1-9]\d* damaged: chunk-0", out)
    else:  # as a whole: the array
        assert re.search(rf"\n  {name} +(points \d+\.\.\d+ differ|holds |cannot be read)", out)
    assert "Traceback" not in out


def test_verify__a_deleted_status_file_is_not_sound(capsys, store):
    """Its chunks read as pending while their checksums say they were written."""
    (store / "pooled_model_status" / "c" / "0" / "1").unlink()
    code, out = verify(capsys, store)
    assert code == 1, out
    assert "its checksum is recorded but its status reads pending" in out


def _root(store: Path) -> dict:
    return json.loads((store / "zarr.json").read_text())


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda s: (s / "zarr.json").unlink(), "its root zarr.json is missing"),
        (truncate, "its root zarr.json is not JSON"),
    ],
    ids=["deleted", "truncated"],
)
def test_verify__a_damaged_root_zarr_json_is_named_as_damage_not_as_no_store(
    capsys, store, damage, message
):
    damage(store / "zarr.json" if damage is truncate else store)
    code, out = verify(capsys, store)
    assert code == 1, out
    assert "holds swath's arrays but " + message in out
    assert "restore zarr.json from a backup, or export into another --out" in out


def test_verify__changed_root_attributes_are_named(capsys, store):
    root = _root(store)
    root["attributes"]["title"] = "edited by hand"
    (store / "zarr.json").write_text(json.dumps(root))
    code, out = verify(capsys, store)
    assert code == 1 and "its root attributes were changed after swath wrote them" in out, out


def test_verify__a_changed_copy_of_an_arrays_metadata_in_the_root_is_named(capsys, store):
    root = _root(store)
    root["consolidated_metadata"]["metadata"]["lon"]["fill_value"] = 7.0
    (store / "zarr.json").write_text(json.dumps(root))
    code, out = verify(capsys, store)
    assert code == 1, out
    assert re.search(r"\n  lon +the root's copy of its metadata is changed: a rerun", out)


def test_verify__a_store_of_an_earlier_swath_without_sums_says_what_was_not_checked(capsys, store):
    group = zarr.open_group(str(store), mode="r+")
    group.attrs.put({k: v for k, v in group.attrs.items() if k not in (SUMS_ATTR, SEAL_ATTR)})
    zarr.consolidate_metadata(str(store))
    code, out = verify(capsys, store)
    assert code == 0, out
    assert "coordinates and time: no sums recorded (a store of an earlier swath)" in out


def test_verify__an_array_swath_does_not_write_is_named(capsys, store):
    zarr.create_array(str(store), name="extra", shape=(3,), dtype="int8")
    code, out = verify(capsys, store)
    assert code == 1, out
    assert re.search(r"\n  extra +is not an array swath writes: no check covers it: remove it", out)
    assert "see each line for what repairs it" in out
