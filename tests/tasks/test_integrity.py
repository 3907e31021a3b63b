"""A done mark stands for data that is there: each chunk's checksum, written with its data by
`write_chunk`, and checked by `check_done` for every chunk marked done."""

import re
from pathlib import Path

import numpy as np
import pytest
import zarr

from tasks.plan.chunks import make_chunks
from tasks.results import ChunkResult
from tasks.store import integrity
from tasks.store.integrity import WriteNotKept, check_done, checksum
from tasks.write import write_chunk
from tests.tasks.test_store import LAYOUT, POINTS, REASONS, write_store

CHUNKS = make_chunks(list(POINTS), LAYOUT.chunk_size)  # 3 chunks: points 0-1, 2-3, 4


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return Path(write_store(tmp_path / "e.zarr", REASONS))


def test_check_done__every_chunk_of_a_finished_store_is_done_and_none_damaged(store):
    for model in ("dofa_base", "tiny_grid"):
        assert check_done(str(store), model, CHUNKS, 0) == ([True, True, True], [])


def test_check_done__a_deleted_embedding_file_is_damaged_and_not_done(store):
    (store / "dofa_base/c/0/1/0").unlink()  # chunk 1: points 2 and 3, both ok
    done, damaged = check_done(str(store), "dofa_base", CHUNKS, 0)
    assert done == [True, False, True]
    assert [d.key for d in damaged] == [CHUNKS[1].key]
    assert "do not match their checksum" in damaged[0].why


def test_check_done__a_truncated_file_is_damaged_with_the_readers_error(store):
    path = store / "tiny_grid/c/0/0/0/0/0"
    path.write_bytes(path.read_bytes()[:20])
    done, damaged = check_done(str(store), "tiny_grid", CHUNKS, 0)
    assert done == [False, True, True]
    assert damaged[0].key == CHUNKS[0].key
    # a shard cut short: its index (at the end) fails its CRC-32C, or is too short to read
    why = damaged[0].why
    assert re.search(r"unreadable \((Stored and computed checksum|The stored shard)", why)


@pytest.mark.parametrize(
    "name", ["dofa_base_status/c/0/0", "dofa_base_checksum/c/0/0", "dofa_base_reason/c/0/0/0"]
)
def test_check_done__a_truncated_status_checksum_or_reason_file_is_damaged(store, name):
    path = store / name
    path.write_bytes(path.read_bytes()[:5])
    done, damaged = check_done(str(store), "dofa_base", CHUNKS, 0)
    assert done == [False, True, True]
    assert [d.key for d in damaged] == [CHUNKS[0].key]


def test_check_done__a_changed_value_is_damaged(store):
    array = zarr.open_array(str(store), path="dofa_base_valid_fraction", mode="r+")
    array[0, 2] = 0.5  # written behind swath's back: the checksum is not updated
    done, damaged = check_done(str(store), "dofa_base", CHUNKS, 0)
    assert done == [True, False, True] and damaged[0].key == CHUNKS[1].key


def test_check_done__a_deleted_status_file_leaves_the_chunk_not_done(store):
    (store / "dofa_base_status/c/0/2").unlink()  # the done mark is gone: pending, not damage
    assert check_done(str(store), "dofa_base", CHUNKS, 0) == ([True, True, False], [])


def test_checksum__nans_count_as_one_value_whatever_their_bits():
    quiet = np.array([np.nan, 1.0], dtype="float32")
    negative = quiet.copy()
    negative.view("uint32")[0] = 0xFFC00000  # -nan
    assert checksum([negative]) == checksum([quiet]) != checksum([np.array([0.0, 1.0], "f4")])


def test_write_chunk__refuses_when_the_store_does_not_keep_what_was_written(store, monkeypatch):
    def lost(self, t, chunk):  # storage that drops the write: the old values read back
        return [np.zeros_like(np.asarray(a[t, chunk.start : chunk.stop])) for a in self.data]

    monkeypatch.setattr(integrity._Arrays, "read_data", lost)
    result = ChunkResult(
        np.ones((2, 4), "float32"), np.ones(2, "int8"), ["", ""], np.ones(2, "float32")
    )
    with pytest.raises(WriteNotKept, match=rf"dofa_base {CHUNKS[0].key}: the data read back"):
        write_chunk(str(store), CHUNKS[0], "dofa_base", result, 0)
