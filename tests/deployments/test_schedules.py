"""The monthly deployment, applied to a real Prefect server with its scheduler running,
gets scheduled runs (with the pinned SQLAlchemy; 2.1 broke Prefect 3.8.8's scheduler)."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def api(url: str, body: dict | None = None) -> object:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def test_monthly__the_server_schedules_runs_on_the_cron(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_URL": base,
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "1",
        "PREFECT_UI_ENABLED": "false",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
         "--port", str(port), "--no-ui"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_healthy(base)
        apply = (
            "from deployments.serve import MONTHLY_CRON, monthly_deployment\n"
            "print(monthly_deployment().apply())\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", apply], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        deployment_id = proc.stdout.strip().splitlines()[-1]
        runs: list = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not runs:
            time.sleep(2)
            runs = api(
                f"{base}/flow_runs/filter", {"deployments": {"id": {"any_": [deployment_id]}}}
            )  # type: ignore[assignment]
        assert runs, "the scheduler created no run for the monthly deployment"
        starts = sorted(r["expected_start_time"] for r in runs)
        assert all(s[8:16] == "02T03:00" for s in starts), starts  # 03:00 UTC on the 2nd
        assert all(r["state_type"] == "SCHEDULED" for r in runs)
        assert runs[0]["parameters"]["window"]["previous_month"] is True
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait_healthy(base: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            api(f"{base}/health")
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"Prefect server at {base} did not become healthy in 120 s")
