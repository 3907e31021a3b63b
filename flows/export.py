"""The export flow, plan -> prefetch -> infer -> write, and its command line.

python -m flows.export                  # the offline demo
python -m flows.export --bbox W,S,E,N --spacing 250 --models dofa_base --out e.zarr
"""

if __name__ == "__main__":  # the command line: check arguments before importing torch or Prefect
    from flows.cli import main

    raise SystemExit(main())

import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import torch
from dask.base import annotate
from prefect import State, flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask.task_runners import DaskTaskRunner

from flows.job import Job, Work, chunk_work, plan_job, resolve_job
from flows.params import Imagery, Inference, Output, Region, Window
from tasks.conventions import write_stac_items
from tasks.integrity import Damage
from tasks.locks import writer_lock
from tasks.prefetch import PrefetchReport, prefetch_task
from tasks.produce import produce_task
from tasks.quicklook import quicklook_artifacts
from tasks.store import (
    add_window,
    create_store,
    is_url,
    status_counts,
    stored_windows,
    time_index,
)
from tasks.write import WriteReport, write_task

# Threads: prefetch and write alongside one infer per device (tasks/infer.py DevicePool).
THREADS = 4 + torch.cuda.device_count()


@flow(name="swath-export", task_runner=ThreadPoolTaskRunner(max_workers=THREADS))  # type: ignore[arg-type]
def export(
    region: Region = Region(),  # noqa: B008 - pydantic models are immutable defaults
    window: Window = Window(),  # noqa: B008
    imagery: Imagery = Imagery(),  # noqa: B008
    inference: Inference = Inference(),  # noqa: B008
    output: Output = Output(),  # noqa: B008
) -> dict[str, Any] | State[Any]:
    """Export embeddings of every point of a region into one Zarr store.

    Returns the run's summary. A run where not every point is ok ends Failed, and calling
    the flow raises ExportGaps, which carries the summary.
    """
    logger = get_run_logger()
    started = time.monotonic()
    plan = plan_job(region, window, imagery, inference, output, today=scheduled_day())
    # Object-store URLs: one writer across machines through the run's Prefect server.
    with writer_lock(
        plan.store,
        wait=output.wait,
        lock_dir=plan.locks_dir,
        reuse=True,
        across_machines=is_url(plan.store),
    ):
        job = resolve_job(plan)
        logger.info(
            "%d points in %d chunks, window %s..%s, models %s -> %s",
            len(plan.points),
            len(plan.chunks),
            *plan.window,
            ", ".join(p.name for p in job.products),
            plan.store,
        )
        for product in job.products:
            warning = product.warning()
            if warning:
                logger.warning("%s", warning)
            else:
                logger.info("%s: %s", product.name, product.describe())
        t = _time_entry(job, region)
        todo = chunk_work(job, t, refresh=output.refresh)
        for line in todo.damage_reports("..".join(str(d) for d in plan.window)):
            logger.warning("%s", line)
        failed, fetched, cosines = _run(job, todo, t, refresh=output.refresh)
        seconds = time.monotonic() - started
        summary = _summary(job, t, seconds, damaged=todo.damaged, fetched=fetched)
        for name, cosine in cosines.items():
            summary["models"][name]["worst_cosine_to_float32"] = cosine
    _summary_artifact(summary)
    quicklook_artifacts(plan.store, t)
    write_stac_items(plan.store, job.layout, stored_windows(plan.store))
    if failed:
        raise RuntimeError(
            f"{len(failed)} chunk task(s) failed, first: {failed[0]}; rerun the same command "
            "to redo only the chunks not done"
        )
    if not summary["all_ok"]:
        gaps = "; ".join(f"{m}: {_counts(s['status'])}" for m, s in summary["models"].items())
        message = f"not every point is ok ({gaps}); the store's <model>_reason says why"
        logger.warning("%s", message)
        # A run with gaps ends Failed, as the command line exits 1: a UI user cannot miss it.
        return Failed(message=message, data=ExportGaps(message, summary))
    return summary


class ExportGaps(RuntimeError):
    """The export ran to the end, but not every point of every product is ok; the store
    holds what was written and why the others were not. `summary` is the run's summary."""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.summary))


def scheduled_day() -> date:
    """The day a run is for: its scheduled start (a scheduled run that starts late still
    exports the month it was scheduled for), or today outside a scheduled run."""
    scheduled = flow_run.scheduled_start_time
    return scheduled.date() if scheduled is not None else datetime.now(UTC).date()


