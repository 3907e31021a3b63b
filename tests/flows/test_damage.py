"""A damaged store is not trusted: a rerun redoes the chunks whose files were deleted or
truncated, and `--verify` names them. The flow runs for real (served demo catalog, seeded
random weights) under the session's Prefect test server."""

import re
from pathlib import Path

import numpy as np
import pytest

from embedders.spec import Status
from flows.cli import main
from flows.export import export
from tests.flows.test_export import params, snapshot, tif_requests
from tests.flows.test_kill_resume import store_values
from tests.tasks.test_store import REASONS, write_store

MODELS = ["dofa_base", "ssl4eo_resnet18_rgb"]


def delete(path: Path) -> None:
    path.unlink()


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage", [delete, truncate], ids=["deleted", "truncated"])
def test_damage__a_rerun_redoes_a_damaged_chunk_and_gives_the_clean_store(
    tmp_path, served_demo, damage
):
    first = export(**params(tmp_path, served_demo.url))
    store = Path(first["store"])
    clean, clean_files = store_values(store), snapshot(store)
    damage(store / "dofa_base/c/0/1/0")  # chunk 1 (points 4-7) of dofa_base's embeddings
    fetched = tif_requests(served_demo.log)

    again = export(**params(tmp_path, served_demo.url))

    got = store_values(store)
    assert (got["dofa_base_status"] == Status.OK).all()
    assert np.isfinite(got["dofa_base"]).all()
    for name, want in clean.items():
        np.testing.assert_array_equal(got[name], want, err_msg=name)
    assert snapshot(store) == clean_files, "the repaired store differs from the clean one"
    assert tif_requests(served_demo.log) == fetched, "redone from the work directory's results"
    assert again["all_ok"] is True
    assert again["models"]["dofa_base"]["redone_damaged"] == [f"chunk-00001-{_digest(store)}"]
    assert again["models"]["ssl4eo_resnet18_rgb"]["redone_damaged"] == []


def _digest(store: Path) -> str:
    from tasks.store.verify import stored_chunks

    return stored_chunks(str(store), 4)[1].key.rsplit("-", 1)[1]


def test_verify__a_finished_store_is_sound(capsys, tmp_path):
    store = write_store(tmp_path / "e.zarr", REASONS)
    assert main(["--verify", "--out", store]) == 0
    out = capsys.readouterr().out
    assert "dofa_base" in out and "3 of 3 chunks marked done, 0 damaged" in out
    assert "sound" in out


def test_verify__a_damaged_store_exits_1_naming_the_chunk_and_the_fix(capsys, tmp_path):
    store = write_store(tmp_path / "e.zarr", REASONS)
    (Path(store) / "dofa_base/c/0/1/0").unlink()
    truncate(Path(store) / "tiny_grid/c/0/0/0/0/0")
    assert main(["--verify", "--out", store]) == 1
    out = capsys.readouterr().out
    assert "dofa_base" in out and "1 damaged: chunk-00001-" in out
    # the truncated shard: its index (at its end) is cut or fails its CRC-32C
    assert re.search(r"The stored shard is too short|Stored and computed checksum do not", out)
    assert "2 chunk(s) and 0 other array(s) damaged; rerun the export" in out


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "is not a swath store (no such folder)"),
        (lambda p: p.mkdir(), "is not a swath store (it holds no Zarr group)"),
        (lambda p: (p.mkdir(), (p / "zarr.json").write_text('{"zarr_format": 3, "node_type": '
                                                               '"group", "attributes": {}}')),
         "a Zarr group without swath's attributes"),
    ],
    ids=["missing", "empty-folder", "plain-zarr-group"],
)  # fmt: skip
def test_verify__a_path_that_is_no_swath_store_exits_2(capsys, tmp_path, make, message):
    path = tmp_path / "x.zarr"
    make(path)
    assert main(["--verify", "--out", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("swath: error: ") and message in err
    assert len(err.strip().splitlines()) == 1
