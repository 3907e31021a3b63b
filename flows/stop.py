"""How an export stops on SIGTERM (a scheduler, or a Prefect runner or worker, cancelling) or
SIGINT (Ctrl-C): within a moment, whatever it is doing, with one line. Standard library only
(Prefect and psutil are imported when needed), so that the command line's handler is in
place before anything slow is imported."""

import contextlib
import contextvars
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType


def stop_on_signals() -> None:
    """SIGTERM (a scheduler cancelling) or SIGINT (Ctrl-C): stop within a moment, with one
    line. The store survives a stop at any moment (done marks are written last, as for
    SIGKILL, which the kill tests exercise), so nothing is flushed: the processes this one
    started (the embedded Prefect server, Dask workers) are ended and this one exits."""

    global _command_line
    _command_line = True

    def stop(signum: int, _: object) -> None:
        _stop(f"stopped by {signal.Signals(signum).name}", 128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


_command_line = False  # stop_on_signals() was called: this process is the command line's


def _stop(why: str, status: int) -> None:
    """The command line stops: one line, its children ended, this process ended."""
    print(
        f"\nswath: {why}; the store is resumable: rerun the same command to finish (done "
        "chunks are kept)",
        file=sys.stderr,
        flush=True,
    )
    end_children()
    os._exit(status)


def stop_when_cancelled(every_s: float = 2.0) -> None:
    """In the command line's flow run, which no Prefect runner or worker watches: a Cancel of
    it in the Prefect UI (its state Cancelling) stops the command line as a SIGTERM does,
    within `every_s` seconds, with the run marked Cancelled. Elsewhere (a deployment's run,
    a test calling the command line's `main`) it does nothing."""
    if not _command_line:
        return
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    run_id, settings = context.flow_run.id, contextvars.copy_context()

    def watch() -> None:
        import httpx
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelled

        with get_client(sync_client=True) as client:
            while True:
                time.sleep(every_s)
                try:
                    state = client.read_flow_run(run_id).state
                except httpx.HTTPError:  # a busy or restarting server: asked again next round
                    continue
                if state is not None and state.is_cancelling():
                    message = "Cancelled: swath stopped the command line's export"
                    try:  # marked Cancelled if the server answers; stopped whatever it says
                        client.set_flow_run_state(run_id, Cancelled(message=message), force=True)
                    finally:
                        _stop("cancelled in Prefect", CANCEL_EXIT)

    watcher = threading.Thread(target=settings.run, args=(watch,), name="swath-cancel-watch")
    watcher.daemon = True
    watcher.start()


def end_children() -> None:
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(children, timeout=1)  # killed: they go at once, unless stuck in I/O


# How long a cancelled flow run's process is given to end by itself (Prefect's engine
# unwinding the run) before swath ends it: threads running a task (torch, a read) cannot
# be interrupted, and Prefect's engine waits for them, so it would run on until the
# runner's grace period (30 s) ends it with SIGKILL.
CANCEL_GRACE_S = 2.0
CANCEL_EXIT = 128 + signal.SIGTERM  # the exit status of a cancelled run's process, as the CLI's


@contextlib.contextmanager
def cancel_promptly() -> Iterator[None]:
    """Within it, a SIGTERM (a Prefect runner or worker cancelling a deployment's run, which
    runs in the main thread of a process of its own) ends the process within seconds.

    Prefect's own SIGTERM handling still runs: its engine unwinds the flow (the store's writer
    lock is let go) and records the cancellation. A thread beside it then ends the processes
    this one started (a local Dask cluster's workers), logs one line, and, if the process has
    not ended `CANCEL_GRACE_S` later, sends the logs and ends it with `CANCEL_EXIT`. The store
    stays resumable, as after any stop (done marks are written last). Outside the main thread
    (the command line runs its flow in a thread, and handles SIGTERM itself) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    from prefect.logging import get_run_logger

    logger = get_run_logger()
    previous = signal.getsignal(signal.SIGTERM)

    def cancelled(signum: int, frame: FrameType | None) -> None:
        end = threading.Thread(target=_end_cancelled, args=(logger,), name="swath-cancel")
        end.daemon = True
        end.start()
        if callable(previous):  # Prefect's bridge: raises TerminationSignal in this thread
            previous(signum, frame)

    signal.signal(signal.SIGTERM, cancelled)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is cancelled:
            signal.signal(signal.SIGTERM, previous)


def _end_cancelled(logger: logging.LoggerAdapter[logging.Logger]) -> None:
    """A cancelled run's process: end its children at once, then itself, after a moment for
    Prefect's engine, with its logs sent to the Prefect API."""
    end_children()
    line = (
        "swath: stopped by SIGTERM (a cancel, or its runner or worker stopping); the run's "
        "worker processes are ended and the store is resumable: run the same export again to "
        "finish it (done chunks are kept)"
    )
    print(line, file=sys.stderr, flush=True)
    logger.warning("%s", line)
    time.sleep(CANCEL_GRACE_S)
    try:  # the logs are a courtesy; the exit happens whatever becomes of them
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=CANCEL_GRACE_S)
    finally:
        os._exit(CANCEL_EXIT)
