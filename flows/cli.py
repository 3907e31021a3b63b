"""`python -m flows.export`: parse, check everything up front, run the flow, print what it did.

Exit codes: 0 every point of every model ok; 1 some points failed or had no data, or a
task failed (rerun to resume); 2 bad input (nothing written).
"""

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
from datetime import date
from typing import Any

from pydantic import ValidationError

from flows.params import Imagery, Inference, Output, Region, Window
from tasks.sources import SOURCES

FLAGS = {  # pydantic field -> command-line flag, for error messages
    "bbox": "--bbox",
    "geojson": "--region",
    "spacing_m": "--spacing",
    "start": "--start",
    "end": "--end",
    "models": "--models",
    "source": "--source",
    "catalog": "--catalog",
    "stac_url": "--stac-url",
    "collection": "--collection",
    "max_cloud_cover": "--max-cloud-cover",
    "stac_signing": "--stac-signing",
    "ee_project": "--ee-project",
    "ee_key_file": "--ee-key-file",
    "ee_url": "--ee-url",
    "ee_concurrency": "--ee-concurrency",
    "patch_px": "--patch-size",
    "tessera_store": "--tessera-store",
    "input_prep": "--input-prep",
    "output": "--output",
    "tile_overlap_px": "--tile-overlap",
    "batch_size": "--batch-size",
    "device": "--device",
    "precision": "--precision",
    "weights": "--weights",
    "store": "--out",
    "work_dir": "--work-dir",
    "chunk_size": "--chunk-size",
    "dtype": "--dtype",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m flows.export",
        description="Export foundation-model embeddings of every point of a region into one "
        "Zarr store. With no arguments: the offline demo over a real Sentinel-2 sample.",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--bbox", type=_bbox, help="west,south,east,north in degrees")
    where.add_argument("--region", metavar="FILE", help="GeoJSON polygon file (holes respected)")
    p.add_argument("--spacing", type=float, metavar="M", help="grid spacing in metres (250)")
    p.add_argument("--start", type=iso_date, help="first day, YYYY-MM-DD (2024-01-01)")
    p.add_argument("--end", type=iso_date, help="last day, YYYY-MM-DD (2024-12-31)")
    p.add_argument("--models", type=lambda s: [m.strip() for m in s.split(",") if m.strip()])
    p.add_argument("--out", metavar="PATH", help="output Zarr store (swath-demo.zarr)")
    p.add_argument(
        "--work-dir", metavar="DIR", help="inputs, results, demo catalog (~/.cache/swath)"
    )
    src = p.add_argument_group("imagery source")
    src.add_argument("--source", choices=list(SOURCES), help="where imagery comes from")
    src.add_argument("--catalog", help="stac-catalog: catalog.json path or URL ('demo')")
    src.add_argument(
        "--stac-url", metavar="URL", help="stac-api: root URL, planetary-computer or earth-search"
    )
    src.add_argument("--collection", help="collection id (the sensor's own for the source)")
    src.add_argument(
        "--max-cloud-cover", type=float, metavar="PCT", help="skip cloudier scenes (80)"
    )
    src.add_argument("--stac-signing", choices=["auto", "planetary-computer", "none"])
    src.add_argument("--ee-project", metavar="ID", help="earthengine: Google Cloud project")
    src.add_argument(
        "--ee-key-file", metavar="KEY.json", help="earthengine: service account key (else ADC)"
    )
    src.add_argument("--ee-url", metavar="URL", help="earthengine: API endpoint (high-volume)")
    src.add_argument(
        "--ee-concurrency", type=int, metavar="N", help="earthengine: requests in flight (8)"
    )
    p.add_argument("--patch-size", type=int, metavar="PX", help="patch side in pixels (64)")
    p.add_argument(
        "--tessera-store",
        metavar="V|URL",
        help="tessera: a dataset version of geotessera's public store (v1.1) or a store URL/path",
    )
    p.add_argument("--chunk-size", type=int, metavar="N", help="points per chunk")
    p.add_argument(
        "--dtype", choices=["float32", "float16", "int8"], help="stored embeddings (float32)"
    )
    p.add_argument("--input-prep", choices=["resize", "tile"])
    p.add_argument("--output", choices=["pooled", "grid"])
    p.add_argument(
        "--batch-size", type=_batch_size, metavar="N|auto", help="tiles per forward (auto)"
    )
    p.add_argument("--tile-overlap", type=int, metavar="PX")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--weights", choices=["auto", "pretrained", "random"])
    p.add_argument("--previous-month", action="store_true", help="export last calendar month")
    p.add_argument("--refresh", action="store_true", help="redo every chunk of this window")
    p.add_argument("--wait", action="store_true", help="wait for another export of the store")
    p.add_argument("--runner", choices=["threads", "dask"], default="threads")
    p.add_argument("--dask-address", metavar="ADDR", help="existing Dask scheduler (tcp://...)")
    p.add_argument("--dask-workers", type=int, default=2, metavar="N", help="local cluster size")
    p.add_argument("--list-models", action="store_true", help="list the models and exit")
    p.add_argument("--verbose", action="store_true", help="show Prefect's logs of every task")
    p.add_argument(
        "--dry-run", action="store_true", help="say what the export would do; write nothing"
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="check that every chunk marked done in --out holds the data written with it, "
        "and exit (0 sound, 1 damaged: rerun the export, 2 not a swath store)",
    )
    return p


def _bbox(text: str) -> tuple[float, float, float, float]:
    try:
        w, s, e, n = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not four numbers west,south,east,north"
        ) from None
    return w, s, e, n


