"""One flow run's share of an export: its write blocks, submitted in a bounded window.

Per block: each chunk's shared fetches once, then produce per (chunk, product); once every
produce task of a product in the block has finished, one write task per (block, product)
(tasks/write.py). At most `window_blocks` blocks are in flight; the next is submitted as one
completes, so a flow run holds a bounded number of futures and task runs whatever its size.
"""

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from dask.base import annotate
from prefect import get_run_logger
from prefect.artifacts import update_progress_artifact
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture, as_completed
from prefect_dask.task_runners import DaskTaskRunner

from flows.job import ChunkWork, Job
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
    """What a flow run's share did: root causes of failures (failed prefetch and produce
    tasks), the errors of chunks not written, what it fetched (see `fetched`) and, for a
    compact store, each model's worst cosine of a stored vector to its float32 value."""

    causes: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    fetched: dict[str, int] = field(
        default_factory=lambda: {"fetches": 0, "requests": 0, "bytes": 0, "retries": 0}
    )
    cosines: dict[str, float] = field(default_factory=dict)
    devices: dict[str, DeviceUse] = field(default_factory=dict)

    def add(self, other: "PartReport") -> None:
        self.causes += other.causes
        self.failed += other.failed
        for name, use in other.devices.items():
            self.devices[name] = self.devices[name] + use if name in self.devices else use
        for key, n in other.fetched.items():
            self.fetched[key] = self.fetched.get(key, 0) + n
        for model, cosine in other.cosines.items():
            self.cosines[model] = min(self.cosines.get(model, 1.0), cosine)


class Progress:
    """(chunk, product) pairs finished, across a run and its child runs (which run in its
    process): one progress artifact of the parent run, and listeners (the progress bar)."""

    def __init__(
        self, artifact: UUID, total: int, listeners: Sequence[Callable[[int, int], None]]
    ) -> None:
        self.artifact, self.total, self.listeners = artifact, total, listeners
        self.done = 0
        self._lock = threading.Lock()

    def finished(self, model: str, written: Sequence[str], failed: int) -> None:
        with self._lock:
            for key in written:
                self.done += 1
                get_run_logger().info("written %d/%d: %s %s", self.done, self.total, model, key)
            self.done += failed
            done = self.done
        update_progress_artifact(self.artifact, progress=100.0 * done / max(1, self.total))
        for listener in self.listeners:
            listener(done, self.total)


@dataclass
class _Flight:
    """A block in flight: its futures, and per product its produce futures not yet final."""

    index: int  # the write block's
    upstream: list[PrefectFuture[Any]]
    produced: dict[str, list[tuple[ChunkWork, PrefectFuture[str]]]]
    waiting: dict[str, int]
    writes: int = 0


@dataclass(frozen=True)
class Share:
    """A flow run's share of an export: the work of its write blocks of `k` chunks each."""

    job: Job
    t: int
    k: int
    blocks: Sequence[Sequence[ChunkWork]]
    refresh: bool


def run_blocks(share: Share, progress: Progress) -> PartReport:
    """Run the share's blocks with at most `window_blocks` of them in flight."""
    job, t, k, refresh = share.job, share.t, share.k, share.refresh
    report = PartReport()
    todo = iter(share.blocks)
    limit = window_blocks(k)
    live: dict[PrefectFuture[Any], tuple[_Flight, str, bool]] = {}  # -> flight, model, is write
    flights: list[_Flight] = []

    def top_up() -> None:
        while len(flights) < limit and (works := next(todo, None)) is not None:
            flight = _submit_block(job, works, works[0].chunk.index // k, refresh=refresh)
            flights.append(flight)
            for model, futures in flight.produced.items():
                live.update({f: (flight, model, False) for _, f in futures})

    top_up()
    while live:
        future = next(as_completed(list(live)))
        flight, model, is_write = live.pop(future)
        if not is_write:
            flight.waiting[model] -= 1
            if flight.waiting[model] == 0:
                live[_submit_write(job, flight, model, t)] = (flight, model, True)
                flight.writes += 1
            continue
        _written(future, flight, model, report, progress)
        flight.writes -= 1
        if flight.writes == 0 and not any(flight.waiting.values()):
            report.add(_finished(flight, job.plan.results_path))
            flights.remove(flight)
            top_up()
    return report


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


def _submit_block(job: Job, works: Sequence[ChunkWork], index: int, *, refresh: bool) -> _Flight:
    """Per chunk of the block: each shared fetch once, then produce per product."""
    plan = job.plan
    # Task results (small reports) are kept in the work directory, next to what they stand for.
    results = Path(plan.work_dir, "prefect-results")
    prefetch = prefetch_task.with_options(refresh_cache=refresh, result_storage=results)
    produce = produce_task.with_options(refresh_cache=refresh, result_storage=results)
    resources = _infer_resources()
    flight = _Flight(index, [], {}, {})
    for work in works:
        fetched = {
            f.config.key(): prefetch.submit(
                work.chunk, f.bands, f.config, plan.inputs_path, refresh=refresh
            )
            for f in work.fetches
        }
        flight.upstream.extend(fetched.values())
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
            flight.upstream.append(produced)
            flight.produced.setdefault(product.name, []).append((work, produced))
    flight.waiting = {model: len(futures) for model, futures in flight.produced.items()}
    return flight


def _submit_write(job: Job, flight: _Flight, model: str, t: int) -> PrefectFuture[BlockReport]:
    """The block's write task for `model`, once its produce tasks are final: it gets the
    results of those that completed (and waits for them, for the UI's lineage) and why the
    others failed (their chunks are reported, the others written)."""
    futures = flight.produced[model]
    produced: list[str | NotProduced] = []
    for _, future in futures:
        future.wait()  # final: its state is the engine's, not the API's possibly older one
        state = future.state
        if state.is_completed():
            produced.append(future.result())
        else:
            produced.append(NotProduced(state.message or f"it ended {state.name}"))
    block = Block(flight.index, tuple(w.chunk for w, _ in futures))
    return write_task.submit(
        job.plan.store,
        model,
        block,
        job.plan.results_path,
        produced,
        t,
        wait_for=[f for (_, f), p in zip(futures, produced, strict=True) if isinstance(p, str)],
        return_state=False,
    )


def _written(
    future: PrefectFuture[Any], flight: _Flight, model: str, report: PartReport, progress: Progress
) -> None:
    chunks = len(flight.produced[model])
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


def _finished(flight: _Flight, results_path: str) -> PartReport:
    """A finished block's fetches, device time and the root causes of its failures."""
    part = PartReport()
    for futures in flight.produced.values():
        for _, future in futures:
            if future.state.is_completed() and future.state.name != "Cached":
                timing = read_timing(results_path, future.result())
                if timing is not None:
                    name = f"{timing.device} on {timing.host}" if timing.host else timing.device
                    use = DeviceUse(timing.forward_s, timing.start, timing.end)
                    part.add(PartReport(devices={name: use}))
    for future in flight.upstream:
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
