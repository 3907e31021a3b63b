"""A rerun repairs damage to any array of the store it can recompute: coordinates and ids from
the plan, the time arrays from their recorded values, an array's zarr.json from the root's
copy, the products' chunks by redoing them. What it cannot repair (the root zarr.json, which
records which export wrote the store) is refused in one line. A damaged plan file in the
work directory is planned again. The flow runs for real (served demo catalog, seeded random
weights) under the session's Prefect test server; one export is damaged in copies."""

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from flows.cli import main
from flows.export import export
from flows.job import UsageError
from flows.params import Output
from tasks.plan.points import plan_damage
from tests.flows.test_export import params, snapshot
from tests.flows.test_kill_resume import store_values
from tests.flows.test_verify import delete, flip, truncate


@dataclass
class Exported:
    store: Path
    work: Path
    values: dict[str, np.ndarray]
    files: dict[str, str]
    catalog: str


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, served_demo) -> Exported:
    root = tmp_path_factory.mktemp("exported")
    summary = export(**params(root, served_demo.url))
    assert summary["all_ok"]
    store = Path(summary["store"])
    return Exported(store, root / "work", store_values(store), snapshot(store), served_demo.url)


def rerun(exported: Exported, store: Path, work: Path | None = None) -> dict:
    p = params(store.parent, exported.catalog)
    output = Output(store=str(store), work_dir=str(work or exported.work), chunk_size=4)
    return export(**(p | {"output": output}))


def assert_clean(exported: Exported, store: Path) -> None:
    got = store_values(store)
    for name, want in exported.values.items():
        np.testing.assert_array_equal(got[name], want, err_msg=name)
    assert snapshot(store) == exported.files, "the repaired store differs from the clean one"
    assert main(["--verify", "--out", str(store)]) == 0


def changed_copy(store: Path) -> None:
    """The root's copy of lon's metadata changed (its own zarr.json is intact)."""
    root = json.loads((store / "zarr.json").read_text())
    root["consolidated_metadata"]["metadata"]["lon"]["attributes"]["units"] = "furlongs"
    (store / "zarr.json").write_text(json.dumps(root, indent=2))


DAMAGE = [
    ("lon/c/0", flip),  # lon read up to 5e139 off, and verify and a rerun said nothing
    ("lon/c/0", delete),  # the rerun ended in a traceback from the quick look
    ("point_id/c/0/0", delete),  # every id empty, never repaired
    ("utm_y/c/0", truncate),
    ("time_bounds/c/0/0", delete),
    ("dofa_base_status/c/0/0", delete),
    ("ssl4eo_resnet18_rgb/c/0/1/0", truncate),  # (every point is ok: reasons have no file)
    ("ssl4eo_resnet18_rgb_valid_fraction/c/0/2", flip),
    ("dofa_base/zarr.json", delete),  # these three ended in ArrayNotFoundError tracebacks
    ("dofa_base_status/zarr.json", delete),
    ("ssl4eo_resnet18_rgb_checksum/zarr.json", delete),
    ("lat/zarr.json", truncate),
    (".", changed_copy),
]


@pytest.mark.parametrize(("where", "damage"), DAMAGE, ids=[f"{w}-{d.__name__}" for w, d in DAMAGE])
def test_rerun__repairs_damage_to_any_array_and_gives_the_clean_store(
    tmp_path, exported, where, damage
):
    store = Path(shutil.copytree(exported.store, tmp_path / "e.zarr"))
    damage(store / where)
    assert main(["--verify", "--out", str(store)]) == 1, "the damage went unnoticed"

    summary = rerun(exported, store)

    assert summary["all_ok"] is True
    assert_clean(exported, store)


@pytest.mark.parametrize("damage", [delete, truncate], ids=["deleted", "truncated"])
def test_rerun__a_damaged_root_zarr_json_is_refused_in_one_line_and_the_store_kept(
    tmp_path, exported, capsys, damage
):
    store = Path(shutil.copytree(exported.store, tmp_path / "e.zarr"))
    damage(store / "zarr.json")
    before = snapshot(store)
    with pytest.raises(UsageError, match=r"is damaged: its root zarr.json is (missing|not JSON)"):
        rerun(exported, store)
    code = main(
        ["--catalog", exported.catalog, "--bbox", "-67.655,-47.858,-67.63,-47.850",
         "--spacing", "400", "--patch-size", "32", "--chunk-size", "4", "--models",
         "dofa_base,ssl4eo_resnet18_rgb", "--weights", "random", "--out", str(store),
         "--work-dir", str(exported.work)]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "a rerun cannot repair it: restore" in err and "or export into another --out" in err
    assert snapshot(store) == before, "a store the rerun refused was changed"


def _plan_file(work: Path) -> Path:
    (plan,) = (work / "plans").iterdir()
    return plan


@pytest.mark.parametrize(
    "damage",
    [
        lambda plan: truncate(plan / "lon" / "c" / "0"),
        lambda plan: (plan / "zarr.json").write_text("garbage{"),
        lambda plan: flip(plan / "x" / "c" / "0"),
    ],
    ids=["truncated-chunk", "garbage-zarr-json", "flipped-chunk"],
)
def test_rerun__a_damaged_plan_file_is_planned_again(tmp_path, exported, damage):
    work = Path(shutil.copytree(exported.work, tmp_path / "work"))
    store = Path(shutil.copytree(exported.store, tmp_path / "e.zarr"))
    damage(_plan_file(work))
    assert plan_damage(str(_plan_file(work))) is not None

    summary = rerun(exported, store, work)

    assert summary["all_ok"] is True
    assert plan_damage(str(_plan_file(work))) is None, "the plan file was not made again"
    assert_clean(exported, store)


def test_rerun__a_store_of_an_earlier_swath_is_checked_against_the_plan_and_gets_its_sums(
    tmp_path, exported
):
    """A store written before the sums were recorded: the rerun compares its coordinates
    with the plan itself, repairs them, and records the sums from then on."""
    import zarr

    from tasks.store.soundness import SEAL_ATTR, SUMS_ATTR

    store = Path(shutil.copytree(exported.store, tmp_path / "e.zarr"))
    group = zarr.open_group(str(store), mode="r+")
    group.attrs.put({k: v for k, v in group.attrs.items() if k not in (SUMS_ATTR, SEAL_ATTR)})
    zarr.consolidate_metadata(str(store))
    flip(store / "lat" / "c" / "0")

    summary = rerun(exported, store)

    assert summary["all_ok"] is True
    assert_clean(exported, store)


def test_rerun__metadata_damaged_in_both_copies_is_refused_in_one_line(tmp_path, exported):
    store = Path(shutil.copytree(exported.store, tmp_path / "e.zarr"))
    (store / "lon" / "zarr.json").unlink()
    changed_copy(store)
    assert main(["--verify", "--out", str(store)]) == 1
    before = snapshot(store)
    with pytest.raises(UsageError, match=r"the metadata of its array lon is damaged in both"):
        rerun(exported, store)
    assert snapshot(store) == before
