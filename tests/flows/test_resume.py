"""Time entries, the writer lock, a flaky source and the Dask runner, through the real flow."""

import os
import random
import subprocess
import sys
import threading
from datetime import date
from pathlib import Path
from typing import ClassVar

import fsspec
import numpy as np
import pytest
import xarray as xr
from distributed import LocalCluster
from fsspec.implementations.memory import MemoryFileSystem
from prefect_dask.task_runners import DaskTaskRunner

from embedders.spec import Status
from flows.export import INFER_RESOURCE, export
from flows.params import Imagery, Inference, Output, Region, Window
from tasks.store.locks import StoreBusy, writer_lock
from tests.fakes import Request, serve_directory
from tests.waiting import HANG_GUARD_S

INSIDE = (-67.655, -47.858, -67.63, -47.850)


def params(tmp_path: Path, catalog: str, *, window=None, store="e.zarr", models=None) -> dict:
    return {
        "region": Region(bbox=INSIDE, spacing_m=400),
        "window": window or Window(),
        "imagery": Imagery(catalog=catalog, patch_px=32),
        "inference": Inference(
            models=models or ["ssl4eo_resnet18_rgb"], weights="random", batch_size=4
        ),
        "output": Output(
            store=str(tmp_path / store), work_dir=str(tmp_path / "work"), chunk_size=3
        ),
    }


def values(store: str) -> dict[str, np.ndarray]:
    with xr.open_zarr(store) as ds:
        return {k: ds[k].values for k in ds.data_vars}


def test_windows__each_window_adds_one_time_entry_and_a_rerun_replaces_none(tmp_path, served_demo):
    first = Window(start=date(2024, 1, 1), end=date(2024, 6, 30))
    second = Window(start=date(2024, 7, 1), end=date(2024, 12, 31))
    export(**params(tmp_path, served_demo.url, window=first))
    summary = export(**params(tmp_path, served_demo.url, window=second))
    assert summary["time_index"] == 1
    again = export(**params(tmp_path, served_demo.url, window=first))
    assert again["time_index"] == 0
    with xr.open_zarr(summary["store"]) as ds:
        assert ds.sizes["time"] == 2
        assert list(ds.time.values.astype("datetime64[D]").astype(str)) == [
            "2024-01-01",
            "2024-07-01",
        ]
        assert list(ds.time_end.values.astype("datetime64[D]").astype(str)) == [
            "2024-06-30",
            "2024-12-31",
        ]
        assert (ds.ssl4eo_resnet18_rgb_status.values == Status.OK).all()
        # the demo's one item covers both windows: the same embeddings twice
        np.testing.assert_array_equal(
            ds.ssl4eo_resnet18_rgb.values[0], ds.ssl4eo_resnet18_rgb.values[1]
        )


def test_windows__previous_month_is_the_month_before_the_scheduled_day():
    w = Window(previous_month=True)
    assert w.resolve(date(2026, 3, 1)) == (date(2026, 2, 1), date(2026, 2, 28))
    assert w.resolve(date(2026, 1, 15)) == (date(2025, 12, 1), date(2025, 12, 31))


def test_lock__a_second_writer_is_refused_with_a_clear_message(tmp_path):
    store = str(tmp_path / "e.zarr")
    busy = pytest.raises(StoreBusy, match=r"another export is writing .*e\.zarr \(pid \d+")
    with (
        writer_lock(store, wait=False, lock_dir=str(tmp_path)),
        busy,
        writer_lock(store, wait=False, lock_dir=str(tmp_path)),
    ):
        pass


def test_lock__wait_queues_behind_the_holder(tmp_path):
    store = str(tmp_path / "e.zarr")
    order: list[str] = []
    with writer_lock(store, wait=False, lock_dir=str(tmp_path)):
        waiter = threading.Thread(target=lambda: _wait_then_record(store, order, str(tmp_path)))
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive(), "the waiter must block while the lock is held"
        order.append("holder done")
    waiter.join(10)
    assert order == ["holder done", "waiter got it"]


def _wait_then_record(store: str, order: list[str], lock_dir: str) -> None:
    with writer_lock(store, wait=True, lock_dir=lock_dir):
        order.append("waiter got it")