def _batch_size(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number or 'auto'") from None


def iso_date(text: str) -> date:
    """An argparse type: a YYYY-MM-DD date, or a clear error."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a date YYYY-MM-DD") from None


def _params(a: argparse.Namespace) -> dict[str, Any]:
    """The flow's parameters from the flags given; unset flags keep the defaults."""

    def given(**kw: Any) -> dict[str, Any]:
        return {k: v for k, v in kw.items() if v is not None}

    region = given(bbox=a.bbox, geojson=a.region, spacing_m=a.spacing)
    return {
        "region": Region(**region),
        "window": Window(
            **given(start=a.start, end=a.end, previous_month=a.previous_month or None)
        ),
        "imagery": Imagery(
            **given(
                source=a.source,
                catalog=a.catalog,
                stac_url=a.stac_url,
                collection=a.collection,
                max_cloud_cover=a.max_cloud_cover,
                stac_signing=a.stac_signing,
                ee_project=a.ee_project,
                ee_key_file=a.ee_key_file,
                ee_url=a.ee_url,
                ee_concurrency=a.ee_concurrency,
                patch_px=a.patch_size,
                tessera_store=a.tessera_store,
            )
        ),
        "inference": Inference(
            **given(
                models=a.models,
                input_prep=a.input_prep,
                output=a.output,
                batch_size=a.batch_size,
                tile_overlap_px=a.tile_overlap,
                device=a.device,
                precision=a.precision,
                weights=a.weights,
            )
        ),
        "output": Output(
            **given(
                store=a.out,
                work_dir=a.work_dir,
                chunk_size=a.chunk_size,
                dtype=a.dtype,
                refresh=a.refresh or None,
                wait=a.wait or None,
            )
        ),
    }


def _validation_message(e: ValidationError) -> str:
    err = e.errors()[0]
    field = str(err["loc"][0]) if err["loc"] else ""
    flag = FLAGS.get(field, field)
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "literal_error" and field == "models":
        from tasks.products import PRODUCTS

        return f"unknown model '{err['input']}'; known models: {', '.join(PRODUCTS)}"
    if not flag:
        return msg
    return f"invalid {flag} {err.get('input')!s}: {msg}"


def _glue_negative_values(argv: list[str]) -> list[str]:
    """`--bbox -67.66,-47.86,...`: argparse takes a value that starts with '-' and is not a
    plain number for an option, so such values are glued to their flag (`--bbox=-67.66,...`)."""
    out: list[str] = []
    for token in argv:
        if out and out[-1] == "--bbox" and token.startswith("-"):
            out[-1] = f"--bbox={token}"
        else:
            out.append(token)
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(_glue_negative_values(sys.argv[1:] if argv is None else argv))
    if argv is None:  # a real process: stop at once on SIGTERM or Ctrl-C
        _stop_on_signals()
    if args.list_models:
        return _list_models()
    if args.verify:
        return _verify(args.out or Output().store)
    try:
        params = _params(args)
    except ValidationError as e:
        return _usage_error(_validation_message(e))
    if argv is None and not args.verbose:  # a real process, before Prefect is imported;
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")  # a user's own setting wins
    from flows.export import export, scheduled_day
    from flows.job import UsageError, plan_job, resolve_job
    from tasks.locks import StoreBusy, writer_lock
    from tasks.store import is_url

    try:
        plan = plan_job(**params, today=scheduled_day())
        print(f"swath: {len(plan.points)} points in {len(plan.chunks)} chunks -> {plan.store}")
        if args.dry_run:
            from flows.dry_run import dry_run

            print(dry_run(plan))
            return 0
        # One lock from the checks to the end of the flow: no second export slips in between.
        shared = is_url(plan.store) and bool(os.environ.get("PREFECT_API_URL"))
        with writer_lock(
            plan.store, wait=args.wait, lock_dir=plan.locks_dir, across_machines=shared
        ):
            job = resolve_job(plan)
            _print_job(job)
            summary = _run(export, params, args)
    except (UsageError, StoreBusy) as e:
        return _usage_error(str(e))
    if summary is None:
        return 1
    _print_summary(summary)
    return 0 if summary["all_ok"] else 1


def _stop_on_signals() -> None:
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
        _end_children()
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def _end_children() -> None:
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(children, timeout=5)


def _print_job(job: Any) -> None:
    for product in job.products:
        loud = "  <-- RANDOM WEIGHTS: embeddings carry no meaning" if product.warning() else ""
        print(f"swath: {product.name}: {product.describe()}{loud}")
    if job.resume:
        print("swath: the store exists with this export's layout: resuming (done chunks are kept)")


def _run(export: Any, params: dict[str, Any], args: argparse.Namespace) -> dict[str, Any] | None:
    """The flow's summary, or None when it failed (its own log has the details)."""
    flow = export
    if args.runner == "dask":
        flow = export.with_options(task_runner=_dask_runner(args))
    from flows.export import PROGRESS_LISTENERS, ExportGaps

    try:
        if args.runner == "dask" and not args.dask_address:
            _share_the_prefect_api()
        with _progress_bar() as listener:
            PROGRESS_LISTENERS.append(listener)
            try:
                summary: dict[str, Any] = flow(**params)
            finally:
                PROGRESS_LISTENERS.remove(listener)
    except ExportGaps as e:  # ran to the end with gaps: the summary says where
        return e.summary
    except Exception as e:  # the flow's own log has the details
        print(f"swath: export failed: {type(e).__name__}: {e}", file=sys.stderr)
        return None
    return summary


@contextlib.contextmanager
def _progress_bar() -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar of (chunk, product) writes: done / total, rate, time left."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("swath: writing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("chunk-products"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("write", total=None)

        def listener(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield listener


def _share_the_prefect_api() -> None:
    """Give the local cluster's workers this run's Prefect API. Without PREFECT_API_URL each
    worker process would start a temporary server of its own (two race for one port), so
    the temporary server is started here and its URL set before the workers start."""
    if os.environ.get("PREFECT_API_URL"):
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the one this process's flow run uses too
    server.start()
    os.environ["PREFECT_API_URL"] = server.api_url


def _dask_runner(args: argparse.Namespace) -> Any:
    from prefect_dask.task_runners import DaskTaskRunner

    from flows.export import INFER_RESOURCE

    if args.dask_address:
        return DaskTaskRunner(address=args.dask_address)
    # Dask's nanny sets OMP_NUM_THREADS=1 in every worker; each worker runs one infer at a
    # time, so it gets its share of the cores for torch instead.
    cores = max(1, (os.cpu_count() or 1) // max(1, args.dask_workers))
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": args.dask_workers,
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
    from tasks.products import PRODUCTS

    for name, entry in PRODUCTS.items():
        c = entry.card
        tile = f"tile {c.tile_px}px" if c.tile_px else "no tiles"
        bands = ",".join(c.bands) or "-"
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
    """Check a store's done chunks against their checksums: 0 sound, 1 damaged, 2 no store."""
    from tasks.verify import NotAStore, verify_store

    try:
        checks = verify_store(store)
    except NotAStore as e:
        return _usage_error(str(e))
    print(f"swath: verifying {store}")
    for c in checks:
        named = ", ".join(f"{d.key} ({d.why})" for d in c.damaged[:3])
        more = f", and {len(c.damaged) - 3} more" if len(c.damaged) > 3 else ""
        print(
            f"  {c.window}  {c.product:24} {c.marked_done} of {c.chunks} chunks marked done, "
            f"{len(c.damaged)} damaged{': ' + named + more if named else ''}"
        )
    damaged = sum(len(c.damaged) for c in checks)
    if damaged:
        print(
            f"swath: {damaged} chunk(s) damaged; rerun the export that wrote this store (the "
            "same command): it redoes exactly the damaged chunks"
        )
        return 1
    print("swath: sound: every chunk marked done holds the data written with it")
    return 0


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
    from flows.export import imagery_line

    print(imagery_line(s["imagery"]))
    print(f"store: {s['store']}")
    looks = f"{s['store'].rstrip('/')}.quicklook"
    if os.path.isdir(looks):
        print(f"quick-look maps: {looks}/")
    print(
        f'open it: python -c "from tasks.store import open_store; '
        f"print(open_store('{s['store']}'))\"  (or xr.open_zarr: ids and reasons as UTF-8 bytes)"
    )
