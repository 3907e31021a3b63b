"""The export flow, plan -> prefetch -> infer -> write, and its command line.

`export` is the flow (the UI, deployments, Python): it plans, locks and resolves the job,
then `export_job` runs it. The command line plans, locks and resolves it itself and runs
`export_flow_for(job)`: the same flow, built around that job.

python -m flows.export                  # the offline demo
python -m flows.export --bbox W,S,E,N --spacing 250 --models dofa_base --out e.zarr
"""

if __name__ == "__main__":  # the command line: check arguments before importing torch or Prefect
    from flows.stop import stop_on_signals

    stop_on_signals()  # first: a SIGTERM while the rest is imported gets swath's one line
    from flows.cli import main

    raise SystemExit(main())

import functools
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from typing import Any

import torch
from prefect import Flow, State, flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.runtime import flow_run
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask.task_runners import DaskTaskRunner
from pydantic import ValidationError

from flows.checks import UsageError
from flows.job import ChunkTodo, Job, Todo, chunks_to_do, job_for
from flows.naming import form_errors
from flows.params import CHILD_CHUNKS, SETTINGS, Imagery, Inference, Output, Region, Window
from flows.pipeline import INFER_RESOURCE as INFER_RESOURCE
from flows.pipeline import Listener, PartReport, Pipeline, Progress
from flows.stop import cancel_promptly, stop_when_cancelled
from flows.summary import ExportGaps as ExportGaps
from flows.summary import gaps_message, gdal_retries_so_far, run_summary, summary_artifact
from tasks.plan.shards import block_chunks, group_blocks, split_blocks
from tasks.store.conventions import write_stac_items
from tasks.store.layout import (
    add_window,
    create_store,
    default_block_chunks,
    is_url,
    stored_windows,
    time_index,
)
from tasks.store.locks import StoreBusy
from tasks.store.quicklook import quicklook_artifacts

# Threads: prefetch and write alongside one infer per device (tasks/infer.py DevicePool).
THREADS = 4 + torch.cuda.device_count()


# Parameters are validated in the flow (`_settings`), not by Prefect's engine: a refusal then
# reaches the run's log and its message in the form's words, with no traceback.
@flow(
    name="swath-export",
    task_runner=ThreadPoolTaskRunner(max_workers=THREADS),  # type: ignore[arg-type]
    validate_parameters=False,
)
def export(
    region: Region = Region(),  # noqa: B008 - pydantic models are immutable defaults
    window: Window = Window(),  # noqa: B008
    imagery: Imagery = Imagery(),  # noqa: B008
    inference: Inference = Inference(),  # noqa: B008
    output: Output = Output(),  # noqa: B008
) -> dict[str, Any] | State[Any]:
    """Export embeddings of every point of a region into one Zarr store.

    Returns the run's summary. A run where not every point is ok ends Failed, and calling
    the flow raises ExportGaps, which carries the summary. Parameters it refuses (UsageError,
    StoreBusy) end it Failed with the refusal as its message, and calling it raises them.
    """
    try:
        settings = _settings(region, window, imagery, inference, output)
        output = settings["output"]
        # Object-store URLs: one writer across machines through the run's Prefect server.
        with (
            cancel_promptly(),
            job_for(**settings, today=scheduled_day(), across_machines=is_url(output.store)) as job,
        ):
            return export_job(job, output)
    except (UsageError, StoreBusy) as e:  # bad input, said in one line: no traceback
        get_run_logger().error("%s", e)
        return Failed(message=str(e), data=e)


def _settings(*values: Any) -> dict[str, Any]:
    """The flow's parameters as their models (the UI and the API send JSON), each checked,
    every rule across fields too; UsageError with one line per error, in the form's words."""
    settings, errors = {}, []
    for model, value in zip(SETTINGS, values, strict=True):
        section = model.__name__.lower()
        try:
            settings[section] = value if isinstance(value, model) else model.model_validate(value)
        except ValidationError as e:
            errors += form_errors(section, model, e)
    if errors:
        raise UsageError("; ".join(errors))
    return settings


