"""`python -m flows.export`: parse, check everything up front, run the flow, print what it did.

Exit codes: 0 every point of every model ok; 1 some points failed or had no data, or a
task failed (rerun to resume); 2 bad input (nothing written).
"""

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

from pydantic import ValidationError

from flows import flags
from flows.naming import named_as
from flows.params import Output
from flows.stop import stop_on_signals


def main(argv: list[str] | None = None) -> int:
    with named_as("flags"):  # messages about settings name the flags given here
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    started = time.monotonic()  # the run's one clock: the bar, the summary, the artifact
    args = flags.parser().parse_args(
        flags.glue_negative_values(sys.argv[1:] if argv is None else argv)
    )
    args.started = started
    if argv is None:  # a real process: stop at once on SIGTERM or Ctrl-C
        stop_on_signals()
    if args.list_models:
        return _list_models()
    if args.verify:
        return _verify(args.out or Output().store)
    from flows.checks import UsageError, check_runner

    clash = flags.contradictions(args)
    if clash:
        return _usage_error(clash)
    try:
        params = flags.params(args)
        check_runner(args.runner, dask_address=args.dask_address, dask_workers=args.dask_workers)
    except ValidationError as e:
        return _usage_error(flags.validation_message(e))
    except UsageError as e:
        return _usage_error(str(e))
    if argv is None and not args.verbose:  # a real process, before Prefect is imported;
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")  # a user's own setting wins
        # Dask's scheduler and workers (processes of their own) say only what went wrong.
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
        # HTTP clients say each retry they make; the run reports what still fails.
        logging.getLogger("urllib3").setLevel(logging.ERROR)
        # Libraries' warnings (rasterio's NotGeoreferencedWarning, ...) stay off the bar.
        logging.captureWarnings(True)
        logging.getLogger("py.warnings").setLevel(logging.ERROR)
    if args.dry_run:
        return _dry_run(params)
    try:
        _check_prefect_home()
    except UsageError as e:
        return _usage_error(str(e))
    return _export(params, args)


def _export(params: dict[str, Any], args: argparse.Namespace) -> int:
    """Plan, check and run the export under the store's writer lock; its exit code. The flow
    runs the job resolved here: it neither plans, resolves nor locks a second time."""
    from flows.checks import UsageError
    from flows.job import Plan, job_for
    from tasks.store.layout import is_url
    from tasks.store.locks import StoreBusy

    def planned(plan: Plan) -> None:
        for note in plan.notes:
            print(f"swath: {note}")
        print(f"swath: {len(plan.points)} points in {len(plan.chunks)} chunks -> {plan.store}")

    # One lock from the store's check to the end of the flow: no second export slips in.
    shared = is_url(params["output"].store) and bool(os.environ.get("PREFECT_API_URL"))
    try:
        with job_for(**params, today=_today(), across_machines=shared, planned=planned) as job:
            _print_job(job)
            summary = _run(job, params, args)
    except (UsageError, StoreBusy) as e:
        return _usage_error(str(e))
    if summary is None:
        return 1
    _print_summary(summary)
    return 0 if summary["all_ok"] else 1


def _today() -> Any:
    """The day the run is for (a relative window's anchor): today, as `scheduled_day` says
    outside a scheduled flow run, without importing Prefect to ask."""
    from datetime import UTC, datetime

    return datetime.now(UTC).date()


def _check_prefect_home() -> None:
    """Without PREFECT_API_URL the run starts a temporary Prefect server, whose database is
    in PREFECT_HOME: a folder that cannot be written is named now (before Prefect is
    imported, which warns about it), not after the server's startup timeout."""
    from flows.checks import check_prefect_home

    if not os.environ.get("PREFECT_API_URL"):
        check_prefect_home(os.path.expanduser(os.environ.get("PREFECT_HOME") or "~/.prefect"))


