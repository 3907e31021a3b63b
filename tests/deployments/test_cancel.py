"""A run cancelled from the UI (the API call the UI's Cancel button makes) stops, under each
way the README starts one: served (`python -m deployments.serve`), a process work pool's
worker, a served flow on a local Dask cluster, and the command line with `--runner dask`.
A deployment's process ends through swath's handling (`flows.stop.cancel_promptly`: its line,
exit status 143), not through the SIGKILL that Prefect's runner sends 30 s after its SIGTERM;
the command line through `flows.stop.stop_when_cancelled`; the run ends Cancelled; the next
run of the same export finishes the store. One Prefect server serves the module. Every wait is on a
state, with a hang guard only: at load 8-15 on 2 cores one rerun took more than 300 s."""

import os
import subprocess
import sys
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from flows.stop import CANCEL_EXIT
from tests.deployments.test_schedules import api, free_port, start_server, wait_healthy
from tests.waiting import HANG_GUARD_S, alive, stop, wait_until

ROOT = Path(__file__).resolve().parents[2]
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
SWATH_LINE = "swath: stopped by SIGTERM (a cancel"
EXITED = f"exited with status code: {CANCEL_EXIT}"
KILLED = "exited with status code: -9"  # the runner's SIGKILL after its grace period
MARKED = "Cancelled flow run"  # the runner's line once the process has gone, however it went
ENGINE_ENDED = "prefect.engine - Flow run was cancelled."  # Prefect's engine ended it itself

DASK_FLOW = """\
from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect_dask.task_runners import DaskTaskRunner

from flows.export import export

export_dask = export.with_options(
    task_runner=DaskTaskRunner(
        cluster_kwargs={"n_workers": 1, "threads_per_worker": 2, "resources": {"infer": 1},
                        "dashboard_address": "127.0.0.1:0"}
    )
)

if __name__ == "__main__":  # its own entrypoint: from export's it would load export itself
    serve(RunnerDeployment.from_entrypoint("dask_flow.py:export_dask", name="dask"))
"""


