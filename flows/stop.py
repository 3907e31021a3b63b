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
from collections.abc import Callable, Iterator
from types import FrameType
from uuid import UUID


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

        with get_client(sync_client=True) as client:
            while True:
                time.sleep(every_s)
                try:
                    state = client.read_flow_run(run_id).state
                except httpx.HTTPError:  # a busy or restarting server: asked again next round
                    continue
                if state is not None and state.is_cancelling():
                    try:  # marked Cancelled if the server answers; stopped whatever it says
                        _mark_cancelled([str(run_id)], "the command line's export")
                        _cancel_tasks([str(run_id)])
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


# How long a flow run's process stopped by a SIGTERM that is not a cancel (its runner or
# worker stopping) is given to end by itself (Prefect's engine recording a crash) before
# swath ends it: threads running a task (torch, a read) cannot be interrupted, and Prefect's
# engine waits for them, so it would run on until the runner's grace period (30 s) ends it.
CANCEL_GRACE_S = 2.0
CANCEL_EXIT = 128 + signal.SIGTERM  # the exit status of a cancelled run's process, as the CLI's
LINE = (
    "swath: stopped by SIGTERM (a cancel, or its runner or worker stopping); the run's worker "
    "processes are ended and the store is resumable: run the same export again to finish it "
    "(done chunks are kept)"
)


@contextlib.contextmanager
def cancel_promptly() -> Iterator[None]:
    """Within it, a SIGTERM (a Prefect runner or worker cancelling a deployment's run, which
    runs in the main thread of a process of its own) ends the process within seconds, the
    run marked Cancelled.

    A thread looks at the run's state. Cancelling (a Cancel from the UI or the API): swath
    marks the run (and the child run it is in) Cancelled, ends the processes this one started
    (a local Dask cluster's workers), logs one line, sends the logs and exits with
    `CANCEL_EXIT`. Prefect's engine is not asked: it records a cancel only when the runner's
    control channel got its acknowledgement within 1 s, and forces Crashed otherwise, which
    a busy process (a Dask client, torch) missed. Any other SIGTERM goes to Prefect's own
    handling as before, and the process ends `CANCEL_GRACE_S` later if still alive. The store
    stays resumable, as after any stop (done marks are written last; the writer lock is the
    operating system's). Outside the main thread (the command line runs its flow in a thread,
    and handles SIGTERM itself) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    from prefect.context import FlowRunContext
    from prefect.logging import get_run_logger

    logger = get_run_logger()
    context = FlowRunContext.get()
    here = str(context.flow_run.id) if context and context.flow_run else None
    runs = [r for r in dict.fromkeys([os.environ.get("PREFECT__FLOW_RUN_ID"), here]) if r]
    previous = signal.getsignal(signal.SIGTERM)
    passed_on = threading.Event()  # not a cancel: the next SIGTERM is Prefect's to handle
    seen = threading.Event()

    def pass_on() -> None:
        passed_on.set()
        os.kill(os.getpid(), signal.SIGTERM)  # to this handler, in the main thread

    def cancelled(signum: int, frame: FrameType | None) -> None:
        if passed_on.is_set():
            if callable(previous):  # Prefect's bridge: raises TerminationSignal in this thread
                previous(signum, frame)
            return
        if seen.is_set():
            return
        seen.set()
        args = (logger, runs, pass_on)
        threading.Thread(target=_end_stopped, args=args, name="swath-cancel", daemon=True).start()

    signal.signal(signal.SIGTERM, cancelled)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is cancelled:
            signal.signal(signal.SIGTERM, previous)


def _end_stopped(
    logger: logging.LoggerAdapter[logging.Logger], runs: list[str], pass_on: Callable[[], None]
) -> None:
    """A deployment's run's process after a SIGTERM: cancelled (its run, `runs[0]`, is
    Cancelling), it marks `runs` Cancelled and ends now; otherwise Prefect's handling runs
    (`pass_on`) and it ends after `CANCEL_GRACE_S`. Its children are ended, its logs sent."""
    try:
        cancel = bool(runs) and _is_cancelling(runs[0])
    except Exception as e:  # an API that does not answer: Prefect's handling decides
        logger.warning("swath: could not read the run's state after a SIGTERM: %s", e)
        cancel = False
    if not cancel:  # the runner or worker stopping: Prefect records a crash
        pass_on()
        end_children()  # at once: the engine waits for a Dask cluster it cannot reach
    print(LINE, file=sys.stderr, flush=True)
    logger.warning("%s", LINE)
    try:  # the state and the logs are a courtesy; the exit happens whatever becomes of them
        if cancel:  # marked first: the flow, going on meanwhile, cannot end it otherwise
            _mark_cancelled(runs)
        else:
            time.sleep(CANCEL_GRACE_S)
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=CANCEL_GRACE_S)
        if cancel:  # last: the flow may have started tasks until now
            _cancel_tasks(runs)
    finally:
        end_children()  # last: a flow that lost its Dask workers would fail the run first
        os._exit(CANCEL_EXIT)


def _is_cancelling(run_id: str) -> bool:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True, httpx_settings={"timeout": 5}) as client:
        state = client.read_flow_run(UUID(run_id)).state
    return state is not None and state.is_cancelling()


def _mark_cancelled(runs: list[str], what: str = "the run's process") -> None:
    """The runner's run and the child run this process is in marked Cancelled (forced: the
    child is Running), so the runner's record of the exit status is refused (a run already
    Cancelled is not marked Crashed)."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    with get_client(sync_client=True, httpx_settings={"timeout": 5}) as client:
        for run in map(UUID, runs):
            state = client.read_flow_run(run).state
            if state is None or not state.is_final():
                message = f"Cancelled: swath stopped {what}"
                client.set_flow_run_state(run, Cancelled(message=message), force=True)


def _cancel_tasks(runs: list[str]) -> None:
    """The child runs of `runs` and the task runs of all of them that are not yet finished
    marked Cancelled, so that the UI shows none Running after the process has gone: asked
    again until none is left (the flow's thread may start one meanwhile), at most a few
    rounds, just before the process ends."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled

    message = "Cancelled: swath stopped its run's process"
    unfinished = [StateType.PENDING, StateType.RUNNING, StateType.SCHEDULED]
    parents = [UUID(r) for r in runs]
    with get_client(sync_client=True, httpx_settings={"timeout": 5}) as client:
        for _ in range(4):
            children = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=parents)
                )
            )
            for child in children:
                if child.state is None or not child.state.is_final():
                    client.set_flow_run_state(child.id, Cancelled(message=message), force=True)
            tasks = TaskRunFilter(
                flow_run_id=TaskRunFilterFlowRunId(any_=[*parents, *(c.id for c in children)]),
                state=TaskRunFilterState(type=TaskRunFilterStateType(any_=unfinished)),
            )
            left = client.read_task_runs(task_run_filter=tasks)
            if not left:
                return
            for task in left:
                client.set_task_run_state(task.id, Cancelled(message=message), force=True)
