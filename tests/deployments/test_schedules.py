"""The monthly deployment, applied to a real Prefect server with its scheduler running,
gets scheduled runs (with the pinned SQLAlchemy; 2.1 broke Prefect 3.8.8's scheduler)."""

import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.waiting import HANG_GUARD_S, alive, stop, wait_until

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def api(url: str, body: dict | None = None) -> object:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:  # a busy server answers late
        return json.loads(resp.read())


def start_server(port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`prefect server start` on 127.0.0.1:`port`, its output in `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
             "--port", str(port), "--no-ui"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def wait_healthy(base: str, server: subprocess.Popen[bytes], log: Path) -> None:
    """Until the server at `base` answers /health (it may take minutes on a loaded machine)."""

    def look() -> str:
        alive(server, "the Prefect server", log)
        try:
            api(f"{base}/health")
        except OSError as e:
            return f"{type(e).__name__}: {e}"
        return "healthy"

    wait_until(look, lambda seen: seen == "healthy", f"the Prefect server at {base}", every_s=0.5)


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
    log = tmp_path / "server.log"
    server = start_server(port, env, log)
    try:
        wait_healthy(base, server, log)
        apply = (
            "from deployments.serve import MONTHLY_CRON, monthly_deployment\n"
            "print(monthly_deployment().apply())\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", apply], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=HANG_GUARD_S,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        deployment_id = proc.stdout.strip().splitlines()[-1]

        def look() -> list:
            alive(server, "the Prefect server", log)
            body = {"deployments": {"id": {"any_": [deployment_id]}}}
            return api(f"{base}/flow_runs/filter", body)  # type: ignore[return-value]

        runs = wait_until(look, bool, "the scheduler's runs of the monthly deployment", every_s=2)
        starts = sorted(r["expected_start_time"] for r in runs)
        assert all(s[8:16] == "02T03:00" for s in starts), starts  # 03:00 UTC on the 2nd
        assert all(r["state_type"] == "SCHEDULED" for r in runs)
        assert runs[0]["parameters"]["window"]["previous_month"] is True
    finally:
        stop(server)