def _dry_run(params: dict[str, Any]) -> int:
    """Plan (in a temporary folder), print what the export would do, write nothing. Neither
    torch nor Prefect is imported: a continental plan is sized in seconds."""
    from datetime import UTC, datetime

    from flows.dry_run import dry_run
    from flows.job import UsageError, plan_job

    try:
        plan = plan_job(**params, today=datetime.now(UTC).date(), scratch=True)
    except UsageError as e:
        return _usage_error(str(e))
    for note in plan.notes:
        print(f"swath: {note}")
    print(f"swath: {len(plan.points)} points in {len(plan.chunks)} chunks -> {plan.store}")
    print(dry_run(plan, chunks_per_run=params["output"].chunks_per_run))
    return 0


def _print_job(job: Any) -> None:
    for product in job.products:
        loud = "  <-- RANDOM WEIGHTS: embeddings carry no meaning" if product.warning() else ""
        print(f"swath: {product.name}: {product.describe()}{loud}")
    if job.resume:
        print("swath: the store exists with this export's layout: resuming (done chunks are kept)")
    for line in job.repaired:
        print(f"swath: repaired in the store: {line}")


def _run(job: Any, params: dict[str, Any], args: argparse.Namespace) -> dict[str, Any] | None:
    """The flow's summary, or None when it failed (its own log has the details)."""
    from flows.export import ExportGaps, export_flow_for
    from flows.server import ServerFailed, prefect_api

    try:
        pairs = len(job.plan.chunks) * len(job.products)
        with prefect_api() as url, _progress_bar(args.started, pairs) as listener:
            flow = export_flow_for(
                job, params["output"], on_progress=listener, started=args.started
            )
            if args.runner == "dask":
                flow = flow.with_options(task_runner=_dask_runner(args))
            try:
                summary: dict[str, Any] = _in_thread(lambda: flow(**params), api_url=url)
            except ExportGaps as e:  # ran to the end with gaps: the summary says where
                summary = e.summary
            listener.finish(summary["seconds"])
    except ExportGaps as e:
        return e.summary
    except ServerFailed as e:
        print(f"swath: {e}", file=sys.stderr)
        return None
    except Exception as e:  # the flow's own log has the details
        print(f"swath: export failed: {type(e).__name__}: {e}", file=sys.stderr)
        return None
    return summary


