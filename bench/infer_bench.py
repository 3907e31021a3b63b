"""Throughput of swath's infer stage against the device's limits (a benchmark, not a test).

    .venv/bin/python bench/infer_bench.py [--device cpu|cuda] [--points N] [--patch 448] ...

On synthetic but realistic input (12-band Sentinel-2-like patches in digital numbers, cut
into 224 px tiles) and a ViT-B/16 from timm with random weights, it measures in one run:
the device's matmul peak (float32, bfloat16), the model's bare forward on pre-staged
tiles, swath's `embed_images` in float32 and bf16, and a per-point loop (one call, one
batch per point, as rs-embed does on CPU). Prints JSON, then a short table.

bf16 is measured on the guarded path (embedders.precision): the guard runs first, may
keep layers in float32 (its report is printed), and every bf16 figure is of the model as
the guard left it; a second copy of the model, never guarded, has its bare bf16 forward
timed alongside, for the cost of the guard's fix. Exits with status 2 when the guard
refuses bf16, and 3 when the bf16 embeddings of the benchmark's points fall below the
guard's cosine threshold.
"""

import argparse
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import psutil
import timm
import torch
from timm.models import VisionTransformer
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from embedders import autobatch, batching, engine, precision
from embedders.dofa import S2_MEAN_STD
from embedders.spec import InferenceOptions, ModelSpec, Precision, WeightsInfo

# The 12 Sentinel-2 L2A bands (B10, a cirrus band, exists in L1C only).
BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
SPEC = ModelSpec(
    name="bench_vit_base_patch16_224_12band",
    family="bench",
    description="timm vit_base_patch16_224, 12 input bands, random weights (benchmark only)",
    sensor="sentinel-2-l2a",
    bands=BANDS,
    resolution_m=10,
    tile_px=224,
    embed_dim=768,
    grid_stride_px=16,
    norm_mean=tuple(S2_MEAN_STD[b][0] for b in BANDS),
    norm_std=tuple(S2_MEAN_STD[b][1] for b in BANDS),
    pretrained_weights="none",
)


