"""How a command-line export stops on SIGTERM (a scheduler cancelling) or SIGINT (Ctrl-C):
within a moment, whatever it is doing, with one line. Standard library only, so that the
handler is in place before anything slow is imported."""

import contextlib
import os
import signal
import sys


def stop_on_signals() -> None:
    """SIGTERM (a scheduler cancelling) or SIGINT (Ctrl-C): stop within a moment, with one
    line. The store survives a stop at any moment (done marks are written last, as for
    SIGKILL, which the kill tests exercise), so nothing is flushed: the processes this one
    started (the embedded Prefect server, Dask workers) are ended and this one exits."""

    def stop(signum: int, _: object) -> None:
        name = signal.Signals(signum).name
        print(
            f"\nswath: stopped by {name}; the store is resumable: rerun the same command to "
            "finish (done chunks are kept)",
            file=sys.stderr,
            flush=True,
        )
        end_children()
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def end_children() -> None:
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(children, timeout=1)  # killed: they go at once, unless stuck in I/O