def export_job(
    job: Job,
    output: Output,
    *,
    on_progress: Listener | None = None,
    started: float | None = None,
) -> dict[str, Any] | State[Any]:
    """Export a job planned, resolved and under its store's writer lock, in a flow run: the
    time entry and the chunks still to do; each write block prefetch -> produce -> write
    (in this run, or in child runs); then the summary, artifacts, STAC items and the
    failure rule (`_finish`). `on_progress` hears of each (chunk, product) finished.
    `started`: when the run began (`time.monotonic()`; the command line's start, so that
    its bar, its summary and the artifact tell one duration), else now."""
    started = time.monotonic() if started is None else started
    gdal_before = gdal_retries_so_far()
    _log_job(job)
    chunks_per_run = output.chunks_per_run or CHILD_CHUNKS
    t = _time_entry(job, chunks_per_run)
    todo = chunks_to_do(job, t, refresh=output.refresh)
    for line in todo.damage_reports("..".join(str(d) for d in job.plan.window)):
        get_run_logger().warning("%s", line)
    progress = _progress(job, todo, on_progress)
    pipeline = Pipeline(job, t, k=_block_chunks(job), refresh=output.refresh, progress=progress)
    report = _run(pipeline, todo.chunks, chunks_per_run)
    seconds, gdal = time.monotonic() - started, gdal_retries_so_far() - gdal_before
    summary = run_summary(job, t, report, todo, seconds=seconds, gdal_retried=gdal)
    return _finish(job, t, summary, report)


def export_flow_for(
    job: Job, output: Output, *, on_progress: Listener, started: float | None = None
) -> Flow[..., Any]:
    """The flow `export` for a job its caller (the command line) has planned, resolved and
    holds the writer lock of: the same name, parameters and runner, but its run exports
    `job` and tells `on_progress`, where `export` would plan, resolve and lock again.

    Built around the job (a closure): the loaded job stays in this process, while a flow
    run's parameters go through Prefect's API. Call it with the parameters the job was
    planned from: they are the run's, as the UI shows them.
    """

    call = _InProcess(lambda: export_job(job, output, on_progress=on_progress, started=started))

    @functools.wraps(export.fn)
    def run(*_: Any, **__: Any) -> dict[str, Any] | State[Any]:
        stop_when_cancelled()  # no runner watches this run for a Cancel from the UI
        return call()

    return Flow(run, name=export.name, task_runner=export.task_runner)


class _InProcess[R]:
    """A call that stays in the process that made it, for a flow built around a loaded job:
    Prefect pickles the flow into each Dask task's context (where only its name is read),
    and this pickles to an empty stand-in, not to the job (models, locks, a progress bar)."""

    def __init__(self, call: Callable[[], R] | None) -> None:
        self._call = call

    def __call__(self) -> R:
        if self._call is None:
            raise RuntimeError(
                "a flow built around a loaded job runs only in the process that built it; "
                "rerun the export itself (done chunks are kept)"
            )
        return self._call()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_InProcess, (None,))


def _log_job(job: Job) -> None:
    """What the run is about to do, and what its checks found and repaired."""
    logger, plan = get_run_logger(), job.plan
    logger.info(
        "%d points in %d chunks, window %s..%s, models %s -> %s",
        len(plan.points),
        len(plan.chunks),
        *plan.window,
        ", ".join(p.name for p in job.products),
        plan.store,
    )
    for line in plan.notes:
        logger.warning("%s", line)
    for line in job.repaired:
        logger.warning("repaired in the store: %s", line)
    for product in job.products:
        warning = product.warning()
        if warning:
            logger.warning("%s", warning)
        else:
            logger.info("%s: %s", product.name, product.describe())


# Outcomes a run ends Failed with on purpose, its message saying why: bad parameters (the
# form's, refused by their models or swath's checks), a store another export is writing, a
# run with gaps. Prefect's engine re-raises a Failed run's exception at its end, and a
# deployment's run logs it as "Engine execution exited with unexpected exception" with a
# traceback (prefect/engine.py, 3.8.8): that record is dropped for these.
EXPECTED = (UsageError, StoreBusy, ExportGaps)


def _not_expected(record: logging.LogRecord) -> bool:
    """A log filter: False for a record that carries the traceback of an expected outcome."""
    return not (record.exc_info and isinstance(record.exc_info[1], EXPECTED))


logging.getLogger("prefect.flow_runs").addFilter(_not_expected)


def scheduled_day() -> date:
    """The day a run is for: its scheduled start (a scheduled run that starts late still
    exports the month it was scheduled for), or today outside a scheduled run."""
    scheduled = flow_run.scheduled_start_time
    return scheduled.date() if scheduled is not None else datetime.now(UTC).date()


def _time_entry(job: Job, chunks_per_run: int) -> int:
    """Create the store, or find or add this window's time entry; its index. A new store's
    write blocks hold at most `chunks_per_run` chunks, so that blocks fit a child run."""
    plan = job.plan
    if not job.resume:
        attrs = {"region": plan.region.model_dump(mode="json")}
        k = default_block_chunks(job.layout, at_most=chunks_per_run)
        create_store(plan.store, job.layout, plan.window, attrs=attrs, block_chunks=k)
        return 0
    t = time_index(plan.store, plan.window)
    return t if t is not None else add_window(plan.store, job.layout, plan.window)


