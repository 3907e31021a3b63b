"""The temporary Prefect server of a command-line export run without PREFECT_API_URL: started
by the export process, on a port no other process can take, and ended with it however it
ends.

Prefect's own temporary server (SubprocessASGIServer) picks a random port that is free at
that moment and lets uvicorn bind it later: two exports starting together can pick one
port, and the second then talks to the first one's server until that one stops. It is
stopped at exit, so a process killed with SIGKILL (as the OOM killer does) leaves it
running, orphaned, holding its port. Here the port is bound and listening in the export
process before the server starts, and handed to it as a file descriptor (uvicorn --fd);
the server asks the kernel to kill it when the export process dies (PR_SET_PDEATHSIG on
Linux) and, everywhere, watches for its parent to go.
"""

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

# Run in the server process before uvicorn: die with the parent (argv[1] is its pid).
_LAUNCH = """\
import ctypes, os, signal, sys, threading, time, runpy
parent = int(sys.argv[1])
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
except (AttributeError, OSError):
    pass  # not Linux: the watch below alone
if os.getppid() != parent:
    os._exit(0)  # the parent died before the kernel was asked to tell
def watch():
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)
threading.Thread(target=watch, daemon=True).start()
sys.argv = ["uvicorn", *sys.argv[2:]]
runpy.run_module("uvicorn", run_name="__main__", alter_sys=True)
"""


class ServerFailed(RuntimeError):
    """The temporary Prefect server did not start."""


class TemporaryServer:
    """A Prefect API server in a child process, for this process's flow runs (and the
    workers of a local Dask cluster, through PREFECT_API_URL)."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self, timeout_s: float) -> str:
        """Start the server and wait until it answers; its API URL. Raises ServerFailed."""
        import prefect
        from prefect.settings import get_current_settings

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))  # the kernel's choice: a port no one else holds
        sock.listen(128)  # and held from now on: no other process can bind it
        self.port = sock.getsockname()[1]
        env = {
            **os.environ,
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
            **get_current_settings().to_environment_variables(exclude_unset=True),
        }
        args = [
            sys.executable, "-c", _LAUNCH, str(os.getpid()),
            "--app-dir", str(prefect.__module_path__.parent),
            "--factory", "prefect.server.api.server:create_app",
            "--fd", str(sock.fileno()),
            "--log-level", "error",
            "--lifespan", "on",
        ]  # fmt: skip
        try:
            self.process = subprocess.Popen(args, env=env, pass_fds=(sock.fileno(),))
        finally:
            sock.close()  # the server holds its own copy
        self._wait_healthy(timeout_s)
        return self.api_url

    def _wait_healthy(self, timeout_s: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerFailed(
                    f"the temporary Prefect server exited with code {self.process.returncode} "
                    "before it answered; run with --verbose, or set PREFECT_API_URL to a "
                    "running server (prefect server start)"
                )
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=5) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise ServerFailed(
            f"the temporary Prefect server did not answer within {timeout_s:g} s "
            "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS); raise it, or set "
            "PREFECT_API_URL to a running server (prefect server start)"
        )

    def stop(self) -> None:
        """End the server (and wait for it)."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


@contextmanager
def prefect_api() -> Iterator[str | None]:
    """The Prefect API this process's flow runs use: the configured one (PREFECT_API_URL,
    None is yielded), or a temporary server started here, whose URL is yielded and set in
    the environment for the processes this one starts (a local Dask cluster's workers).
    Flow runs in this process take it through `prefect.settings.temporary_settings`, since
    Prefect read its settings when it was imported. Raises ServerFailed."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url:
        yield None
        return
    server = TemporaryServer()
    url = server.start(settings.server.ephemeral.startup_timeout_seconds)
    before = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url
    try:
        yield url
    finally:
        if before is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = before
        server.stop()
