"""The infer task as an export runs it, over an inputs store (a benchmark, not a test).

    python bench/infer_task_bench.py [--device cpu|cuda] [--arch vit_base_patch16_224]
                                     [--points N] [--chunk N] [--workers 4] [--precision bf16]

Builds an inputs store the way prefetch writes it (int16 patches, Blosc LZ4, CRC-32C per
Zarr chunk) of synthetic 12-band patches, then runs the produce step of every chunk,
`tasks.infer.infer_chunk` (read the chunk's patches, stage them in pinned memory, take the
device, embed) and `tasks.results.save_result`, from a pool of worker threads, as the
export's thread runner does: while the device runs one chunk, the next chunks are read and
staged. Reports tiles/s through the task against the bare forward (bench/infer_bench.py's
model and measure), the share of the infer stage's wall time (first chunk on the device to
the last one off it) in which the device was in forwards (CUDA timing events), the
seconds to read and stage one chunk, and peak host and device memory.

Imports neither Prefect, torchgeo nor a geo library (zarr, yes): it runs on a bare GPU
machine with torch, timm, numpy and zarr's wheels (README, "GPU").
"""

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from infer_bench import (
    ARCHS,
    BANDS,
    _best_time,
    bare_forward,
    build_model,
    device_name,
    peak_host_mib,
    staged_tiles,
    synthetic_patches,
)

from embedders import autobatch, execution, precision
from embedders.spec import Embedder, InferenceOptions, Precision
from tasks.infer import InferWork, infer_chunk
from tasks.inputs import read_stack, store_patches
from tasks.results import save_result
from tasks.sources.registry import Patches, SensorConfig

CONFIG = SensorConfig(
    sensor="sentinel-2-l2a",
    catalog="bench",
    collection="sentinel-2-l2a",
    resolution_m=10.0,
    patch_px=448,
    start="2024-06-01",
    end="2024-08-31",
)


@dataclass(frozen=True)
class BenchPoint:
    id: str


@dataclass(frozen=True)
class BenchChunk:
    """What the infer path asks of a chunk: its key and its points' ids."""

    key: str
    points: tuple[BenchPoint, ...]


def build_inputs(
    inputs: str, n: int, chunk: int, patch: int, config: SensorConfig
) -> list[BenchChunk]:
    """An inputs store of n points in chunks, from 64 distinct synthetic patches reused."""
    pool = synthetic_patches(min(64, n), patch)
    chunks = []
    for c, start in enumerate(range(0, n, chunk)):
        size = min(chunk, n - start)
        points = tuple(BenchPoint(f"p{start + i}") for i in range(size))
        bench_chunk = BenchChunk(f"chunk-{c:05d}-bench", points)
        rows = np.arange(start, start + size) % len(pool)
        bands = {b: np.ascontiguousarray(pool[rows, k]) for k, b in enumerate(BANDS)}
        ids = tuple(p.id for p in points)
        store_patches(inputs, config, bench_chunk, Patches(ids, bands))  # type: ignore[arg-type]
        chunks.append(bench_chunk)
    return chunks


def run_tasks(
    chunks: list[BenchChunk], work: InferWork, inputs: str, results: str, workers: int
) -> tuple[float, list[Any]]:
    """Every chunk through infer_chunk and save_result from `workers` threads; the wall time
    and each chunk's device timing."""

    def produce(chunk: BenchChunk) -> Any:
        result = infer_chunk(work, chunk, inputs)  # type: ignore[arg-type]
        save_result(results, f"bench/{chunk.key}", result)
        return result.timing

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        timings = list(pool.map(produce, chunks))
    return time.perf_counter() - began, timings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if any")
    p.add_argument("--arch", choices=sorted(ARCHS), default="vit_base_patch16_224")
    p.add_argument("--points", type=int, default=None, help="default: 32 on cpu, 2048 on cuda")
    p.add_argument("--chunk", type=int, default=None, help="points per chunk; default 16 / 256")
    p.add_argument("--patch", type=int, default=448, help="patch side in pixels")
    p.add_argument("--workers", type=int, default=4, help="threads, as the export's runner")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    p.add_argument("--compile", action="store_true", help="compile the forward")
    p.add_argument("--work-dir", type=Path, default=None, help="default: a temporary folder")
    p.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    return p.parse_args(argv)


