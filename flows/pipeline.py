"""A flow run's pipeline: its write blocks, prefetch -> produce -> write, in a bounded window.

Per block: each chunk's shared fetches once, then produce per (chunk, product); once every
produce task of a product in the block has finished, one write task per (block, product)
(tasks/write.py). At most `window_blocks` blocks are in flight; the next is submitted as one
completes, so a flow run holds a bounded number of futures and task runs whatever its size.
"""

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from dask.base import annotate
from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture, as_completed
from prefect_dask.task_runners import DaskTaskRunner

from flows.job import ChunkTodo, Job
from tasks.inputs import PrefetchReport
from tasks.prefetch import prefetch_task
from tasks.produce import produce_task
from tasks.results import read_timing
from tasks.write import Block, BlockReport, NotProduced, write_task

# Dask workers that declare this resource (`dask worker --resources "infer=1"`, or the local
# cluster `--runner dask` starts) run one infer task at a time: one per GPU, or one per
# worker's CPU cores. Without it (threads, or a cluster whose workers lack it) the
# infer stage serialises per device inside each process instead.
INFER_RESOURCE = "infer"


@dataclass(frozen=True)
class DeviceUse:
    """A device's infer stage in a run: seconds in forwards, from the first chunk's start on
    it to the last one's end (seconds since the epoch)."""

    forward_s: float
    start: float
    end: float

    def __add__(self, other: "DeviceUse") -> "DeviceUse":
        return DeviceUse(
            self.forward_s + other.forward_s, min(self.start, other.start), max(self.end, other.end)
        )

    def describe(self) -> str:
        span = max(self.end - self.start, 1e-9)
        return (
            f"computing {self.forward_s / span:.0%} of its infer stage "
            f"({self.forward_s:.1f} s of forwards in {span:.1f} s)"
        )


@dataclass
class PartReport:
    """What a flow run's blocks did: root causes of failures (failed prefetch and produce
    tasks), the errors of chunks not written, what it fetched (see `fetched`) and, for a
    compact store, each model's worst cosine of a stored vector to its float32 value."""

    causes: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    fetched: dict[str, int] = field(
        default_factory=lambda: {
            "fetches": 0,
            "requests": 0,
            "bytes": 0,
            "retries": 0,
            "resampled": 0,
        }
    )
    cosines: dict[str, float] = field(default_factory=dict)
    devices: dict[str, DeviceUse] = field(default_factory=dict)
    flagged: dict[str, str] = field(default_factory=dict)  # item id -> why its pixels were dropped

    def add(self, other: "PartReport") -> None:
        self.causes += other.causes
        self.failed += other.failed
        self.flagged.update(other.flagged)
        for name, use in other.devices.items():
            self.devices[name] = self.devices[name] + use if name in self.devices else use
        for key, n in other.fetched.items():
            self.fetched[key] = self.fetched.get(key, 0) + n
        for model, cosine in other.cosines.items():
            self.cosines[model] = min(self.cosines.get(model, 1.0), cosine)


# Called as listener(done, total) after each (chunk, product) finished: the command line's
# progress bar. Runs from the UI show the progress artifact instead.
Listener = Callable[[int, int], None]


class Progress:
    """(chunk, product) pairs finished, across a run and its child runs (which run in its
    process): one progress artifact of the parent run, and a listener (the progress bar).

    Prefect shows a progress artifact as a percentage; its description says of what: the
    pairs finished of the time entry's, those this run wrote, those that failed, those done
    before it."""

    KEY = "swath-export-progress"

    def __init__(self, store: str, total: int, listener: Listener | None, *, done: int = 0) -> None:
        """`total`: every (chunk, product) pair of the time entry; `done`: those done before
        this run (a resumed run starts there). Creates the run's artifact."""
        self.store, self.total, self.listener = store, total, listener
        self.before, self.written, self.failed = done, 0, 0
        self._lock = threading.Lock()
        # From a flow run's thread (no event loop): the call is sync, and returns the id.
        self.artifact = cast(
            UUID,
            create_progress_artifact(
                progress=self.percent(), key=self.KEY, description=self.describe()
            ),
        )
        if listener is not None:
            listener(done, total)

    @property
    def done(self) -> int:
        """Pairs finished: done before this run, written by it, or failed in it."""
        return self.before + self.written + self.failed

    def percent(self) -> float:
        return 100.0 * self.done / self.total if self.total else 100.0

    def describe(self) -> str:
        """`12 of 16 (chunk, model) pairs of STORE finished: 7 written by this run, 1
        failed (a rerun redoes them), 4 done before it`, naming only the parts there are."""
        parts = [f"{self.written} written by this run"]
        if self.failed:
            parts.append(f"{self.failed} failed (a rerun redoes them)")
        if self.before:
            parts.append(f"{self.before} done before it")
        return (
            f"{self.done} of {self.total} (chunk, model) pairs of {self.store} finished: "
            + ", ".join(parts)
        )

    def finished(self, model: str, written: Sequence[str], failed: int) -> None:
        with self._lock:
            for key in written:
                self.written += 1
                get_run_logger().info("written %d/%d: %s %s", self.done, self.total, model, key)
            self.failed += failed
            done, percent, description = self.done, self.percent(), self.describe()
        update_progress_artifact(self.artifact, progress=percent, description=description)
        if self.listener is not None:
            self.listener(done, self.total)