def test_lock__a_killed_holder_leaves_no_stale_lock(tmp_path):
    store = str(tmp_path / "e.zarr")
    code = (
        "import sys, time; sys.path.insert(0, '.'); from tasks.store.locks import writer_lock\n"
        f"with writer_lock({store!r}, wait=False, lock_dir='.'):\n"
        "    print('held', flush=True); time.sleep(60)\n"
    )
    root = Path(__file__).resolve().parents[2]
    holder = subprocess.Popen(
        [sys.executable, "-c", code], cwd=root, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    with pytest.raises(StoreBusy), writer_lock(store, wait=False, lock_dir=str(tmp_path)):
        pass
    holder.kill()
    holder.wait()
    with writer_lock(store, wait=False, lock_dir=str(tmp_path)):
        pass


def test_retries__a_flaky_source_still_completes_every_point(
    tmp_path, demo_catalog_dir, served_demo
):
    clean = export(**params(tmp_path, served_demo.url, store="clean.zarr"))
    rng = random.Random(7)
    faults: list[Request] = []

    def flaky(request: Request):
        if rng.random() < 0.3:
            faults.append(request)
            return 503 if rng.random() < 0.5 else "drop"
        return None

    with serve_directory(demo_catalog_dir, fault=flaky) as base:
        flaky_params = params(tmp_path, f"{base}/catalog.json", store="flaky.zarr")
        flaky_params["output"] = flaky_params["output"].model_copy(
            update={"work_dir": str(tmp_path / "flaky-work")}
        )
        summary = export(**flaky_params)
    assert len(faults) >= 5, "the server must actually have failed requests"
    assert summary["all_ok"]
    got, want = values(summary["store"]), values(clean["store"])
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_dask__a_two_worker_cluster_writes_the_same_store_as_threads(tmp_path, served_demo):
    threads = export(**params(tmp_path, served_demo.url, store="threads.zarr"))
    runner = DaskTaskRunner(
        cluster_kwargs={
            "n_workers": 2,
            "threads_per_worker": 1,
            "processes": True,
            "resources": {INFER_RESOURCE: 1},
        }
    )
    dask_params = params(tmp_path, served_demo.url, store="dask.zarr")
    dask_params["output"] = dask_params["output"].model_copy(
        update={"work_dir": str(tmp_path / "dask-work")}
    )
    on_dask = export.with_options(task_runner=runner)(**dask_params)
    assert on_dask["all_ok"]
    got, want = values(on_dask["store"]), values(threads["store"])
    for name in want:
        if want[name].dtype.kind == "f":
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, err_msg=name)
        else:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_urls__an_fsspec_url_store_is_written_and_resumed(tmp_path, served_demo):
    url = f"file://{tmp_path}/by-url.zarr"
    first = export(
        **params(tmp_path, served_demo.url, store="ignored.zarr")
        | {"output": Output(store=url, work_dir=str(tmp_path / "work"), chunk_size=3)}
    )
    assert first["store"] == url and first["all_ok"]
    before = values(url)
    again = export(
        **params(tmp_path, served_demo.url)
        | {"output": Output(store=url, work_dir=str(tmp_path / "work"), chunk_size=3)}
    )
    assert again["all_ok"]
    for name, want in before.items():
        np.testing.assert_array_equal(values(url)[name], want, err_msg=name)
    # A file:// URL is the local store it names: locked beside it, as its path would be (the
    # lock file goes with the export that held it), not in the work dir as a URL's would be.
    assert not (tmp_path / "by-url.zarr.lock").exists()
    assert not (tmp_path / "work" / "locks").exists()


def test_dask__an_existing_cluster_by_address_runs_infer_on_workers_with_the_resource(
    tmp_path, served_demo
):
    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=True, resources={INFER_RESOURCE: 1}
    ) as cluster:
        runner = DaskTaskRunner(address=cluster.scheduler_address)
        summary = export.with_options(task_runner=runner)(**params(tmp_path, served_demo.url))
    assert summary["all_ok"]


class FlakyMemoryFileSystem(MemoryFileSystem):
    """An in-memory object store whose next `fails` writes of embedding chunks drop the
    connection, as a throttled or restarting object store does."""

    protocol = "flakymem"
    store: ClassVar[dict] = {}
    pseudo_dirs: ClassVar[list] = [""]
    fails = 0
    target = "/ssl4eo_resnet18_rgb/c/"

    def _fail(self, path: str) -> None:
        if FlakyMemoryFileSystem.fails > 0 and self.target in str(path):
            FlakyMemoryFileSystem.fails -= 1
            raise ConnectionResetError("connection reset by peer")

    def pipe_file(self, path, value, **kwargs):
        self._fail(path)
        return super().pipe_file(path, value, **kwargs)

    def _open(self, path, mode="rb", **kwargs):
        if "w" in mode:
            self._fail(path)
        return super()._open(path, mode, **kwargs)


def test_writes__a_transient_store_failure_is_retried_and_every_point_written(
    tmp_path, served_demo
):
    fsspec.register_implementation("flakymem", FlakyMemoryFileSystem, clobber=True)
    FlakyMemoryFileSystem.fails = 2
    url = "flakymem://retried.zarr"
    summary = export(
        **params(tmp_path, served_demo.url)
        | {"output": Output(store=url, work_dir=str(tmp_path / "work"), chunk_size=3)}
    )
    assert FlakyMemoryFileSystem.fails == 0, "the faults were never hit"
    assert summary["all_ok"]
    assert np.isfinite(values(url)["ssl4eo_resnet18_rgb"]).all()


def test_lock__two_processes_without_a_shared_work_dir_are_one_writer_of_a_url(tmp_path):
    """Each process has its own work directory (as on two machines): the file lock cannot
    see the other, the store's Prefect concurrency limit on the shared server does."""
    from prefect.settings import PREFECT_API_URL

    url = "memory://shared.zarr"  # an object store: no lock file beside it (file:// has one)
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    code = (
        "import sys, time; sys.path.insert(0, '.'); from tasks.store.locks import writer_lock\n"
        "with writer_lock(sys.argv[1], wait=False, lock_dir=sys.argv[2], across_machines=True):\n"
        "    print('held', flush=True); sys.stdin.readline()\n"
    )
    root = Path(__file__).resolve().parents[2]
    first = subprocess.Popen(
        [sys.executable, "-c", code, url, str(tmp_path / "work-a")],
        cwd=root, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert first.stdout is not None and first.stdin is not None
    assert first.stdout.readline().strip() == "held"
    second = subprocess.run(
        [sys.executable, "-c", code, url, str(tmp_path / "work-b")],
        cwd=root, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S, input="\n",
    )  # fmt: skip
    assert second.returncode != 0
    assert "StoreBusy: another export is writing" in second.stderr
    assert "concurrency limit swath-store-" in second.stderr
    first.communicate("\n", timeout=60)  # the first lets go
    third = subprocess.run(
        [sys.executable, "-c", code, url, str(tmp_path / "work-b")],
        cwd=root, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S, input="\n",
    )  # fmt: skip
    assert third.returncode == 0 and "held" in third.stdout, third.stderr
