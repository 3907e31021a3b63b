"""No hang, no orphan: a command-line export stops on SIGTERM within 2 s at any moment with
swath's one line only, and its temporary Prefect server dies with it however it dies, on a
port no other process can take. The exports run for real in subprocesses (served demo
catalog on disk, random weights) with no PREFECT_API_URL, as a user runs them."""

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.waiting import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[2]
STOPPED = (
    "swath: stopped by SIGTERM; the store is resumable: rerun the same command to finish "
    "(done chunks are kept)"
)
# The bound asked for is 2 s; swath takes about 0.05-0.3 s here (2 loaded cores), so the
# assert has room for a machine several times slower.
SIGTERM_BOUND_S = 2.0


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return {**env, "PYTHONUNBUFFERED": "1"}


def _start(tmp_path: Path, demo_catalog_dir: Path) -> subprocess.Popen[str]:
    argv = [
        sys.executable, "-m", "flows.export", "--catalog", str(demo_catalog_dir / "catalog.json"),
        "--out", str(tmp_path / "e.zarr"), "--work-dir", str(tmp_path / "work"),
        "--models", "ssl4eo_resnet18_rgb", "--weights", "random", "--chunk-size", "4",
    ]  # fmt: skip
    return subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    )


def _server_of(proc: subprocess.Popen[str], timeout_s: float = HANG_GUARD_S) -> psutil.Process:
    """The export's temporary Prefect server (uvicorn), once it runs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                if "uvicorn" in " ".join(child.cmdline()):
                    return child
            except psutil.Error:
                continue
        time.sleep(0.1)
    raise AssertionError("the export started no temporary Prefect server")


def _early(proc: subprocess.Popen[str], tmp_path: Path) -> None:
    time.sleep(0.3)  # still importing


def _after_planning(proc: subprocess.Popen[str], tmp_path: Path) -> None:
    assert proc.stdout is not None and "points in" in proc.stdout.readline()


def _mid_run(proc: subprocess.Popen[str], tmp_path: Path) -> None:
    status = tmp_path / "e.zarr" / "ssl4eo_resnet18_rgb_status" / "c"
    deadline = time.monotonic() + HANG_GUARD_S
    while not status.exists():  # a chunk's done mark is written: tasks are running
        assert proc.poll() is None and time.monotonic() < deadline, "no chunk was written"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize(
    "moment", [_early, _after_planning, _mid_run], ids=["importing", "checking", "writing"]
)
def test_sigterm__stops_within_2_s_with_one_line_at_any_moment(
    tmp_path, demo_catalog_dir, moment: Callable[[subprocess.Popen[str], Path], None]
):
    proc = _start(tmp_path, demo_catalog_dir)
    try:
        moment(proc, tmp_path)
        children = psutil.Process(proc.pid).children(recursive=True)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)  # a hang guard; the bound is asserted below
        took = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert took < SIGTERM_BOUND_S, f"{took:.2f} s"
    assert err.strip() == STOPPED  # no Prefect "Crash detected!", no traceback
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left running: {alive}"


@pytest.mark.slow
def test_sigkill_of_the_export_alone__its_temporary_prefect_server_dies_too(
    tmp_path, demo_catalog_dir
):
    """What the OOM killer does: SIGKILL to the export process only, not its group."""
    proc = _start(tmp_path, demo_catalog_dir)
    server = None
    try:
        server = _server_of(proc)
        proc.kill()
        proc.wait(timeout=30)
        _, alive = psutil.wait_procs([server], timeout=10)
        assert not alive, "the temporary Prefect server was left running, orphaned"
    finally:
        proc.kill()
        if server is not None and server.is_running():
            server.kill()


_SERVE = (
    "import sys; sys.path.insert(0, '.')\n"
    "from flows.server import TemporaryServer\n"
    "s = TemporaryServer(); s.start(120); print(s.port, flush=True)\n"
    "sys.stdin.readline(); s.stop()\n"
)


@pytest.mark.slow
def test_temporary_servers__two_started_together_each_hold_their_own_port(tmp_path):
    """The port is bound and listening in the process that starts the server before the
    server starts, so two exports starting together cannot pick one port (one used to talk
    to the other's server, and failed with 'Connection refused' once that one stopped)."""
    # Each its own PREFECT_HOME: two servers migrating one new database at once collide in
    # Prefect itself ("duplicate column name"), whatever their ports.
    starts = [
        subprocess.Popen(
            [sys.executable, "-c", _SERVE],
            cwd=ROOT,
            env={**_env(), "PREFECT_HOME": str(tmp_path / f"home-{i}")},
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for i in range(2)
    ]
    try:
        ports = [int(p.stdout.readline()) for p in starts if p.stdout is not None]
        assert len(set(ports)) == 2, ports
        for proc, port in zip(starts, ports, strict=True):
            owners = {
                c.pid
                for c in psutil.Process(proc.pid).children(recursive=True)
                for conn in c.net_connections()
                if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port
            }
            assert owners, f"port {port} is not served by the server this process started"
        starts[0].communicate("\n", timeout=60)  # the first stops: the second still answers
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[1]}/api/health", timeout=30) as r:
            assert r.status == 200
    finally:
        for proc in starts:
            if proc.poll() is None:
                proc.communicate("\n", timeout=60)
