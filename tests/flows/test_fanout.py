"""An export larger than `chunks_per_run` fans out into child flow runs of whole write blocks:
the same store as one flow run writes, child runs the Prefect API shows, and a kill inside a
child that a rerun of the same export resumes."""

import math
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from distributed import LocalCluster
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
)
from prefect_dask.task_runners import DaskTaskRunner

from flows.export import export
from flows.params import Imagery, Inference, Output, Region, Window
from tests.flows.test_kill_resume import BBOX, assert_same, run_until

MODEL = "ssl4eo_resnet18_rgb"
PER_RUN = 3  # chunks per flow run: the 5 chunks of BBOX at chunk size 2 make 2 child runs


def params(store: Path, work: Path, catalog: str, *, chunks_per_run: int | None) -> dict:
    return {
        "region": Region(bbox=BBOX, spacing_m=400),
        "window": Window(),
        "imagery": Imagery(catalog=catalog, patch_px=32),
        "inference": Inference(models=[MODEL], weights="random", batch_size=3),
        "output": Output(
            store=str(store), work_dir=str(work), chunk_size=2, chunks_per_run=chunks_per_run
        ),
    }


def values(store: Path | str) -> dict[str, np.ndarray]:
    with xr.open_zarr(store) as ds:
        return {k: ds[k].values for k in [*ds.data_vars, "point_id"]}


@pytest.fixture(scope="module")
def one_run(tmp_path_factory, served_demo) -> dict:
    """The export in one flow run (5 chunks, under the default limit)."""
    tmp = tmp_path_factory.mktemp("one-run")
    return export(**params(tmp / "one.zarr", tmp / "work", served_demo.url, chunks_per_run=None))


def test_fanout__child_runs_write_the_store_one_run_writes(tmp_path, served_demo, one_run):
    p = params(tmp_path / "fan.zarr", tmp_path / "work", served_demo.url, chunks_per_run=PER_RUN)
    state = export(**p, return_state=True)
    summary = state.result()
    assert summary["all_ok"] and summary["chunks"] == one_run["chunks"] == 5
    assert_same(values(summary["store"]), values(one_run["store"]))
    parent = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])
            )
        )
        progress = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["swath-export-progress"])),
            flow_run_filter=FlowRunFilter(id={"any_": [parent]}),
        )
    assert len(children) == math.ceil(5 / PER_RUN)
    assert sorted(str(c.name) for c in children) == ["part 0: chunks 0-2", "part 1: chunks 3-4"]
    assert all(c.state is not None and c.state.is_completed() for c in children)
    assert [a.data for a in progress] == [100.0], "the parent's one progress artifact"


def test_fanout__child_runs_on_a_dask_cluster_write_the_store_one_run_writes(
    tmp_path, served_demo, one_run
):
    """A child run is built around its blocks in the parent's process; its tasks run on the
    cluster's workers, which get a stand-in for it in their context, not the loaded job."""
    p = params(tmp_path / "dask.zarr", tmp_path / "work", served_demo.url, chunks_per_run=PER_RUN)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True) as cluster:
        runner = DaskTaskRunner(address=cluster.scheduler_address)
        summary = export.with_options(task_runner=runner)(**p)
    assert summary["all_ok"]
    assert_same(values(summary["store"]), values(one_run["store"]))


def test_fanout__a_kill_inside_a_child_run_resumes_to_the_same_store(
    tmp_path, served_demo, one_run
):
    store, work = tmp_path / "killed.zarr", tmp_path / "work"
    argv = [
        sys.executable, "-m", "flows.export",
        "--bbox", ",".join(map(str, BBOX)), "--spacing", "400", "--catalog", served_demo.url,
        "--models", MODEL, "--weights", "random", "--patch-size", "32", "--chunk-size", "2",
        "--batch-size", "3", "--chunks-per-run", str(PER_RUN),
        "--out", str(store), "--work-dir", str(work), "--verbose",
    ]  # fmt: skip
    code, out = run_until(argv, "written 1/")  # right after a done mark in the first child
    assert code == -signal.SIGKILL, out[-3000:]
    assert "Beginning subflow run 'part 0: chunks 0-2'" in out
    assert "part 1" not in out, "killed inside the first child"
    # The rerun, in this process (a second command line would cost ~40 s of start-up here):
    # the same parameters as the command's.
    again = export(**params(store, work, served_demo.url, chunks_per_run=PER_RUN))
    assert again["all_ok"]
    assert_same(values(store), values(one_run["store"]))