class Server:
    """A real `prefect server start`, with what the tests ask of its API."""

    def __init__(self, home: Path) -> None:
        port = free_port()
        self.base = f"http://127.0.0.1:{port}/api"
        self.env = {
            **os.environ,
            "PREFECT_HOME": str(home / "prefect"),
            "PREFECT_API_URL": self.base,
            "PREFECT_UI_ENABLED": "false",
            "PYTHONPATH": str(ROOT),
            "XDG_CACHE_HOME": str(home / "cache"),
            "SWATH_REPO": str(ROOT),
        }
        self.log = home / "server.log"
        self.proc = start_server(port, self.env, self.log)
        self.watched: list[tuple[subprocess.Popen[bytes], str, Path]] = []

    def start(self, args: list[str], cwd: Path, log: Path, name: str) -> subprocess.Popen[bytes]:
        """A process of the test (a runner, a worker), its output in `log`, watched while
        awaited: one that dies ends the wait with its log."""
        with log.open("wb") as out:
            proc = subprocess.Popen(
                args, cwd=cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        self.watched.append((proc, name, log))
        return proc

    def stop_all(self) -> None:
        """Stop the processes a test started (a served deployment's name is then free)."""
        while self.watched:
            stop(self.watched.pop()[0])

    def call(self, path: str, body: dict | None = None) -> object:
        """The API, asked again while a busy server (2 cores, a run going) answers 503."""

        def look() -> object:
            alive(self.proc, "the Prefect server", self.log)
            for proc, name, log in self.watched:
                alive(proc, name, log)
            try:
                return api(f"{self.base}{path}", body)
            except urllib.error.HTTPError as e:
                if e.code not in (404, 503):  # 404: a deployment not registered yet
                    raise
                return e

        return wait_until(look, lambda seen: not isinstance(seen, Exception), f"{path} to answer")

    def state(self, run_id: str) -> str:
        return str(self.call(f"/flow_runs/{run_id}")["state_type"])  # type: ignore[index]

    def wait_state(self, run_id: str, states: set[str], what: str) -> str:
        return wait_until(lambda: self.state(run_id), lambda s: s in states, what)

    def run(self, deployment: str, params: dict) -> str:
        demo = self.call(f"/deployments/name/{deployment}")
        create = f"/deployments/{demo['id']}/create_flow_run"  # type: ignore[index]
        return str(self.call(create, {"parameters": params})["id"])  # type: ignore[index]

    def cancel_inside(self, run_id: str, store: Path) -> float:
        """Cancel the run once its model is loaded and its store laid out (inside the run,
        tasks going), as the UI's Cancel button does; the seconds to Cancelled."""

        def laid_out() -> str:
            return "laid out" if (store / "zarr.json").exists() else self.state(run_id)

        got = wait_until(laid_out, lambda s: s in {"laid out"} | FINAL, "the store's layout")
        assert got == "laid out", f"the run ended {got} before it could be cancelled"
        asked = time.monotonic()
        self.call(f"/flow_runs/{run_id}/set_state", {"state": {"type": "CANCELLING"}})
        got = self.wait_state(run_id, FINAL, "the cancelled run to stop")
        seconds = time.monotonic() - asked
        print(f"\n{run_id}: CANCELLING -> {got} in {seconds:.1f} s")  # measured, not asserted
        assert got == "CANCELLED", got
        return seconds

    def no_task_left_running(self, run_id: str) -> None:
        """No task run of the run or its child runs is Pending or Running: read once the
        cancelled run's process has gone (the UI showed its produce tasks Running for ever
        before)."""
        children = {"flow_runs": {"parent_flow_run_id": {"any_": [run_id]}}}
        runs = [run_id, *(r["id"] for r in self.call("/flow_runs/filter", children))]  # type: ignore[attr-defined]
        unfinished = {"type": {"any_": ["PENDING", "RUNNING", "SCHEDULED"]}}
        body = {"task_runs": {"flow_run_id": {"any_": runs}, "state": unfinished}}
        left = self.call("/task_runs/filter", body)
        assert not left, left


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("prefect-server"))
    try:
        wait_healthy(s.base, s.proc, s.log)
        yield s
    finally:
        s.stop_all()
        stop(s.proc)


@pytest.fixture
def own(server: Server) -> Iterator[Server]:
    """The module's server, the processes a test starts stopped after it."""
    try:
        yield server
    finally:
        server.stop_all()


def _params(tmp_path: Path) -> dict:
    return {
        "output": {"store": str(tmp_path / "ui.zarr"), "work_dir": str(tmp_path / "work")},
        "inference": {"weights": "random", "models": ["dofa_base"]},
        "region": {"spacing_m": 150},  # about 160 points: a run of a minute here
    }


def _ended_by_swath(log: Path, *, exited: bool = True, engine_may_end_it: bool = False) -> bool:
    """The flow run's process printed swath's line and was not killed; `exited`: it ended
    with swath's status (threads still ran tasks, so Prefect's engine could not end it);
    `engine_may_end_it`: a cancel that lands between child runs, where no task is running, is
    ended by Prefect's engine alone, at once, before swath's handler is in place.
    Read once the runner or worker has logged that the run is marked Cancelled."""

    def look() -> str:
        return log.read_text(errors="replace")

    text = wait_until(look, lambda t: MARKED in t, f"the run marked Cancelled in {log.name}")
    assert KILLED not in text, text[-4000:]
    if engine_may_end_it and SWATH_LINE not in text:
        assert ENGINE_ENDED in text, text[-4000:]
        return False
    assert SWATH_LINE in text, text[-4000:]
    assert EXITED in text or not exited, text[-4000:]
    return True


def test_cancel__a_served_run_stops_at_once_and_the_next_run_finishes(own, tmp_path):
    log = tmp_path / "serve.log"
    own.start([sys.executable, "-m", "deployments.serve"], tmp_path, log, "deployments.serve")
    params = _params(tmp_path)
    run_id = own.run("swath-export/demo", params)
    own.cancel_inside(run_id, tmp_path / "ui.zarr")
    _ended_by_swath(log)
    own.no_task_left_running(run_id)
    again = own.run("swath-export/demo", params)
    got = own.wait_state(again, FINAL, "the rerun to finish")
    assert got == "COMPLETED", log.read_text(errors="replace")[-3000:]


