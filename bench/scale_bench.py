"""Where an export's time and memory go, at two region sizes (a benchmark, not a test).

    .venv/bin/python bench/scale_bench.py [--points 20000] [--small-points 2000] [--json F]

It builds a synthetic Sentinel-2 L2A static STAC catalog (bench/s2_catalog.py: B02, B03,
B04 and SCL COGs, two dates, clouds) over the larger region, then exports both regions
(points on a grid of --spacing metres; each bbox sized to its point count, at least
--points for the large one and at most --small-points for the small one, in the middle of
the large one) with `ssl4eo_resnet18_rgb` and random weights (the same compute as the
pretrained ones, no download). Each size gets a fresh work directory, a fresh local Dask
cluster (`distributed.LocalCluster`, worker processes declaring the `infer` resource) and
its own export process, `python -m flows.export ... --dask-address ADDR`, all against one
private Prefect server that the bench starts (Prefect's log level ERROR, as the command
line sets it). Prints JSON, then a table.

What each figure is, and how it is measured:

- points/s: points / the export process's wall time (end to end: imports, the command's
  checks, the flow, exit); also points / the flow run's wall time (Prefect's start and end).
- forward: the seconds the model's forwards took, summed over the infer tasks (the engine
  times them, embedders/engine.py ForwardClock, and each result group in the work
  directory's results.zarr records them as `forward_s`).
- plan_job: one call of flows.job.plan_job with the export's own arguments, timed alone in
  this process (the grid of points, the plan file and the chunks).
- stage seconds (prefetch, produce, write): the summed durations of those task runs, read
  from the Prefect API (start to end). Stages overlap, so these do not add up to the wall.
- where the wall goes: the flow's wall time times its infer slots (one per worker: each
  runs one infer task at a time) is split into parts that add up to it. An infer slot is
  either running an infer task (the forward, and the rest of the task: reading patches,
  tiling, stitching, saving results, Prefect's work inside the task run) or idle. Idle time
  is, by when it happens: before the flow's first task of any kind (planning and startup:
  plan_job, the writer lock, resolving the model, creating the store, the first
  submissions); waiting for prefetch (the next infer's prefetch had not ended); Prefect
  overhead (its prefetch had ended, the infer had not started: Prefect's and Dask's
  latency, state changes, a free worker thread); after the slot's last infer (the last
  writes and the end of the flow: summary, quick looks, STAC items). Prefect does not
  record which worker ran a task, so with several workers the infer runs are laid on the
  slots greedily by start time. End to end adds the time outside the flow run (imports,
  the command's own checks and model load, exit), times the slots.
- non-forward share: 1 - forward / (wall x infer slots), for the flow and end to end;
  the target is at most 10 %.
- peak RSS: VmHWM (/proc/self/status), the high-water mark of a process's own memory since
  its exec: the export process's as it exits (the export runs under a small wrapper that
  records it at exit) and each Dask worker's after the export. Not ru_maxrss: Linux carries
  that over fork and exec, so every process this one starts would report at least this
  process's own peak (about 1 GB once it has planned). Each size has fresh processes. The
  target is large / small <= 1.2.
- task runs and flow runs: every run of the export in the Prefect API: its flow run, the
  task runs in it, the flow runs those started, and so on down (`server_runs_in_window`:
  all runs that started on the private server meanwhile, as a check).

The workers import swath's modules before the export starts (`warm_up_s`), as a
long-lived cluster has; --cold-workers leaves that to the first tasks.
"""

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import s2_catalog
from bench.scale_runs import PARTS, ExportRuns, breakdown, export_runs, forward_seconds

MODEL = "ssl4eo_resnet18_rgb"
WINDOW = ("2024-06-01", "2024-07-31")
DATES = [datetime(2024, 6, 10, 10, 30, tzinfo=UTC), datetime(2024, 7, 5, 10, 30, tzinfo=UTC)]
WARM_MODULES = ("flows.export", "tasks.infer", "embedders.ssl4eo")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--points", type=int, default=20_000, help="the large region's, at least")
    p.add_argument("--small-points", type=int, default=2_000, help="the small one's, at most")
    p.add_argument("--spacing", type=float, default=100.0, help="grid spacing in metres")
    p.add_argument(
        "--center", type=_lonlat, default=(15.0, 46.0), help="lon,lat of both regions' centre"
    )
    p.add_argument("--patch-size", type=int, default=64, help="patch side in pixels")
    p.add_argument("--chunk-size", type=int, default=None, help="default: the export's own")
    p.add_argument("--batch-size", default="auto", help="tiles per forward, or auto")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--workers", type=int, default=1, help="Dask worker processes")
    p.add_argument("--worker-threads", type=int, default=4, help="threads per worker")
    p.add_argument("--torch-threads", type=int, default=None, help="default: cores / workers")
    p.add_argument("--cold-workers", action="store_true", help="do not import ahead")
    p.add_argument("--work-dir", type=Path, default=None, help="default: a temporary folder")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    return p.parse_args(argv)