def _time_entry(job: Job, region: Region) -> int:
    """Create the store, or find or add this window's time entry; its index."""
    plan = job.plan
    if not job.resume:
        attrs = {"region": region.model_dump(mode="json")}
        create_store(plan.store, job.layout, plan.window, attrs=attrs)
        return 0
    t = time_index(plan.store, plan.window)
    return t if t is not None else add_window(plan.store, job.layout, plan.window)


# Called as listener(done, total) after each (chunk, product) written: the command line's
# progress bar listens here. Runs from the UI show the progress artifact instead.
PROGRESS_LISTENERS: list[Callable[[int, int], None]] = []


def _run(
    job: Job, todo: Work, t: int, *, refresh: bool
) -> tuple[list[str], dict[str, int], dict[str, float]]:
    """Run every chunk not done, with a progress artifact. Returns the errors of failed
    chunks, what this run fetched (see `_fetched`) and, for a compact store, each model's
    worst cosine of a stored vector to its float32 value over the chunks written."""
    writes, upstream = _submit(job, todo, t, refresh=refresh)
    progress: UUID = create_progress_artifact(  # type: ignore[assignment]
        progress=0.0 if writes else 100.0,
        key="swath-export-progress",
        description=f"chunks written to {job.plan.store}",
    )
    failed = []
    cosines: dict[str, float] = {}
    for i, fut in enumerate(as_completed(writes), start=1):
        try:
            report = fut.result()
            get_run_logger().info(
                "written %d/%d: %s %s", i, len(writes), report.model, report.chunk
            )
            if report.worst_cosine is not None:
                cosines[report.model] = min(cosines.get(report.model, 1.0), report.worst_cosine)
        except Exception as e:  # reported at the end; the chunk stays not done and reruns
            failed.append(f"{type(e).__name__}: {e}")
        update_progress_artifact(progress, progress=100.0 * i / len(writes))
        for listener in PROGRESS_LISTENERS:
            listener(i, len(writes))
    if failed:  # name the root cause: a write fails too when its prefetch or infer failed
        causes = [f.state.message for f in upstream if f.state.is_failed() and f.state.message]
        failed = causes + failed
    return failed, _fetched(upstream), cosines


def _fetched(upstream: list[PrefectFuture[Any]]) -> dict[str, int]:
    """What this run's prefetch tasks fetched, as their sources count it: requests, bytes of
    pixels, and the attempts retried after a transient failure (429, 5xx, timeouts). Cached
    prefetches fetched nothing in this run and are not counted."""
    totals = {"fetches": 0, "requests": 0, "bytes": 0, "retries": 0}
    for fut in upstream:
        state = fut.state
        if not state.is_completed() or state.name == "Cached":
            continue
        report = fut.result()
        if isinstance(report, PrefetchReport):
            totals["fetches"] += 1 if report.fetched else 0
            totals["requests"] += report.requests
            totals["bytes"] += report.bytes_read
            totals["retries"] += report.retries
    return totals


def _submit(
    job: Job, todo: Work, t: int, *, refresh: bool
) -> tuple[list[PrefectFuture[WriteReport]], list[PrefectFuture[Any]]]:
    """Per chunk not done: each shared fetch once, then produce and write per product.

    Returns the write futures and the prefetch and produce futures they depend on.
    """
    plan = job.plan
    # Task results (small reports) are kept in the work directory, next to what they stand for.
    results = Path(plan.work_dir, "prefect-results")
    prefetch = prefetch_task.with_options(refresh_cache=refresh, result_storage=results)
    produce = produce_task.with_options(refresh_cache=refresh, result_storage=results)
    resources = _infer_resources()
    writes: list[PrefectFuture[WriteReport]] = []
    upstream: list[PrefectFuture[Any]] = []
    for work in todo.chunks:
        fetched = {
            f.config.key(): prefetch.submit(
                work.chunk, f.bands, f.config, plan.inputs_path, refresh=refresh
            )
            for f in work.fetches
        }
        upstream.extend(fetched.values())
        for product in work.products:
            with annotate(**(resources if product.uses_device else {})):
                produced = produce.submit(
                    product,
                    work.chunk,
                    plan.inputs_path,
                    plan.results_path,
                    refresh=refresh,
                    return_state=False,
                    wait_for=[fetched[f.config.key()] for f in product.fetches],
                )
            upstream.append(produced)
            writes.append(
                write_task.submit(
                    plan.store,
                    work.chunk,
                    product.name,
                    plan.results_path,
                    produced,
                    t,
                    return_state=False,
                )
            )
    return writes, upstream


