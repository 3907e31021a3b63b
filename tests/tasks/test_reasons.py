"""Why points are not ok, read back from a store (tasks/store/reading.py): identical reasons
grouped, most points first, each with its count and first point ids."""

from pathlib import Path

import pytest

from tasks.store import reading
from tasks.store.reading import ReasonGroup, reason_groups
from tests.stores import Written, write_store


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Written:
    return write_store(tmp_path_factory.mktemp("why") / "e.zarr")


def ids(written: Written, *rows: int) -> tuple[str, ...]:
    return tuple(written.points[r].id for r in rows)


def test_reason_groups__identical_reasons_are_grouped_with_counts_and_first_ids(written):
    n = len(written.points)
    groups = reason_groups(written.path, "grid_model", 0, first=2)
    pending = [i for i in range(n) if written.status["grid_model"][i] == 0]
    assert (
        groups
        == [  # one point each: in the order of their first points
            ReasonGroup("nodata", "no item covers it", 1, ids(written, 1)),
            ReasonGroup("failed", "timeout", 1, ids(written, 2)),
            ReasonGroup("pending", "", len(pending), ids(written, *pending[:2])),
        ]
    )
    everything = reason_groups(written.path, "tessera", 0, first=3)
    assert everything == [ReasonGroup("nodata", "no item covers it", n, ids(written, 0, 1, 2))]


def test_reason_groups__every_point_ok_gives_none(tmp_path: Path):
    from tests.stores import write_wide_store

    write_wide_store(tmp_path / "w.zarr", 100, 4, lambda lon, lat: lon[:, None] * [1, 1, 1, 1])
    assert reason_groups(str(tmp_path / "w.zarr"), "m", 0) == []


def test_reason_groups__read_a_block_at_a_time_equals_one_read(written, monkeypatch):
    models = ("tessera", "grid_model", "pooled_model")
    whole = [reason_groups(written.path, m, 0, first=5) for m in models]
    monkeypatch.setattr(reading, "REASON_BLOCK", 3)  # blocks of 3 points: ids across blocks
    assert [reason_groups(written.path, m, 0, first=5) for m in models] == whole
