"""A run cancelled from the UI (the API call the UI's Cancel button makes) stops within
moments, and the next run of the same export finishes the store."""

import os
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

from tests.deployments.test_schedules import _wait_healthy, api, free_port

ROOT = Path(__file__).resolve().parents[2]


def _call(url: str, body: dict | None = None) -> object:
    """The API, tried again while a busy server (2 cores, a run going) answers 503."""
    for _ in range(30):
        try:
            return api(url, body)
        except urllib.error.HTTPError as e:
            if e.code != 503:
                raise
            time.sleep(1)
    return api(url, body)


def _state(base: str, run_id: str) -> str:
    run = _call(f"{base}/flow_runs/{run_id}")
    return str(run["state_type"])  # type: ignore[index]


def _wait_for(base: str, run_id: str, states: set[str], seconds: float) -> str:
    deadline = time.monotonic() + seconds
    state = _state(base, run_id)
    while state not in states and time.monotonic() < deadline:
        time.sleep(1)
        state = _state(base, run_id)
    return state


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
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
         "--port", str(port), "--no-ui"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    served = None
    try:
        _wait_healthy(base)
        served = subprocess.Popen(
            [sys.executable, "-m", "deployments.serve"], cwd=tmp_path, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deployment = None
        deadline = time.monotonic() + 120
        while deployment is None and time.monotonic() < deadline:
            try:
                deployment = api(f"{base}/deployments/name/swath-export/demo")
            except OSError:
                time.sleep(1)
        assert deployment is not None, "deployments.serve registered no demo deployment"
        params = {
            "output": {"store": str(tmp_path / "ui.zarr"), "work_dir": str(tmp_path / "work")},
            "inference": {"weights": "random", "models": ["dofa_base"]},
            "region": {"spacing_m": 150},  # about 160 points: a run of a minute here
        }
        create = f"{base}/deployments/{deployment['id']}/create_flow_run"  # type: ignore[index]
        run = _call(create, {"parameters": params})
        run_id = str(run["id"])  # type: ignore[index]
        assert _wait_for(base, run_id, {"RUNNING"}, 180) == "RUNNING"
        time.sleep(1)  # inside the run: the model loads, the store is laid out
        _call(f"{base}/flow_runs/{run_id}/set_state", {"state": {"type": "CANCELLING"}})
        assert _wait_for(base, run_id, {"CANCELLED", "CRASHED"}, 60) == "CANCELLED"
        again = _call(create, {"parameters": params})
        again_id = str(again["id"])  # type: ignore[index]
        final = _wait_for(base, again_id, {"COMPLETED", "FAILED", "CRASHED"}, 300)
        assert final == "COMPLETED"
    finally:
        if served is not None:
            served.terminate()
            served.wait(timeout=60)
        server.terminate()
        server.wait(timeout=30)
