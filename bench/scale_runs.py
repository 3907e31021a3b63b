"""An export's runs as the Prefect API records them, and where its wall time went (for
bench/scale_bench.py, whose docstring defines each part)."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import zarr

PAGE = 200  # the Prefect server's default limit per read
PARTS = (
    "forward",
    "infer_outside_forward",
    "planning_and_startup",
    "waiting_for_prefetch",
    "prefect_overhead",
    "after_last_infer",
    "idle_slot",
    "unaccounted",
)


@dataclass(frozen=True)
class Span:
    """One infer task run: when it ran, and when its inputs were ready (its upstream task
    runs had ended; -inf when it had none)."""

    start: float
    end: float
    ready: float


@dataclass(frozen=True)
class ExportRuns:
    flow_runs: list[Any]  # prefect FlowRun: the export's, then those it started, and so on
    task_runs: list[Any]  # prefect TaskRun: every task run of those flow runs
    flow_start: float  # the export's flow run, in seconds since the epoch
    flow_end: float
    in_window: dict[str, int]  # runs that started on the server while the export ran

    def kinds(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for run in self.task_runs:
            counts[_kind(run)] = counts.get(_kind(run), 0) + 1
        return counts

    def stage_seconds(self) -> dict[str, float]:
        """Summed start-to-end seconds of the task runs of each kind."""
        seconds: dict[str, float] = {}
        for run in self.task_runs:
            if run.start_time and run.end_time:
                span = run.end_time.timestamp() - run.start_time.timestamp()
                seconds[_kind(run)] = seconds.get(_kind(run), 0.0) + span
        return seconds

    def infer_spans(self) -> list[Span]:
        ends = {r.id: r.end_time.timestamp() for r in self.task_runs if r.end_time}
        spans = []
        for run in self.task_runs:
            if _kind(run) != "produce" or not (run.start_time and run.end_time):
                continue
            upstream = [ends[i] for i in _upstream(run) if i in ends]
            ready = max(upstream, default=float("-inf"))
            spans.append(Span(run.start_time.timestamp(), run.end_time.timestamp(), ready))
        return spans


def _kind(task_run: Any) -> str:
    """A task run's kind: the first word of its name (prefetch, produce, write, ...)."""
    return str(task_run.name).split(" ", 1)[0]


def _upstream(task_run: Any) -> list[UUID]:
    return [
        i.id
        for inputs in task_run.task_inputs.values()
        for i in inputs
        if getattr(i, "input_type", "") == "task_run"
    ]


def _pages(read: Callable[..., Sequence[Any]], **filters: Any) -> list[Any]:
    """Every run a client's read method finds with `filters`, page by page."""
    out: list[Any] = []
    while True:
        page = read(**filters, limit=PAGE, offset=len(out))
        out += page
        if len(page) < PAGE:
            return out


def export_runs(started: float, ended: float) -> ExportRuns:
    """The runs of the one export that started on the server between `started` and `ended`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas import filters as f

    after, before = datetime.fromtimestamp(started, UTC), datetime.fromtimestamp(ended, UTC)
    window = f.FlowRunFilterStartTime(after_=after, before_=before)
    with get_client(sync_client=True) as client:
        roots = _pages(
            client.read_flow_runs,
            flow_run_filter=f.FlowRunFilter(
                start_time=window, parent_task_run_id=f.FlowRunFilterParentTaskRunId(is_null_=True)
            ),
        )
        if len(roots) != 1:
            raise RuntimeError(f"expected the export's one flow run, found {len(roots)}")
        flows, tasks, frontier = list(roots), [], [roots[0].id]
        while frontier:  # the task runs of these flow runs, then the flow runs they started
            found = _pages(
                client.read_task_runs,
                task_run_filter=f.TaskRunFilter(
                    flow_run_id=f.TaskRunFilterFlowRunId(any_=frontier)
                ),
            )
            tasks += found
            if not found:
                break
            by = f.FlowRunFilterParentTaskRunId(any_=[t.id for t in found])
            children = _pages(
                client.read_flow_runs, flow_run_filter=f.FlowRunFilter(parent_task_run_id=by)
            )
            flows += children
            frontier = [c.id for c in children]
        started_in_window = f.TaskRunFilterStartTime(after_=after, before_=before)
        in_window = {
            "flow_runs": len(
                _pages(client.read_flow_runs, flow_run_filter=f.FlowRunFilter(start_time=window))
            ),
            "task_runs": len(
                _pages(
                    client.read_task_runs,
                    task_run_filter=f.TaskRunFilter(start_time=started_in_window),
                )
            ),
        }
    root = roots[0]
    if not (root.start_time and root.end_time):
        raise RuntimeError(f"the export's flow run {root.name} has no start or end time")
    return ExportRuns(
        flows, tasks, root.start_time.timestamp(), root.end_time.timestamp(), in_window
    )


def breakdown(runs: ExportRuns, forward: float, *, slots: int) -> dict[str, float]:
    """The flow's wall time x `slots`, in slot-seconds, split into PARTS (they add up to it;
    `unaccounted` is what overlapping infers on one slot would leave, 0 when none do)."""
    spans = sorted(runs.infer_spans(), key=lambda s: s.start)
    starts = [r.start_time.timestamp() for r in runs.task_runs if r.start_time]
    first_task = min(starts, default=runs.flow_end)
    parts = dict.fromkeys(PARTS, 0.0)
    parts["forward"] = forward
    parts["infer_outside_forward"] = sum(s.end - s.start for s in spans) - forward
    free, used = [runs.flow_start] * slots, [False] * slots
    for span in spans:
        i = _slot(free, span.start)
        gap_start = free[i]
        if not used[i]:  # before the flow's first task: planning and startup
            head = max(0.0, min(first_task, span.start) - gap_start)
            parts["planning_and_startup"] += head
            gap_start += head
        if span.start > gap_start:
            waited = min(max(span.ready, gap_start), span.start) - gap_start
            parts["waiting_for_prefetch"] += waited
            parts["prefect_overhead"] += span.start - gap_start - waited
        free[i], used[i] = max(free[i], span.end), True
    for i in range(slots):
        if used[i]:
            parts["after_last_infer"] += runs.flow_end - free[i]
        else:
            parts["idle_slot"] += runs.flow_end - runs.flow_start
    parts["unaccounted"] = slots * (runs.flow_end - runs.flow_start) - sum(parts.values())
    return parts


def _slot(free: list[float], start: float) -> int:
    """The slot an infer starting at `start` ran on: of those free by then, the one freed
    last; if none was (an overlap), the one freed first."""
    ready = [i for i, t in enumerate(free) if t <= start + 1e-6]
    if ready:
        return max(ready, key=lambda i: free[i])
    return min(range(len(free)), key=lambda i: free[i])


def forward_seconds(results_path: str) -> tuple[float, int]:
    """The forward seconds the infer tasks recorded in the results store, summed, and how
    many result groups recorded them."""
    total, groups = 0.0, 0
    for _, product in zarr.open_group(results_path, mode="r").groups():
        for _, chunk in product.groups():
            timing = chunk.attrs.get("timing")
            value = timing.get("forward_s") if isinstance(timing, dict) else None
            if isinstance(value, int | float):
                total, groups = total + float(value), groups + 1
    return total, groups