def measure(args: argparse.Namespace, where: Path) -> dict[str, Any]:
    cuda = args.device == "cuda" or (args.device is None and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    n, chunk = args.points or (2048 if cuda else 32), args.chunk or (256 if cuda else 16)
    prec: Precision = args.precision
    options = InferenceOptions(input_prep="tile", precision=prec, compile=args.compile)
    config = replace(CONFIG, patch_px=args.patch)
    inputs, results = str(where / "inputs.zarr"), str(where / "results.zarr")
    began = time.perf_counter()
    chunks = build_inputs(inputs, n, chunk, args.patch, config)
    build_s = time.perf_counter() - began
    embedder = build_model(args.arch, device)
    if prec != "fp32":
        precision.check_precision(embedder, prec, device)

    def model(_: str) -> Embedder:
        return embedder

    work = InferWork(model, BANDS, config, options, device.type)
    infer_chunk(work, chunks[0], inputs)  # warm-up: batch-size probe, compile
    wall_s, timings = run_tasks(chunks, work, inputs, results, args.workers)
    forward_s = sum(t.forward_s for t in timings)
    span = max(t.end for t in timings) - min(t.start for t in timings)
    stage_s = _best_time(
        lambda: read_stack(inputs, config, chunks[0], BANDS, pin=cuda), torch.device("cpu"), 3
    )
    batch = autobatch.resolve_batch_size(embedder, options, device)
    runner, _ = execution.prepare(embedder, options, device, batch)
    pool = synthetic_patches(min(64, chunk), args.patch)
    tiles = staged_tiles(pool, embedder.spec, options).to(device)
    bare = bare_forward(runner, tiles, batch, prec)
    bare()
    bare_tiles_per_s = len(tiles) / _best_time(bare, device, 3)
    n_tiles = n * len(tiles) // len(pool)
    out: dict[str, Any] = {
        "run": {
            "device": f"{device.type}: {device_name(device)}",
            "model": f"timm {args.arch}, 12 bands, random weights, {prec}",
            "points": n,
            "chunk_points": chunk,
            "patch_px": args.patch,
            "tiles": n_tiles,
            "workers": args.workers,
            "batch_size": batch,
            "compile": args.compile,
            "inputs_build_s": build_s,
            "imports": sorted(
                m
                for m in ("prefect", "torchgeo", "shapely", "pyproj", "rasterio")
                if m in sys.modules
            ),
        },
        "wall_s": wall_s,
        "infer_span_s": span,
        "forward_s": forward_s,
        "read_and_stage_chunk_s": stage_s,
        "bare_tiles_per_s": bare_tiles_per_s,
        "task_tiles_per_s": n_tiles / wall_s,
        "task_over_bare": n_tiles / wall_s / bare_tiles_per_s,
        "device_busy_share": forward_s / span,
        "peak_host_mib": peak_host_mib(),
    }
    if cuda:
        out["peak_device_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="swath-infer-task-") as tmp:
        out = measure(args, args.work_dir or Path(tmp))
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    r = out["run"]
    print(
        f"\n{r['model']} on {r['device']}: {r['tiles']} tiles in chunks of {r['chunk_points']} "
        f"points ({r['patch_px']} px), {r['workers']} workers, batch {r['batch_size']}\n"
        f"task {out['task_tiles_per_s']:.1f} tiles/s, bare forward "
        f"{out['bare_tiles_per_s']:.1f}: task / bare {out['task_over_bare']:.3f}; device busy "
        f"{out['device_busy_share']:.3f} of the infer stage; read and stage a chunk "
        f"{out['read_and_stage_chunk_s']:.3f} s; peak host {out['peak_host_mib']:.0f} MiB"
        + (f", device {out['peak_device_mib']:.0f} MiB" if "peak_device_mib" in out else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