def _lonlat(text: str) -> tuple[float, float]:
    try:
        lon, lat = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not lon,lat") from None
    return lon, lat


def private_prefect(home: Path) -> Any:
    """A Prefect server of the bench's own (a fresh database: only this bench's runs), its
    API in this process's environment, which the workers and export processes inherit."""
    for name, value in {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "DO_NOT_TRACK": "1",
    }.items():
        os.environ[name] = value
    os.environ.pop("PREFECT_API_URL", None)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")  # as the command line sets it
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start(timeout=120)
    os.environ["PREFECT_API_URL"] = server.api_url
    return server


def region_bbox(
    center: tuple[float, float], n_points: int, spacing: float, *, at_most: bool = False
) -> tuple[float, float, float, float]:
    """A square lon/lat box around `center` holding at least `n_points` grid points (or, with
    `at_most`, at most that many), as few more (or fewer) as the grid allows: its side is
    found by bisection, the points counted with swath's own planner."""
    from tasks.plan.points import plan_points
    from tasks.plan.regions import bbox_region

    lon, lat = center

    def box(half_m: float) -> tuple[float, float, float, float]:
        dlat = half_m / 111_320
        dlon = half_m / (111_320 * math.cos(math.radians(lat)))
        return (lon - dlon, lat - dlat, lon + dlon, lat + dlat)

    def fits(half_m: float) -> bool:
        count = len(plan_points(bbox_region(*box(half_m)), spacing))
        return count <= n_points if at_most else count >= n_points

    guess = math.sqrt(n_points) * spacing / 2
    lo, hi = 0.5 * guess, 2.0 * guess  # with at_most, lo fits; without, hi does
    for _ in range(40):
        mid = (lo + hi) / 2
        if fits(mid) == at_most:
            lo = mid
        else:
            hi = mid
    return box(lo if at_most else hi)