# Dask workers that declare this resource (`dask worker --resources "infer=1"`, or the local
# cluster `--runner dask` starts) run one infer task at a time: one per GPU, or one per
# worker's CPU cores. Without it (threads, or a cluster whose workers lack it) the
# infer stage serialises per device inside each process instead.
INFER_RESOURCE = "infer"


def _infer_resources() -> dict[str, Any]:
    context = FlowRunContext.get()
    runner = context.task_runner if context else None
    if not isinstance(runner, DaskTaskRunner):
        return {}
    workers = runner.client.scheduler_info().get("workers", {}).values()
    if any(INFER_RESOURCE in w.get("resources", {}) for w in workers):
        return {"resources": {INFER_RESOURCE: 1}}
    return {}


def _summary(
    job: Job,
    t: int,
    seconds: float,
    *,
    damaged: dict[str, list[Damage]],
    fetched: dict[str, int],
) -> dict[str, Any]:
    models: dict[str, dict[str, Any]] = {}
    for product in job.products:
        models[product.name] = {
            "status": status_counts(job.plan.store, product.name, t),
            "redone_damaged": [d.key for d in damaged.get(product.name, [])],
            "weights": product.describe(),
            "dtype": job.layout.dtype,
            "warning": product.warning(),
        }
    return {
        "store": job.plan.store,
        "window": [str(d) for d in job.plan.window],
        "time_index": t,
        "points": len(job.plan.points),
        "chunks": len(job.plan.chunks),
        "models": models,
        "imagery": fetched,
        "seconds": round(seconds, 1),
        "all_ok": all(m["status"]["ok"] == len(job.plan.points) for m in models.values()),
    }


def _counts(status: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in status.items() if v)


def imagery_line(fetched: dict[str, int]) -> str:
    """What the run fetched, in one line (the summary artifact and the command line); the
    counts a source does not keep (requests of GDAL's own reads) are left out."""
    if not fetched["fetches"]:
        return "imagery: nothing fetched in this run"
    parts = [f"{fetched['fetches']} chunk fetch(es)"]
    if fetched["requests"]:
        parts.append(f"{fetched['requests']} request(s)")
    if fetched["bytes"]:
        parts.append(f"{fetched['bytes'] / 1e6:.1f} MB")
    parts.append(f"{fetched['retries']} retried attempt(s)")
    return "imagery: " + ", ".join(parts)


def _summary_artifact(summary: dict[str, Any]) -> None:
    """The run's summary in the UI: a narrow table (what a weights note explains is listed
    under it, not squeezed into a cell), what was fetched, where the store is."""
    rows, notes = [], []
    for name, m in summary["models"].items():
        weights, _, note = str(m["weights"]).partition(" (")
        if note:
            notes.append(f"- {name}: ({note}")
        stored = m["dtype"]
        if m.get("worst_cosine_to_float32") is not None:
            stored += f", cos ≥ {m['worst_cosine_to_float32']:.5f}"
        if m["warning"]:
            weights = "**RANDOM** " + weights.removeprefix("random ")
        status = m["status"]
        rows.append(
            f"| {name} | {status['ok']} | {status['failed']} | {status['nodata']} "
            f"| {status['pending']} | {weights} | {stored} |"
        )
    create_markdown_artifact(
        key="swath-export-summary",
        description="points per status and model",
        markdown=(
            f"## swath export\n\n{summary['points']} points, {summary['chunks']} chunks, window "
            f"{summary['window'][0]}..{summary['window'][1]}, {summary['seconds']} s\n\n"
            "| model | ok | failed | no data | pending | weights | stored |\n"
            "|---|---|---|---|---|---|---|\n"
            + "\n".join(rows)
            + ("\n\n" + "\n".join(notes) if notes else "")
            + (
                "\n\ncos: the worst cosine of a stored vector to its float32 value"
                if any("worst_cosine_to_float32" in m for m in summary["models"].values())
                else ""
            )
            + f"\n\n{imagery_line(summary['imagery'])}\n\nstore: `{summary['store']}`\n"
        ),
    )
