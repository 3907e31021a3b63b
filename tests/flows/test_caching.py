"""Prefect's cache across runs of one export, read back from the API: a run's finished
prefetch and produce tasks are Cached from the first rerun on, never while their output is
gone; task runs are named by stage, chunk and what they fetch or produce."""

import shutil
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import numpy as np
import pytest
import xarray as xr
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import TaskRun

from flows.export import export
from flows.params import Imagery, Inference, Output, Region, Window
from tests.waiting import wait_until

INSIDE = (-67.655, -47.858, -67.63, -47.850)  # 10 points at 400 m: 3 chunks of 4
MODEL = "ssl4eo_resnet18_rgb"
CHUNKS = 3


def params(work: Path, catalog: str, store: str) -> dict:
    return {
        "region": Region(bbox=INSIDE, spacing_m=400),
        "window": Window(),
        "imagery": Imagery(catalog=catalog, patch_px=32),
        "inference": Inference(models=[MODEL], weights="random", batch_size=4),
        "output": Output(store=str(work.parent / store), work_dir=str(work), chunk_size=4),
    }


def run(work: Path, catalog: str, store: str) -> dict[str, TaskRun]:
    """Export into `store` with the work directory `work`; its task runs by name, once the
    API has recorded every one of them in a final state."""
    state = export(**params(work, catalog, store), return_state=True)
    assert state.result()["all_ok"]
    return task_runs(state.state_details.flow_run_id)


def task_runs(flow_run: UUID) -> dict[str, TaskRun]:
    def look() -> list[TaskRun]:
        run_filter = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run]))
        with get_client(sync_client=True) as client:
            return client.read_task_runs(flow_run_filter=run_filter)

    def recorded(runs: list[TaskRun]) -> bool:
        stages = [str(r.name).split()[0] for r in runs]
        final = all(r.state is not None and r.state.is_final() for r in runs)
        done = stages.count("prefetch") == stages.count("produce") == CHUNKS
        return final and done and "write" in stages

    runs = wait_until(look, recorded, f"the task runs of flow run {flow_run}")
    return {str(r.name): r for r in runs}


def states(runs: dict[str, TaskRun], stage: str) -> dict[str, str]:
    return {
        name: str(r.state.name)
        for name, r in runs.items()
        if name.startswith(f"{stage} ") and r.state
    }


@dataclass
class Runs:
    work: Path
    first: dict[str, TaskRun]
    rerun: dict[str, TaskRun]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, served_demo) -> Runs:
    """An export, then the same export into another store (the first is whole, and a rerun
    into it would submit nothing): what the first run finished is there for the second."""
    work = tmp_path_factory.mktemp("cache") / "work"
    first = run(work, served_demo.url, "a.zarr")
    return Runs(work, first, run(work, served_demo.url, "b.zarr"))


def test_caching__the_first_rerun_shows_finished_work_as_cached(runs):
    for stage in ("prefetch", "produce"):
        assert set(states(runs.first, stage).values()) == {"Completed"}, stage
        rerun = states(runs.rerun, stage)
        assert len(rerun) == CHUNKS and set(rerun.values()) == {"Cached"}, rerun
    assert set(states(runs.rerun, "write").values()) == {"Completed"}, "a new store is written"


def test_caching__work_whose_output_is_gone_runs_again_and_the_rest_stays_cached(runs, served_demo):
    (product,) = (p for p in (runs.work / "results.zarr").iterdir() if p.is_dir())
    (config,) = (p for p in (runs.work / "inputs.zarr").iterdir() if p.is_dir())
    shutil.rmtree(next(product.glob("chunk-00000-*")))  # the chunk's results
    shutil.rmtree(next(config.glob("chunk-00001-*")))  # the chunk's imagery
    again = run(runs.work, served_demo.url, "c.zarr")
    ran = {n for n, r in again.items() if r.state is not None and r.state.name == "Completed"}
    assert {n for n in ran if not n.startswith("write ")} == {
        f"produce c00000 {MODEL}",
        "prefetch c00001 sentinel-2-l2a 32px 10m",
    }
    assert all(
        r.state is not None and r.state.name == "Cached" for n, r in again.items() if n not in ran
    )
    with (
        xr.open_zarr(runs.work.parent / "a.zarr") as a,
        xr.open_zarr(runs.work.parent / "c.zarr") as c,
    ):
        for name in a.data_vars:
            np.testing.assert_array_equal(c[name].values, a[name].values, err_msg=name)


def test_task_runs__are_named_by_stage_chunk_and_what_they_make(runs):
    names = sorted(runs.first)
    assert names == [
        "prefetch c00000 sentinel-2-l2a 32px 10m",
        "prefetch c00001 sentinel-2-l2a 32px 10m",
        "prefetch c00002 sentinel-2-l2a 32px 10m",
        f"produce c00000 {MODEL}",
        f"produce c00001 {MODEL}",
        f"produce c00002 {MODEL}",
        # a write block per chunk here (3 chunks); a block of several: `write c00004-c00007`
        f"write c00000 {MODEL}",
        f"write c00001 {MODEL}",
        f"write c00002 {MODEL}",
    ]