def test_cancel__a_work_pool_run_stops_at_once_inside_a_child_run(own, tmp_path):
    prefect = [sys.executable, "-m", "prefect"]
    for args in (
        ["work-pool", "create", "swath-local", "--type", "process"],
        ["--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"],
    ):
        done = subprocess.run(
            [*prefect, *args], cwd=ROOT, env=own.env, capture_output=True, text=True,
            timeout=HANG_GUARD_S,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    log = tmp_path / "worker.log"
    own.start([*prefect, "worker", "start", "--pool", "swath-local"], ROOT, log, "the worker")
    params = _params(tmp_path)
    params["output"]["chunks_per_run"] = 2  # 6 chunks, 3 child runs: cancelled in one of them
    run_id = own.run("swath-export/demo", params)
    own.cancel_inside(run_id, tmp_path / "ui.zarr")
    if _ended_by_swath(log, engine_may_end_it=True):
        own.no_task_left_running(run_id)


def test_cancel__a_dask_run_stops_with_its_cluster(own, tmp_path):
    (tmp_path / "dask_flow.py").write_text(DASK_FLOW)
    log = tmp_path / "serve.log"
    served = own.start([sys.executable, "dask_flow.py"], tmp_path, log, "the Dask flow served")
    run_id = own.run("swath-export/dask", _params(tmp_path))
    store = tmp_path / "ui.zarr"
    wait_until(lambda: store.joinpath("zarr.json").exists() or own.state(run_id) in FINAL,
               bool, "the store's layout")  # fmt: skip
    flow_and_cluster = psutil.Process(served.pid).children(recursive=True)
    assert len(flow_and_cluster) >= 3, flow_and_cluster  # the run, a nanny, its worker
    own.cancel_inside(run_id, store)

    def running() -> list[psutil.Process]:
        return [p for p in flow_and_cluster if _running(p)]

    wait_until(running, lambda left: not left, "the run's process and its Dask workers to end")
    # Its workers ended, the engine's own handling may end the process first (status 0).
    _ended_by_swath(log, exited=False)
    own.no_task_left_running(run_id)


def _running(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_cancel__the_command_line_on_dask_stops_when_cancelled_in_the_ui(own, tmp_path):
    """The README's Dask route (`python -m flows.export --runner dask`): no runner watches the
    command line's run, so swath does: a Cancel ends it, its cluster with it."""
    store = tmp_path / "e.zarr"
    argv = [
        sys.executable, "-m", "flows.export", "--out", str(store), "--work-dir",
        str(tmp_path / "work"), "--models", "dofa_base", "--weights", "random",
        "--spacing", "150", "--runner", "dask", "--dask-workers", "1",
    ]  # fmt: skip
    log = tmp_path / "cli.log"
    cli = own.start(argv, tmp_path, log, "the command line")
    wait_until(lambda: store.joinpath("zarr.json").exists(), bool, "the store's layout")
    running = {"flow_runs": {"state": {"type": {"any_": ["RUNNING"]}}}}
    runs = own.call("/flow_runs/filter", running)
    assert len(runs) == 1, runs  # type: ignore[arg-type]
    cluster = psutil.Process(cli.pid).children(recursive=True)
    own.watched.pop()  # the command line is now awaited to exit
    try:
        own.cancel_inside(runs[0]["id"], store)  # type: ignore[index]
        code = wait_until(cli.poll, lambda code: code is not None, "the command line to exit")
    finally:
        stop(cli)
    assert code == CANCEL_EXIT, log.read_text(errors="replace")[-3000:]
    own.no_task_left_running(runs[0]["id"])  # type: ignore[index]
    text = log.read_text(errors="replace")
    assert "swath: cancelled in Prefect; the store is resumable" in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    left = wait_until(lambda: [p for p in cluster if _running(p)], lambda left: not left,
                      "the command line's Dask cluster to end")  # fmt: skip
    assert not left
