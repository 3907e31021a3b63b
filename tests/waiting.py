"""Waiting in tests: on a state (a run's state, a line, a process's exit), never on a short
clock. A loaded machine (2 cores, other work beside) runs everything several times slower
than an idle one: the deployment cancel test took 193 s alone and more than 300 s at load
8-15. So the one clock a test keeps is HANG_GUARD_S, a guard that only catches a hang, and
a wait that runs out says what it waited for and what it saw last."""

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

HANG_GUARD_S = 1200.0  # 20 min: many times what any single wait here takes on a loaded machine


def wait_until[T](
    look: Callable[[], T],
    done: Callable[[T], bool],
    what: str,
    *,
    every_s: float = 1.0,
    limit_s: float = HANG_GUARD_S,
) -> T:
    """Call `look` every `every_s` until `done` holds for what it returns, and return that.
    `look` may raise to stop early (a process it depends on died). After `limit_s` seconds
    an AssertionError names `what` was awaited and the last thing seen."""
    deadline = time.monotonic() + limit_s
    while True:
        seen = look()
        if done(seen):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(
                f"waited {limit_s:.0f} s for {what} (a hang guard); last seen: {seen!r}"
            )
        time.sleep(every_s)


def alive(proc: subprocess.Popen, name: str, log: Path | None = None) -> None:
    """Raise, with the end of its log, if `proc` has exited: what is awaited from it never comes."""
    if proc.poll() is not None:
        tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
        raise AssertionError(f"{name} exited with code {proc.returncode} while awaited:\n{tail}")


def stop(proc: subprocess.Popen) -> None:
    """Terminate `proc` and reap it; kill it if it has not gone after a minute."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