@dataclass
class VitEmbedder:
    """timm's ViT as an Embedder: pooled = its head's pre-logits (the class token after
    the final norm), grid = the patch tokens as (B, 768, 14, 14)."""

    spec: ModelSpec
    weights: WeightsInfo
    module: VisionTransformer

    def forward(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.module.forward_features(tiles)
        pooled = self.module.forward_head(tokens, pre_logits=True)
        side = tiles.shape[-1] // self.spec.grid_stride_px
        grid = tokens[:, 1:].transpose(1, 2).reshape(len(tiles), -1, side, side)
        return pooled, grid


def build_model(device: torch.device) -> VitEmbedder:
    torch.manual_seed(0)
    module = timm.create_model(
        "vit_base_patch16_224", pretrained=False, in_chans=len(BANDS), num_classes=0
    )
    if not isinstance(module, VisionTransformer):
        raise TypeError(f"timm returned {type(module).__name__}, not a VisionTransformer")
    return VitEmbedder(SPEC, WeightsInfo("random", "seed=0"), module.eval().to(device))


def synthetic_points(n: int, patch: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth fields plus noise around each band's mean, float32 digital numbers."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:patch, 0:patch].astype(np.float32)
    points = []
    for _ in range(n):
        image = np.empty((len(BANDS), patch, patch), dtype=np.float32)
        for b, name in enumerate(BANDS):
            mean, std = S2_MEAN_STD[name]
            fy, fx = rng.uniform(0.01, 0.08, 2)
            wave = np.sin(fy * yy + rng.uniform(0, 6.28)) * np.cos(fx * xx)
            image[b] = mean + std * (0.6 * wave + rng.normal(0, 0.2, (patch, patch)))
        points.append(image)
    return points


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_time(run: Callable[[], object], device: torch.device, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        run()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int) -> float:
    """GFLOP/s of an n x n matmul, after a warm-up."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    seconds = _best_time(lambda: torch.mm(a, b), device, repeats)
    return 2 * n**3 / seconds / 1e9


def gflop_per_tile(embedder: VitEmbedder, device: torch.device) -> float:
    tile = torch.randn(1, len(BANDS), SPEC.tile_px, SPEC.tile_px, device=device)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        embedder.forward(tile)
    return counter.get_total_flops() / 1e9


def staged_tiles(points: list[np.ndarray], options: InferenceOptions) -> torch.Tensor:
    """The normalised tiles swath cuts from the points, in one tensor on the CPU."""
    return torch.from_numpy(np.concatenate([engine.cut_tiles(p, SPEC, options) for p in points]))


def bare_forward(
    embedder: VitEmbedder, tiles: torch.Tensor, batch: int, precision: Precision
) -> Callable[[], object]:
    """The model alone: forwards over tiles already on the device, pooled back to host."""
    device = tiles.device

    def run() -> object:
        with torch.inference_mode(), batching.precision_context(precision, device):
            out = [
                embedder.forward(tiles[i : i + batch])[0].float().cpu()
                for i in range(0, len(tiles), batch)
            ]
        return out

    return run


def swath(
    embedder: VitEmbedder,
    points: list[np.ndarray],
    options: InferenceOptions,
    device: torch.device,
    chunk: int,
) -> tuple[Callable[[], object], list[np.ndarray]]:
    """embed_images over the points, `chunk` points per call as the export's chunks are."""
    pooled: list[np.ndarray] = []

    def run() -> object:
        pooled.clear()
        for i in range(0, len(points), chunk):
            result = engine.embed_images(embedder, points[i : i + chunk], options, device)
            pooled.append(result.pooled)
        return pooled

    return run, pooled


def per_point(
    embedder: VitEmbedder, points: list[np.ndarray], options: InferenceOptions, device: torch.device
) -> Callable[[], object]:
    """One call per point, its tiles as one batch (rs-embed's CPU path)."""
    tiles_per_point = len(engine.cut_tiles(points[0], SPEC, options))
    one = replace(options, batch_size=tiles_per_point)
    return lambda: [engine.embed_images(embedder, [p], one, device) for p in points]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    return names[0] if names else platform.processor()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if any")
    p.add_argument("--points", type=int, default=None, help="default: 16 on cpu, 512 on cuda")
    p.add_argument("--patch", type=int, default=448, help="patch side in pixels (448: 4 tiles)")
    p.add_argument("--chunk", type=int, default=32, help="points per embed_images call")
    p.add_argument("--batch-size", default="auto", help="an integer or 'auto' (the default)")
    p.add_argument("--repeats", type=int, default=3, help="timings are the best of these")
    p.add_argument("--matmul", type=int, default=None, help="matmul side; default 2048/8192")
    p.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    return p.parse_args(argv)


def _setup(args: argparse.Namespace) -> tuple[torch.device, int, InferenceOptions]:
    cuda = args.device == "cuda" or (args.device is None and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    points = args.points or (512 if cuda else 16)
    size: int | Literal["auto"] = "auto" if args.batch_size == "auto" else int(args.batch_size)
    return device, points, InferenceOptions(input_prep="tile", output="pooled", batch_size=size)


@dataclass
class Timing:
    """One precision: the batch size used and the best wall time of each way to run."""

    batch_size: int
    probe_s: float  # resolving the batch size (the "auto" probe), once per process
    bare_s: float
    swath_s: float
    unguarded_bare_s: float | None = None  # bf16: the same model as the guard found it


def time_precision(
    embedder: VitEmbedder,
    points: list[np.ndarray],
    staged: torch.Tensor,
    options: InferenceOptions,
    args: argparse.Namespace,
    *,
    unguarded: VitEmbedder | None = None,
) -> tuple[Timing, np.ndarray]:
    device = staged.device
    start = time.perf_counter()
    batch = autobatch.resolve_batch_size(embedder, options, device)
    probe_s = time.perf_counter() - start
    bare = bare_forward(embedder, staged, batch, options.precision)
    bare()  # warm-up
    run, pooled = swath(embedder, points, options, device, args.chunk)
    other = None if unguarded is None else bare_forward(unguarded, staged, batch, options.precision)
    bare_s = swath_s = other_s = float("inf")
    for _ in range(args.repeats):  # alternated, so a busy spell on the machine hits all
        bare_s = min(bare_s, _best_time(bare, device, 1))
        swath_s = min(swath_s, _best_time(run, device, 1))
        if other is not None:
            other_s = min(other_s, _best_time(other, device, 1))
    timing = Timing(batch, probe_s, bare_s, swath_s, None if other is None else other_s)
    return timing, np.concatenate(pooled)


def guard(embedder: VitEmbedder, device: torch.device) -> dict[str, object]:
    """The precision guard's report for bf16 and its time; raises PrecisionError."""
    start = time.perf_counter()
    report = precision.check_precision(embedder, "bf16", device)
    return {**report.as_dict(), "guard_s": time.perf_counter() - start}


def measure(args: argparse.Namespace) -> dict[str, object]:
    """Every figure of the benchmark, as a JSON-ready dict."""
    device, n_points, base = _setup(args)
    side = args.matmul or (8192 if device.type == "cuda" else 2048)
    embedder = build_model(device)
    points = synthetic_points(n_points, args.patch)
    staged = staged_tiles(points, base).to(device)
    out: dict[str, object] = {
        "run": {
            "device": f"{device.type}: {device_name(device)}",
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "model": "timm vit_base_patch16_224, in_chans=12, random weights",
            "points": n_points,
            "patch_px": args.patch,
            "tiles": len(staged),
            "chunk_points": args.chunk,
            "repeats": args.repeats,
            "matmul_side": side,
            "batch_size": str(base.batch_size),
            "load_average_at_start": os.getloadavg()[0],
            "rss_after_setup_mib": psutil.Process().memory_info().rss / 2**20,
        },
        "matmul_gflops": {
            "fp32": matmul_peak(device, torch.float32, side, 10),
            "bf16": matmul_peak(device, torch.bfloat16, side, 10),
        },
        "gflop_per_tile": gflop_per_tile(embedder, device),
    }
    pooled: dict[str, np.ndarray] = {}
    for p in ("fp32", "bf16"):
        options = replace(base, precision=p)
        unguarded = None
        if p == "bf16":
            unguarded = build_model(device)  # the same weights, never guarded: bare forward only
            out["guard"] = guard(embedder, device)
        timing, pooled[p] = time_precision(
            embedder, points, staged, options, args, unguarded=unguarded
        )
        out[p] = asdict(timing)
    one_by_one = per_point(embedder, points, replace(base, precision="fp32"), device)
    out["per_point_fp32_s"] = _best_time(one_by_one, device, 1)
    cos = cosine(pooled["fp32"], pooled["bf16"])
    out["cosine_bf16_fp32"] = {"min": float(cos.min()), "mean": float(cos.mean())}
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    out["load_average_at_end"] = os.getloadavg()[0]
    return out


def derive(out: dict[str, Any]) -> dict[str, float]:
    """The rates and ratios the issue asks for, from the raw timings."""
    tiles, gflop, peak = out["run"]["tiles"], out["gflop_per_tile"], out["matmul_gflops"]
    d: dict[str, float] = {}
    for p in ("fp32", "bf16"):
        bare, sw = tiles / out[p]["bare_s"], tiles / out[p]["swath_s"]
        d[f"{p}_bare_tiles_per_s"], d[f"{p}_swath_tiles_per_s"] = bare, sw
        d[f"{p}_bare_gflops"], d[f"{p}_swath_gflops"] = bare * gflop, sw * gflop
        d[f"{p}_bare_share_of_matmul_peak"] = bare * gflop / peak[p]
        d[f"{p}_swath_share_of_matmul_peak"] = sw * gflop / peak[p]
        d[f"{p}_swath_over_bare"] = sw / bare
    d["per_point_fp32_tiles_per_s"] = tiles / out["per_point_fp32_s"]
    d["swath_over_per_point_fp32"] = d["fp32_swath_tiles_per_s"] / d["per_point_fp32_tiles_per_s"]
    d["bf16_over_fp32_swath"] = d["bf16_swath_tiles_per_s"] / d["fp32_swath_tiles_per_s"]
    d["bf16_over_fp32_bare"] = d["bf16_bare_tiles_per_s"] / d["fp32_bare_tiles_per_s"]
    d["bf16_guarded_over_unguarded_bare"] = out["bf16"]["unguarded_bare_s"] / out["bf16"]["bare_s"]
    return d


def table(out: dict[str, Any], d: dict[str, float]) -> str:
    peak, cos, g = out["matmul_gflops"], out["cosine_bf16_fp32"], out["guard"]
    rows = [
        (
            "run",
            f"{out['run']['tiles']} tiles ({out['run']['points']} points of "
            f"{out['run']['patch_px']} px) on {out['run']['device']}",
        ),
        ("matmul peak GFLOP/s fp32 / bf16", f"{peak['fp32']:.0f} / {peak['bf16']:.0f}"),
        ("GFLOP per tile", f"{out['gflop_per_tile']:.1f}"),
    ]
    for p in ("fp32", "bf16"):
        rows += [
            (f"{p} batch size", f"{out[p]['batch_size']} ({out['run']['batch_size']})"),
            (
                f"{p} bare forward tiles/s (share of peak)",
                f"{d[f'{p}_bare_tiles_per_s']:.2f} ({d[f'{p}_bare_share_of_matmul_peak']:.0%})",
            ),
            (
                f"{p} swath tiles/s (share of peak)",
                f"{d[f'{p}_swath_tiles_per_s']:.2f} ({d[f'{p}_swath_share_of_matmul_peak']:.0%})",
            ),
            (f"{p} swath / bare forward", f"{d[f'{p}_swath_over_bare']:.3f}"),
        ]
    rows += [
        ("per-point fp32 tiles/s", f"{d['per_point_fp32_tiles_per_s']:.2f}"),
        ("swath / per-point (fp32)", f"{d['swath_over_per_point_fp32']:.3f}"),
        (
            "bf16 guard: probe cosine before -> after",
            f"{g['cosine_before']:.5f} -> {g['cosine']:.5f}",
        ),
        ("bf16 guard: layers kept in fp32", ", ".join(g["fp32_layers"]) or "none"),
        ("bf16 guard: time s", f"{g['guard_s']:.1f}"),
        ("bf16 / fp32 (swath tiles/s, guarded)", f"{d['bf16_over_fp32_swath']:.2f}"),
        ("bf16 / fp32 (bare forward, guarded)", f"{d['bf16_over_fp32_bare']:.2f}"),
        ("bf16 guarded / unguarded (bare forward)", f"{d['bf16_guarded_over_unguarded_bare']:.3f}"),
        ("cosine bf16 vs fp32 min / mean", f"{cos['min']:.5f} / {cos['mean']:.5f}"),
        ("peak RSS MiB", f"{out['peak_rss_mib']:.0f}"),
    ]
    if "peak_gpu_mib" in out:
        rows.append(("peak GPU memory MiB", f"{out['peak_gpu_mib']:.0f}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        out = measure(args)
    except precision.PrecisionError as e:
        print(f"bf16 refused by the precision guard: {e}", file=sys.stderr)
        return 2
    out["derived"] = derived = derive(out)
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    print()
    print(table(out, derived))
    worst = out["cosine_bf16_fp32"]["min"]  # type: ignore[index]
    if not worst >= precision.COSINE_THRESHOLD:
        print(
            f"bf16 embeddings of the benchmark's points reach a minimum cosine of {worst:.5f} "
            f"to fp32, below the guard's threshold {precision.COSINE_THRESHOLD}: the guarded "
            "bf16 path is wrong here; use --precision fp32",
            file=sys.stderr,
        )
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