def build_scene(
    folder: Path, bbox: tuple[float, float, float, float], patch_px: int
) -> tuple[Path, dict[str, Any]]:
    """The catalog over `bbox` (and half a patch beyond it); its path and a description."""
    from odc.geo.geom import BoundingBox

    from tasks.plan.points import utm_epsg

    epsg = utm_epsg((bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2)
    utm = BoundingBox(*bbox, crs="EPSG:4326").polygon.to_crs(f"EPSG:{epsg}", resolution=100.0)
    b = utm.boundingbox
    scene = s2_catalog.scene_over(epsg, (b.left, b.bottom, b.right, b.top), patch_px * 10 + 200)
    started = time.perf_counter()
    path = s2_catalog.build_catalog(folder, scene, DATES)
    about = {
        "epsg": epsg,
        "pixels_10m": [scene.height, scene.width],
        "dates": [d.date().isoformat() for d in DATES],
        "bands": [*s2_catalog.BANDS, "SCL"],
        "build_s": time.perf_counter() - started,
    }
    return path, about


def export_argv(
    args: argparse.Namespace, bbox: tuple[float, ...], catalog: Path, where: Path
) -> list[str]:
    """The export's command-line arguments for one region."""
    argv = [
        "--bbox",
        ",".join(repr(v) for v in bbox),  # exact: the box is sized to the grid
        "--spacing",
        f"{args.spacing:g}",
        "--start",
        WINDOW[0],
        "--end",
        WINDOW[1],
        "--models",
        MODEL,
        "--weights",
        "random",
        "--catalog",
        str(catalog),
        "--patch-size",
        str(args.patch_size),
        "--batch-size",
        str(args.batch_size),
        "--device",
        args.device,
        "--out",
        str(where / "out.zarr"),
        "--work-dir",
        str(where / "work"),
    ]
    return argv + (["--chunk-size", str(args.chunk_size)] if args.chunk_size else [])


def time_plan(argv: list[str]) -> dict[str, Any]:
    """plan_job alone, on the export's own arguments (its plan in a scratch folder)."""
    from flows import flags
    from flows.job import plan_job

    params = flags.params(flags.parser().parse_args(argv))
    started = time.perf_counter()
    plan = plan_job(**params, today=date.today(), scratch=True)
    seconds = time.perf_counter() - started
    return {
        "points": len(plan.points),
        "chunks": len(plan.chunks),
        "chunk_size": plan.chunk_size,
        "plan_job_s": seconds,
    }


def _peak_rss_kib() -> int:
    """This process's VmHWM (see the module's docstring)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


# Runs `python -m flows.export ARGS` and writes its VmHWM to PEAK_FILE as it exits.
EXPORT_WRAPPER = """
import atexit, runpy, sys

peak_file, sys.argv = sys.argv[1], ["flows.export", *sys.argv[2:]]


@atexit.register
def _record() -> None:
    with open("/proc/self/status") as f:
        kib = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    with open(peak_file, "w") as out:
        out.write(kib)


runpy.run_module("flows.export", run_name="__main__", alter_sys=True)
"""


def _warm_up() -> float:
    import importlib

    started = time.perf_counter()
    for name in WARM_MODULES:
        importlib.import_module(name)
    return time.perf_counter() - started


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def run_export(argv: list[str], address: str, env: dict[str, str], where: Path) -> dict[str, Any]:
    """The export as its own process: exit code, wall time and peak RSS (its VmHWM)."""
    peak_file = where / "export.peak-kib"
    command = [sys.executable, "-c", EXPORT_WRAPPER, str(peak_file), *argv, "--runner", "dask"]
    command += ["--dask-address", address]
    log = where / "export.log"
    started = time.time()
    with log.open("w") as out:
        proc = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
    ended = time.time()
    if proc.returncode not in (0, 1):  # 1: some points not ok, which the figures show
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"the export exited {proc.returncode}:\n{tail}")
    return {
        "exit_code": proc.returncode,
        "started": started,
        "ended": ended,
        "process_s": ended - started,
        "flow_process_peak_rss_mib": int(peak_file.read_text()) / 1024,
    }


def run_size(
    args: argparse.Namespace, argv: list[str], where: Path, env: dict[str, str]
) -> dict[str, Any]:
    """One export on a fresh local cluster: every figure of one size."""
    from distributed import Client, LocalCluster

    cores = args.torch_threads or max(1, (os.cpu_count() or 1) // args.workers)
    where.mkdir(parents=True)
    out = time_plan(argv)
    with (
        LocalCluster(
            n_workers=args.workers,
            threads_per_worker=args.worker_threads,
            processes=True,
            resources={"infer": 1},
            env={"OMP_NUM_THREADS": str(cores), "MKL_NUM_THREADS": str(cores)},
            dashboard_address=None,
            local_directory=str(where / "dask"),
        ) as cluster,
        Client(cluster) as client,
    ):
        warm = {} if args.cold_workers else client.run(_warm_up)
        out["worker_warm_up_s"] = max(warm.values(), default=0.0)
        out["worker_torch_threads"] = sorted(set(client.run(_torch_threads).values()))
        out |= run_export(argv, cluster.scheduler_address, env, where)
        rss = client.run(_peak_rss_kib)
    out["worker_peak_rss_mib"] = [kib / 1024 for kib in rss.values()]
    out["max_worker_peak_rss_mib"] = max(out["worker_peak_rss_mib"])
    runs = export_runs(out["started"], out["ended"])
    forward, results = forward_seconds(str(where / "work" / "results.zarr"))
    out |= figures(runs, forward, results, out, slots=args.workers)
    from tasks.store.layout import status_counts

    out["status"] = status_counts(str(where / "out.zarr"), MODEL, 0)
    return out


def figures(
    runs: ExportRuns, forward: float, results: int, size: dict[str, Any], *, slots: int
) -> dict[str, Any]:
    """Throughput, stage seconds, where the wall goes, and run counts, from the runs."""
    flow_s = runs.flow_end - runs.flow_start
    parts = breakdown(runs, forward, slots=slots)
    outside = max(0.0, size["process_s"] - flow_s) * slots
    flow_capacity, e2e_capacity = flow_s * slots, size["process_s"] * slots
    return {
        "flow_s": flow_s,
        "points_per_s_end_to_end": size["points"] / size["process_s"],
        "points_per_s_flow": size["points"] / flow_s,
        "infer_slots": slots,
        "forward_s": forward,
        "results_with_forward_s": results,
        "stage_task_s": runs.stage_seconds(),
        "flow_slot_s": parts,
        "share_of_flow": {k: v / flow_capacity for k, v in parts.items()},
        "share_end_to_end": {
            k: v / e2e_capacity for k, v in {**parts, "outside_flow_run": outside}.items()
        },
        "non_forward_share_of_flow": 1 - forward / flow_capacity,
        "non_forward_share_end_to_end": 1 - forward / e2e_capacity,
        "task_runs": len(runs.task_runs),
        "task_runs_by_kind": runs.kinds(),
        "flow_runs": len(runs.flow_runs),
        "server_runs_in_window": runs.in_window,
    }


def machine() -> dict[str, Any]:
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    return {
        "cpu": names[0] if names else platform.processor(),
        "cores": os.cpu_count(),
        "load_average_at_start": os.getloadavg()[0],
        "python": platform.python_version(),
    }


def measure(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    large = region_bbox(args.center, args.points, args.spacing)
    small = region_bbox(args.center, args.small_points, args.spacing, at_most=True)
    catalog, scene = build_scene(root / "catalog", large, args.patch_size)
    server = private_prefect(root / "prefect-home")
    env = dict(os.environ)  # before any cluster changes this process's thread settings
    out: dict[str, Any] = {
        "run": {
            **machine(),
            "model": f"{MODEL}, random weights",
            "spacing_m": args.spacing,
            "patch_px": args.patch_size,
            "window": list(WINDOW),
            "device": args.device,
            "batch_size": args.batch_size,
            "workers": args.workers,
            "worker_threads": args.worker_threads,
            "warm_workers": not args.cold_workers,
            "scene": scene,
        },
        "sizes": {},
    }
    try:
        for name, bbox in (("small", small), ("large", large)):
            argv = export_argv(args, bbox, catalog, root / name)
            print(f"scale_bench: exporting the {name} region", file=sys.stderr, flush=True)
            out["sizes"][name] = {"bbox": list(bbox), **run_size(args, argv, root / name, env)}
    finally:
        server.stop()
    out["run"]["load_average_at_end"] = os.getloadavg()[0]
    out["ratios"] = ratios(out["sizes"])
    return out


def ratios(sizes: dict[str, dict[str, Any]]) -> dict[str, float]:
    s, big = sizes["small"], sizes["large"]
    return {
        "points": big["points"] / s["points"],
        "flow_process_peak_rss": big["flow_process_peak_rss_mib"] / s["flow_process_peak_rss_mib"],
        "max_worker_peak_rss": big["max_worker_peak_rss_mib"] / s["max_worker_peak_rss_mib"],
    }


ROWS: list[tuple[str, Any]] = [  # label, the size's cell
    ("points", lambda s: f"{s['points']:,}"),
    ("chunks x chunk size", lambda s: f"{s['chunks']} x {s['chunk_size']}"),
    ("export exit code / points ok", lambda s: f"{s['exit_code']} / {s['status']['ok']:,}"),
    ("export process s / flow run s", lambda s: f"{s['process_s']:.1f} / {s['flow_s']:.1f}"),
    ("points/s end to end", lambda s: f"{s['points_per_s_end_to_end']:.1f}"),
    ("points/s in the flow run", lambda s: f"{s['points_per_s_flow']:.1f}"),
    ("plan_job s (alone)", lambda s: f"{s['plan_job_s']:.2f}"),
    ("forward s", lambda s: f"{s['forward_s']:.1f}"),
    *(
        (f"{stage} task s (summed)", lambda s, k=stage: f"{s['stage_task_s'].get(k, 0.0):.1f}")
        for stage in ("prefetch", "produce", "write")
    ),
    *(
        (f"share of flow: {part}", lambda s, k=part: f"{s['share_of_flow'][k]:.1%}")
        for part in PARTS
    ),
    ("share end to end: outside_flow_run", lambda s: _share_outside(s)),
    ("non-forward share of flow (target <= 10 %)", lambda s: _pct(s["non_forward_share_of_flow"])),
    ("non-forward share end to end", lambda s: _pct(s["non_forward_share_end_to_end"])),
    ("peak RSS MiB: export process", lambda s: f"{s['flow_process_peak_rss_mib']:.0f}"),
    ("peak RSS MiB: largest worker", lambda s: f"{s['max_worker_peak_rss_mib']:.0f}"),
    ("task runs / flow runs", lambda s: f"{s['task_runs']} / {s['flow_runs']}"),
]


def _pct(value: float) -> str:
    return f"{value:.1%}"


def _share_outside(size: dict[str, Any]) -> str:
    return _pct(size["share_end_to_end"]["outside_flow_run"])


def table(out: dict[str, Any]) -> str:
    sizes = out["sizes"]
    rows = [("", *sizes)] + [(label, *(cell(s) for s in sizes.values())) for label, cell in ROWS]
    r = out["ratios"]
    rows += [
        ("large / small: points", f"{r['points']:.1f}", ""),
        ("large / small: export process RSS (<= 1.2)", f"{r['flow_process_peak_rss']:.3f}", ""),
        ("large / small: largest worker RSS (<= 1.2)", f"{r['max_worker_peak_rss']:.3f}", ""),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(line.rstrip() for line in lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.small_points >= args.points:
        print("--small-points must be fewer than --points", file=sys.stderr)
        return 2
    root = args.work_dir or Path(tempfile.mkdtemp(prefix="swath-scale-bench-"))
    try:
        out = measure(args, root.resolve())
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    print()
    print(table(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