@dataclass(frozen=True)
class Pipeline:
    """What every block of an export run shares: the job, its time entry `t`, the store's
    chunks per write block `k`, whether cached task results are redone (`refresh`), and the
    run's progress. A flow run hands it its blocks (`run`)."""

    job: Job
    t: int
    k: int
    refresh: bool
    progress: Progress

    def run(self, blocks: Sequence[Sequence[ChunkTodo]]) -> PartReport:
        """Prefetch -> produce -> write each block, with at most `window_blocks` in flight."""
        report = PartReport()
        queued = iter(blocks)
        limit = window_blocks(self.k)
        live: dict[PrefectFuture[Any], tuple[_BlockTasks, str, bool]] = {}  # -> model, is write
        in_flight: list[_BlockTasks] = []

        def top_up() -> None:
            while len(in_flight) < limit and (block := next(queued, None)) is not None:
                tasks = _submit_block(self, block)
                in_flight.append(tasks)
                for model, futures in tasks.produced.items():
                    live.update({f: (tasks, model, False) for _, f in futures})

        top_up()
        while live:
            future = next(as_completed(list(live)))
            tasks, model, is_write = live.pop(future)
            if not is_write:
                tasks.waiting[model] -= 1
                if tasks.waiting[model] == 0:
                    live[_submit_write(self, tasks, model)] = (tasks, model, True)
                    tasks.writes += 1
                continue
            _written(future, tasks, model, report, self.progress)
            tasks.writes -= 1
            if tasks.writes == 0 and not any(tasks.waiting.values()):
                report.add(_finished(tasks, self.job.plan.results_path))
                in_flight.remove(tasks)
                top_up()
        return report


@dataclass
class _BlockTasks:
    """A block's task futures: all of them, and per product its produce futures, how many of
    those are not final yet, and its write tasks not final yet."""

    index: int  # the write block's
    upstream: list[PrefectFuture[Any]]
    produced: dict[str, list[tuple[ChunkTodo, PrefectFuture[str]]]]
    waiting: dict[str, int]
    writes: int = 0