def _in_thread(run: Callable[[], Any], *, api_url: str | None) -> Any:
    """`run()` in a thread of its own while this, the main thread, waits: the main thread
    stays free for the signal handlers (a SIGTERM is honoured at once, whatever the flow is
    doing), and Prefect, which installs its own SIGTERM handler only from the main thread,
    leaves swath's in place. `api_url`: a temporary server's, for the flow's settings."""
    import contextvars
    import threading

    from prefect.settings import PREFECT_API_URL, temporary_settings

    outcome: dict[str, Any] = {}
    context = contextvars.copy_context()  # how messages name settings, in the flow too

    def call() -> Any:
        updates = {PREFECT_API_URL: api_url} if api_url else {}
        with temporary_settings(updates=updates):  # in the copied context: the flow sees both
            return run()

    def target() -> None:
        try:
            outcome["value"] = context.run(call)
        except BaseException as e:  # handed to the main thread, raised there
            outcome["error"] = e

    thread = threading.Thread(target=target, name="swath-export", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class _Bar:
    """What the export tells its progress bar: (done, total) as pairs are written, then the
    run's duration (the summary's), shown once the bar is complete."""

    def __init__(
        self, update: Callable[[int, int], None], redraw: Callable[[], None] = lambda: None
    ) -> None:
        self.update, self.redraw = update, redraw
        self.seconds: float | None = None

    def __call__(self, done: int, total: int) -> None:
        self.update(done, total)

    def finish(self, seconds: float) -> None:
        self.seconds = seconds
        self.redraw()


def clock_text(elapsed_s: float, left_s: float | None, took_s: float | None = None) -> str:
    """The bar's clock: `0:01:55 elapsed, about 0:00:10 left` while the export runs (the
    time left only while rich has a rate to tell it from, and while it is a second or more),
    `in 0:02:05` once it has ended in `took_s` seconds."""

    def clock(seconds: float) -> str:
        return str(timedelta(seconds=round(seconds)))

    if took_s is not None:
        return f"in {clock(took_s)}"
    shown = clock(left_s) if left_s is not None else "0:00:00"
    about = f", about {shown} left" if shown != "0:00:00" else ""
    return f"{clock(elapsed_s)} elapsed{about}"


@contextlib.contextmanager
def _progress_bar(started: float, total: int) -> Iterator[_Bar]:
    """A rich progress bar of the (chunk, model) pairs of the time entry written, those of an
    earlier run counted: done / total, and the run's one clock (from `started`, the
    command's start), which ends on the summary's duration."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn
    from rich.text import Text

    bar_state = _Bar(lambda done, total: None)

    class Clock(ProgressColumn):
        def render(self, task: Any) -> Text:
            left = task.time_remaining if not task.finished else None
            return Text(clock_text(time.monotonic() - started, left, bar_state.seconds))

    columns = (
        TextColumn("swath: written"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("(chunk, model) pairs"),
        Clock(),
    )
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("write", total=total)
        first = [True]

        def update(done: int, total: int) -> None:
            if first[0]:  # what an earlier run did: not a rate of this one
                first[0] = False
                bar.reset(task, total=total, completed=done)
            else:
                bar.update(task, completed=done, total=total)

        bar_state.update, bar_state.redraw = update, bar.refresh
        yield bar_state


def _dask_runner(args: argparse.Namespace) -> Any:
    from prefect_dask.task_runners import DaskTaskRunner

    from flows.pipeline import INFER_RESOURCE

    if args.dask_address:
        return DaskTaskRunner(address=args.dask_address)
    # Dask's nanny sets OMP_NUM_THREADS=1 in every worker; each worker runs one infer at a
    # time, so it gets its share of the cores for torch instead.
    workers = args.dask_workers or flags.DASK_WORKERS
    cores = max(1, (os.cpu_count() or 1) // workers)
    return DaskTaskRunner(
        cluster_kwargs={
            # its dashboard on a free port of this machine only, not on 8787 for all to see
            "dashboard_address": "127.0.0.1:0",
            "n_workers": workers,
            "threads_per_worker": 1,
            "resources": {INFER_RESOURCE: 1},
            "env": {"OMP_NUM_THREADS": str(cores), "MKL_NUM_THREADS": str(cores)},
        }
    )


def _usage_error(message: str) -> int:
    print(f"swath: error: {message}", file=sys.stderr)
    return 2


def _list_models() -> int:
    from embedders.cache import cached_checkpoint, hub_checkpoints_dir
    from tasks.products.registry import PRODUCTS

    for name, entry in PRODUCTS.items():
        c = entry.card
        tile = f"tile {c.tile_px}px" if c.tile_px else "no tiles"
        if c.tile_px == 1 and c.steps is not None:
            tile = "pixel series"
        bands = ",".join(c.bands) or "-"
        if len(c.bands) > 13:  # more than a sensor's bands: a precomputed product's dims
            bands = f"{c.bands[0]}..{c.bands[-1]} ({len(c.bands)} bands)"
        bands += "".join(f" + {sensor} {','.join(more)}" for sensor, more in c.more_sensors)
        if c.steps is not None:
            bands += f"; {c.steps.describe()}"
        cache = ""
        if c.checkpoint:
            found = cached_checkpoint(c.checkpoint)
            cache = f"\n{'':24} cached: yes, {found}" if found else f"\n{'':24} cached: no"
        print(
            f"{name:24} {c.kind:11} {c.dim:5d}-d  {c.resolution_m:g} m  {tile}  {c.sensor} "
            f"{bands}\n{'':24} {c.description}\n{'':24} weights: {c.weights}; licence: "
            f"{c.licence or 'see the weights'}{cache}"
        )
    print(f"pretrained checkpoints are looked for in {hub_checkpoints_dir()}")
    return 0


def _verify(store: str) -> int:
    """Check every array of a store: 0 sound, 1 damaged, 2 no store."""
    from tasks.store.soundness import RERUN
    from tasks.store.verify import NotAStore, RootLost, verify_store

    try:
        report = verify_store(store)
    except NotAStore as e:
        return _usage_error(str(e))
    except RootLost as e:
        print(
            f"swath: {store} holds swath's arrays but {e}: it records the store's layout and "
            "sums, so nothing more can be checked and a rerun cannot repair it; restore "
            "zarr.json from a backup, or export into another --out"
        )
        return 1
    print(f"swath: verifying {store}")
    for f in report.findings:
        print(f"  {f.array:32} {f.why}: {f.fix}")
    if not report.recorded:
        print(
            "  coordinates and time: no sums recorded (a store of an earlier swath); a rerun "
            "of the export checks them against its plan and records them"
        )
    for c in report.checks:
        named = ", ".join(f"{d.key} ({d.why})" for d in c.damaged[:3])
        more = f", and {len(c.damaged) - 3} more" if len(c.damaged) > 3 else ""
        print(
            f"  {c.window}  {c.product:24} {c.marked_done} of {c.chunks} chunks marked done, "
            f"{len(c.damaged)} damaged{': ' + named + more if named else ''}"
        )
    if report.sound:
        left = sum(c.chunks - c.marked_done for c in report.checks)
        if left:  # sound is not finished: an interrupted export's store is sound too
            print(
                f"swath: sound but incomplete: every chunk marked done holds its data, and "
                f"{left} chunk(s) of a model are not done yet; rerun the export to finish them"
            )
        else:
            print("swath: sound and complete: every array holds what swath wrote")
        return 0
    damaged = sum(len(c.damaged) for c in report.checks)
    arrays = len({f.array for f in report.findings})
    fixable = all(f.fix == RERUN for f in report.findings)
    print(
        f"swath: {damaged} chunk(s) and {arrays} other array(s) damaged; "
        + (
            "rerun the export that wrote this store (the same command): it redoes exactly "
            "the damaged chunks and repairs the arrays"
            if fixable
            else "see each line for what repairs it"
        )
    )
    return 1


def _print_summary(s: dict[str, Any]) -> None:
    print(f"\nswath: {s['points']} points, {s['chunks']} chunks, {s['seconds']} s")
    for name, m in s["models"].items():
        counts = ", ".join(f"{k} {v}" for k, v in m["status"].items() if v)
        loud = "   <-- RANDOM WEIGHTS" if m.get("warning") else ""
        print(f"  {name:24} {counts}{loud}")
        if m.get("worst_cosine_to_float32") is not None:
            print(
                f"  {'':24} stored as {m['dtype']}: worst cosine to float32 "
                f"{m['worst_cosine_to_float32']:.6f}"
            )
        if m.get("redone_damaged"):
            print(f"  {'':24} redone, damaged in the store: {', '.join(m['redone_damaged'])}")
    from flows.summary import (
        flagged_lines,
        imagery_line,
        nothing_ok_line,
        reason_lines,
        transit_line,
    )

    for why in reason_lines(s):
        print(f"swath: {why}")
    print(imagery_line(s["imagery"]))
    if line := nothing_ok_line(s):
        print(f"swath: {line}")
    print("".join(f"{line}\n" for line in flagged_lines(s.get("flagged_items", {}))), end="")
    for device, use in s.get("devices", {}).items():
        print(f"{device}: {use}")
    if line := transit_line(s.get("unprotected", [])):
        print(line)
    print(f"store: {s['store']}")
    looks = f"{s['store'].rstrip('/')}.quicklook"
    if os.path.isdir(looks):
        print(f"quick-look maps: {looks}/")
    print(
        f'open it: python -c "from tasks.store.layout import open_store; '
        f"print(open_store('{s['store']}'))\"  (or xr.open_zarr: ids and reasons as UTF-8 bytes)"
    )
