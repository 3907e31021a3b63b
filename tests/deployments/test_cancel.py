"""A run cancelled from the UI (the API call the UI's Cancel button makes) stops, and the next
run of the same export finishes the store. Every wait is on a run's state, with a hang guard
only: at load 8-15 on 2 cores the rerun alone took more than 300 s."""

import os
import subprocess
import sys
import urllib.error
from pathlib import Path

from tests.deployments.test_schedules import api, free_port, start_server, wait_healthy
from tests.waiting import alive, stop, wait_until

ROOT = Path(__file__).resolve().parents[2]
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _call(url: str, body: dict | None = None) -> object:
    """The API, asked again while a busy server (2 cores, a run going) answers 503."""

    def look() -> object:
        try:
            return api(url, body)
        except urllib.error.HTTPError as e:
            if e.code != 503:
                raise
            return e

    return wait_until(look, lambda seen: not isinstance(seen, Exception), f"an answer from {url}")


def test_cancel__a_run_cancelled_from_the_ui_stops_and_the_next_run_finishes(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_URL": base,
        "PREFECT_UI_ENABLED": "false",
        "PYTHONPATH": str(ROOT),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    server_log, served_log = tmp_path / "server.log", tmp_path / "serve.log"
    server = start_server(port, env, server_log)
    served = None

    def processes_alive() -> None:
        alive(server, "the Prefect server", server_log)
        if served is not None:
            alive(served, "python -m deployments.serve", served_log)

    def deployment() -> object:
        processes_alive()
        try:
            return api(f"{base}/deployments/name/swath-export/demo")
        except OSError:
            return None

    def state(run_id: str) -> str:
        processes_alive()
        run = _call(f"{base}/flow_runs/{run_id}")
        return str(run["state_type"])  # type: ignore[index]

    def wait_state(run_id: str, states: set[str], what: str) -> str:
        return wait_until(lambda: state(run_id), lambda s: s in states, what)

    try:
        wait_healthy(base, server, server_log)
        with served_log.open("wb") as out:
            served = subprocess.Popen(
                [sys.executable, "-m", "deployments.serve"], cwd=tmp_path, env=env,
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        demo = wait_until(deployment, bool, "deployments.serve to register the demo deployment")
        params = {
            "output": {"store": str(tmp_path / "ui.zarr"), "work_dir": str(tmp_path / "work")},
            "inference": {"weights": "random", "models": ["dofa_base"]},
            "region": {"spacing_m": 150},  # about 160 points: a run of a minute here
        }
        create = f"{base}/deployments/{demo['id']}/create_flow_run"  # type: ignore[index]
        run_id = str(_call(create, {"parameters": params})["id"])  # type: ignore[index]
        got = wait_state(run_id, {"RUNNING"} | FINAL, "the first run to start")
        assert got == "RUNNING", f"the first run ended {got} before it could be cancelled"

        def laid_out() -> str:  # cancelled inside the run: the model loads, the store is laid out
            return "laid out" if (tmp_path / "ui.zarr" / "zarr.json").exists() else state(run_id)

        got = wait_until(laid_out, lambda s: s in {"laid out"} | FINAL, "the store's layout")
        assert got == "laid out", f"the first run ended {got} before it could be cancelled"
        _call(f"{base}/flow_runs/{run_id}/set_state", {"state": {"type": "CANCELLING"}})
        got = wait_state(run_id, FINAL, "the cancelled run to stop")
        assert got == "CANCELLED", served_log.read_text(errors="replace")[-3000:]
        again_id = str(_call(create, {"parameters": params})["id"])  # type: ignore[index]
        got = wait_state(again_id, FINAL, "the rerun to finish")
        assert got == "COMPLETED", served_log.read_text(errors="replace")[-3000:]
    finally:
        if served is not None:
            stop(served)
        stop(server)