def window_blocks(block_chunks: int) -> int:
    """Blocks in flight at once: enough chunks for twice the run's workers (threads, or the
    Dask cluster's threads), and at least 2, so that one block's tasks run while another's
    are written."""
    runner = _runner()
    if isinstance(runner, DaskTaskRunner):
        workers = sum(runner.client.nthreads().values())
    else:
        workers = getattr(runner, "_max_workers", None) or 4
    return max(2, -(-2 * workers // max(1, block_chunks)))


def _submit_block(pipeline: Pipeline, block: Sequence[ChunkTodo]) -> _BlockTasks:
    """Per chunk of the block: each shared fetch once, then produce per product."""
    plan, refresh = pipeline.job.plan, pipeline.refresh
    # Task results (small reports) are kept in the work directory, next to what they stand for.
    results = Path(plan.work_dir, "prefect-results")
    prefetch = prefetch_task.with_options(refresh_cache=refresh, result_storage=results)
    produce = produce_task.with_options(refresh_cache=refresh, result_storage=results)
    resources = _infer_resources()
    tasks = _BlockTasks(block[0].chunk.index // pipeline.k, [], {}, {})
    for todo in block:
        fetched = {
            f.config.key(): prefetch.submit(
                todo.chunk, f.bands, f.config, plan.inputs_path, refresh=refresh
            )
            for f in todo.fetches
        }
        tasks.upstream.extend(fetched.values())
        for product in todo.products:
            with annotate(**(resources if product.uses_device else {})):
                produced = produce.submit(
                    product,
                    todo.chunk,
                    plan.inputs_path,
                    plan.results_path,
                    refresh=refresh,
                    return_state=False,
                    wait_for=[fetched[f.config.key()] for f in product.fetches],
                )
            tasks.upstream.append(produced)
            tasks.produced.setdefault(product.name, []).append((todo, produced))
    tasks.waiting = {model: len(futures) for model, futures in tasks.produced.items()}
    return tasks


def _submit_write(pipeline: Pipeline, tasks: _BlockTasks, model: str) -> PrefectFuture[BlockReport]:
    """The block's write task for `model`, once its produce tasks are final: it gets the
    results of those that completed (and waits for them, for the UI's lineage) and why the
    others failed (their chunks are reported, the others written)."""
    futures = tasks.produced[model]
    produced: list[str | NotProduced] = []
    for _, future in futures:
        future.wait()  # final: its state is the engine's, not the API's possibly older one
        state = future.state
        if state.is_completed():
            produced.append(future.result())
        else:
            produced.append(NotProduced(state.message or f"it ended {state.name}"))
    block = Block(tasks.index, tuple(todo.chunk for todo, _ in futures))
    plan = pipeline.job.plan
    return write_task.submit(
        plan.store,
        model,
        block,
        plan.results_path,
        produced,
        pipeline.t,
        wait_for=[f for (_, f), p in zip(futures, produced, strict=True) if isinstance(p, str)],
        return_state=False,
    )


def _written(
    future: PrefectFuture[Any],
    tasks: _BlockTasks,
    model: str,
    report: PartReport,
    progress: Progress,
) -> None:
    chunks = len(tasks.produced[model])
    try:
        result: BlockReport = future.result()
    except Exception as e:  # reported at the end; the block's chunks stay not done and rerun
        report.failed.append(f"{type(e).__name__}: {e}")
        progress.finished(model, [], chunks)
        return
    for cosine in (w.worst_cosine for w in result.written if w.worst_cosine is not None):
        report.cosines[model] = min(report.cosines.get(model, 1.0), cosine)
    report.failed += [why for _, why in result.failed]
    progress.finished(model, [w.chunk for w in result.written], len(result.failed))


def _finished(tasks: _BlockTasks, results_path: str) -> PartReport:
    """A finished block's fetches, device time and the root causes of its failures."""
    part = PartReport()
    for futures in tasks.produced.values():
        for _, future in futures:
            if future.state.is_completed() and future.state.name != "Cached":
                timing = read_timing(results_path, future.result())
                if timing is not None:
                    name = f"{timing.device} on {timing.host}" if timing.host else timing.device
                    use = DeviceUse(timing.forward_s, timing.start, timing.end)
                    part.add(PartReport(devices={name: use}))
    for future in tasks.upstream:
        future.wait()
        state = future.state
        if state.is_failed() and state.message:
            part.causes.append(state.message)
        if not state.is_completed() or state.name == "Cached":
            continue  # cached prefetches fetched nothing in this run
        fetched = future.result()
        if isinstance(fetched, PrefetchReport):
            part.fetched["fetches"] += 1 if fetched.fetched else 0
            part.fetched["requests"] += fetched.requests
            part.fetched["bytes"] += fetched.bytes_read
            part.fetched["retries"] += fetched.retries
            part.fetched["resampled"] += fetched.resampled
            part.flagged.update(dict(fetched.flagged))
    return part


def _runner() -> Any:
    context = FlowRunContext.get()
    return context.task_runner if context else None


def _infer_resources() -> dict[str, Any]:
    runner = _runner()
    if not isinstance(runner, DaskTaskRunner):
        return {}
    workers = runner.client.scheduler_info().get("workers", {}).values()
    if any(INFER_RESOURCE in w.get("resources", {}) for w in workers):
        return {"resources": {INFER_RESOURCE: 1}}
    return {}