def _block_chunks(job: Job) -> int:
    """Chunks per write block of the store (those its arrays were created with)."""
    return block_chunks(job.plan.store, [p.name for p in job.products])


def _progress(job: Job, todo: Todo, listener: Listener | None) -> Progress:
    """The run's progress, in (chunk, model) pairs of the time entry, those done before this
    run counted done: one artifact, and `listener`."""
    total = len(job.plan.chunks) * len(job.products)
    done = total - sum(len(c.products) for c in todo.chunks)
    return Progress(job.plan.store, total, listener, done=done)


def _run(pipeline: Pipeline, todo: list[ChunkTodo], chunks_per_run: int) -> PartReport:
    """Run every chunk to do, in write blocks: in this flow run, or in child flow runs of at
    most `chunks_per_run` chunks (whole write blocks) each, one after the other, all writing
    the one store under this run's writer lock."""
    k = pipeline.k
    blocks = split_blocks(todo, k, lambda c: c.chunk.index)
    groups = group_blocks(blocks, max(k, chunks_per_run))
    if len(groups) <= 1:
        return pipeline.run(blocks)
    get_run_logger().info("%d chunks in %d child runs", len(todo), len(groups))
    runner = _child_runner()
    report = PartReport()
    for i, group in enumerate(groups):
        part = _part_flow(pipeline, group).with_options(task_runner=runner)
        first, last = group[0][0].chunk.index, group[-1][-1].chunk.index
        try:
            report.add(part(part=i, chunks=f"{first}-{last}"))
        except PartFailed as e:
            report.add(e.report)
        except Exception as e:  # reported at the end; its chunks stay not done and rerun
            report.failed.append(f"part {i}: {type(e).__name__}: {e}")
    return report


def _part_flow(pipeline: Pipeline, blocks: Sequence[Sequence[ChunkTodo]]) -> Flow[..., PartReport]:
    """A child flow of the export, for a group of its write blocks. Built around them (a
    closure): the loaded job reaches the child run in this process, not as parameters that
    Prefect would serialise for its API; Dask workers get a stand-in (`_InProcess`)."""

    call = _InProcess(lambda: pipeline.run(blocks))

    @flow(name="swath-export-part", flow_run_name="part {part}: chunks {chunks}")
    def export_part(part: int, chunks: str) -> PartReport:
        """A child run of an export: its `part`-th group of write blocks (plan chunks
        `chunks`)."""
        with cancel_promptly():  # Prefect's engine put its own handler back for this child run
            report = call()
        if report.causes or report.failed:
            raise PartFailed(report)
        return report

    return export_part


class PartFailed(RuntimeError):
    """A child run ran to the end with chunks not written; `report` says which and why."""

    def __init__(self, report: PartReport) -> None:
        first = (report.causes + report.failed)[0]
        super().__init__(f"{len(report.failed)} chunk(s) not written, first: {first}")
        self.report = report

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.report,))


def _child_runner() -> Any:
    """The child runs' task runner: on Dask, the parent's cluster (by address), never a new
    one per child; otherwise threads, as the parent."""
    context = FlowRunContext.get()
    runner = context.task_runner if context else None
    if isinstance(runner, DaskTaskRunner):
        return DaskTaskRunner(address=runner.client.scheduler_info()["address"])
    return ThreadPoolTaskRunner(max_workers=THREADS)


def _finish(job: Job, t: int, summary: dict[str, Any], report: PartReport) -> Any:
    """The summary and quick-look artifacts and the STAC items; then the failure rule: a
    failed task raises (a rerun redoes its chunks), a run with gaps ends Failed."""
    summary_artifact(summary)
    quicklook_artifacts(job.plan.store, t)
    write_stac_items(job.plan.store, job.layout, stored_windows(job.plan.store))
    failed = report.causes + report.failed
    if failed:
        raise RuntimeError(
            f"{len(failed)} chunk task(s) failed, first: {failed[0]}; rerun the same command "
            "to redo only the chunks not done"
        )
    if not summary["all_ok"]:
        message = gaps_message(summary)
        get_run_logger().warning("%s", message)
        # A run with gaps ends Failed, as the command line exits 1: a UI user cannot miss it.
        return Failed(message=message, data=ExportGaps(message, summary))
    return summary
