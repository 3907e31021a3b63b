"""Throughput of swath's infer stage against the model's bare forward (a benchmark, not a test).

    python bench/infer_bench.py [--device cpu|cuda] [--arch vit_base_patch16_224]
                                [--points N] [--chunk N] [--patch 448] [--compile] ...

On synthetic but realistic input (12-band Sentinel-2-like patches, whole digital numbers
stored as int16 as the inputs store holds them, cut into 224 px tiles) and a timm model
with random weights (`--arch`: a ViT-B/16 by default; vit_small_patch16_224 and resnet50
are the fastest families), it measures in one run:

- the device's matmul peak (float32, bfloat16) and the model's GFLOP per tile;
- the bare forward: normalised tiles already on the device, full batches, pooled vectors
  back to the host: the model's own speed;
- swath's infer stage: `embed_patches` over chunks of `--chunk` points, from int16
  patches in host memory (pinned on CUDA) to results on the host, with tiles cut on the
  device; its share of the bare forward, and the share of its wall time the device spent
  in forwards (CUDA timing events);
- a per-point loop (one call per point, as rs-embed does on the CPU), on the CPU;
- with `--compile`, the bare forward and the infer stage compiled (and the compile time);
  for a convolutional model on CUDA, the bare forward with and without channels_last.

Each in float32 and in bf16 (the guarded path: the precision guard runs first and may keep
layers in float32). Prints JSON, then a table. Imports neither Prefect, torchgeo, zarr nor
a geo library: it runs on a bare GPU machine with torch, timm and numpy (README, "GPU").
Exits with status 2 when the guard refuses bf16, 3 when the bf16 embeddings fall below the
guard's cosine threshold.
"""

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from embedders import autobatch, batching, engine, execution, precision
from embedders.encoding import INT16, encode_int16
from embedders.patches import PatchStack
from embedders.spec import InferenceOptions, ModelSpec, Precision, WeightsInfo

# The 12 Sentinel-2 L2A bands (B10, a cirrus band, exists in L1C only), with the SSL4EO-S12
# means and standard deviations in digital numbers (the statistics DOFA's spec uses).
S2_STATS = {
    "B01": (1353.7, 65.5), "B02": (1117.2, 154.1), "B03": (1041.9, 188.1),
    "B04": (946.6, 278.1), "B05": (1199.2, 227.9), "B06": (2003.0, 356.9),
    "B07": (2374.0, 456.0), "B08": (2301.2, 531.6), "B8A": (2599.8, 502.2),
    "B09": (732.2, 98.7), "B11": (1820.7, 378.2), "B12": (1118.2, 303.1),
}  # fmt: skip
BANDS = tuple(S2_STATS)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ARCHS = {  # timm name -> (embedding dim, grid stride, convolutional)
    "vit_base_patch16_224": (768, 16, False),
    "vit_small_patch16_224": (384, 16, False),
    "resnet50": (2048, 32, True),
}


def bench_spec(arch: str) -> ModelSpec:
    dim, stride, conv = ARCHS[arch]
    return ModelSpec(
        name=f"bench_{arch}_12band",
        family="bench",
        description=f"timm {arch}, 12 input bands, random weights (benchmark only)",
        sensor="sentinel-2-l2a",
        bands=BANDS,
        resolution_m=10,
        tile_px=224,
        embed_dim=dim,
        grid_stride_px=stride,
        norm_mean=tuple(S2_STATS[b][0] for b in BANDS),
        norm_std=tuple(S2_STATS[b][1] for b in BANDS),
        pretrained_weights="none",
        convolutional=conv,
    )


@dataclass
class TimmEmbedder:
    """A timm model as an Embedder: pooled = its pre-logits features, grid = its last
    feature map (a ViT's patch tokens as (B, D, 14, 14))."""

    spec: ModelSpec
    weights: WeightsInfo
    module: nn.Module

    def forward(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.module.forward_features(tiles)  # type: ignore[operator]
        pooled = self.module.forward_head(features, pre_logits=True)  # type: ignore[operator]
        if features.ndim == 3:  # tokens: drop the class token, back to a map
            side = tiles.shape[-1] // self.spec.grid_stride_px
            features = features[:, 1:].transpose(1, 2).reshape(len(tiles), -1, side, side)
        return pooled, features


def build_model(arch: str, device: torch.device) -> TimmEmbedder:
    torch.manual_seed(0)
    module = timm.create_model(arch, pretrained=False, in_chans=len(BANDS), num_classes=0)
    return TimmEmbedder(bench_spec(arch), WeightsInfo("random", "seed=0"), module.eval().to(device))


def synthetic_patches(n: int, patch: int, seed: int = 0) -> np.ndarray:
    """(n, 12, patch, patch) int16: smooth fields plus noise around each band's mean, whole
    digital numbers, as the inputs store holds them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:patch, 0:patch].astype(np.float32)
    out = np.empty((n, len(BANDS), patch, patch), dtype=np.int16)
    for i in range(n):
        for b, name in enumerate(BANDS):
            mean, std = S2_STATS[name]
            fy, fx = rng.uniform(0.01, 0.08, 2)
            wave = np.sin(fy * yy + rng.uniform(0, 6.28)) * np.cos(fx * xx)
            out[i, b] = encode_int16(mean + std * (0.6 * wave + rng.normal(0, 0.2, wave.shape)))
    return out


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


def gflop_per_tile(embedder: TimmEmbedder, device: torch.device) -> float:
    spec = embedder.spec
    tile = torch.randn(1, len(spec.bands), spec.tile_px, spec.tile_px, device=device)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        embedder.forward(tile)
    return counter.get_total_flops() / 1e9


def staged_tiles(patches: np.ndarray, spec: ModelSpec, options: InferenceOptions) -> torch.Tensor:
    """The normalised tiles swath cuts from the patches, in one tensor on the CPU."""
    floats = np.where(patches == INT16.fill, np.nan, patches).astype(np.float32)
    return torch.from_numpy(np.concatenate([engine.cut_tiles(p, spec, options) for p in floats]))


def bare_forward(
    model: Any, tiles: torch.Tensor, batch: int, prec: Precision
) -> Callable[[], object]:
    """The model alone: forwards over tiles already on the device, pooled back to host."""
    device = tiles.device

    def run() -> object:
        with torch.inference_mode(), batching.precision_context(prec, device):
            return [
                model.forward(tiles[i : i + batch])[0].float().cpu()
                for i in range(0, len(tiles), batch)
            ]

    return run


@dataclass
class Swath:
    """The infer stage over the points, `chunk` points per call as the export's chunks are;
    the forward and wall seconds of its last run."""

    embedder: TimmEmbedder
    stacks: list[PatchStack]
    options: InferenceOptions
    device: torch.device
    pooled: np.ndarray | None = None
    forward_s: float = 0.0
    embed_s: float = 0.0
    compile_s: float = 0.0

    def __call__(self) -> object:
        results = [
            engine.embed_patches(self.embedder, s, self.options, self.device) for s in self.stacks
        ]
        self.pooled = np.concatenate([r.pooled for r in results])
        self.forward_s = sum(r.forward_s for r in results)
        self.embed_s = sum(r.embed_s for r in results)
        self.compile_s += sum(r.compile_s for r in results)
        return self.pooled


def peak_host_mib() -> float:
    """This process's own peak resident set (VmHWM), MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    return names[0] if names else platform.processor()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if any")
    p.add_argument("--arch", choices=sorted(ARCHS), default="vit_base_patch16_224")
    p.add_argument("--points", type=int, default=None, help="default: 16 on cpu, 512 on cuda")
    p.add_argument("--patch", type=int, default=448, help="patch side in pixels (448: 4 tiles)")
    p.add_argument("--chunk", type=int, default=None, help="points per call; default: 16 / 256")
    p.add_argument("--batch-size", default="auto", help="an integer or 'auto' (the default)")
    p.add_argument("--repeats", type=int, default=3, help="timings are the best of these")
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated")
    p.add_argument("--compile", action="store_true", help="also time the compiled forward")
    p.add_argument("--no-per-point", action="store_true", help="skip the per-point loop")
    p.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    return p.parse_args(argv)


@dataclass
class Setup:
    device: torch.device
    embedder: TimmEmbedder
    stacks: list[PatchStack]
    staged: torch.Tensor
    base: InferenceOptions


def setup(args: argparse.Namespace) -> Setup:
    cuda = args.device == "cuda" or (args.device is None and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    n = args.points or (512 if cuda else 16)
    chunk = args.chunk or (256 if cuda else 16)
    size: int | Literal["auto"] = "auto" if args.batch_size == "auto" else int(args.batch_size)
    base = InferenceOptions(input_prep="tile", output="pooled", batch_size=size)
    embedder = build_model(args.arch, device)
    patches = synthetic_patches(n, args.patch)
    stacks = [
        PatchStack(torch.from_numpy(patches[i : i + chunk]), INT16).pinned()
        for i in range(0, n, chunk)
    ]
    staged = staged_tiles(patches, embedder.spec, base).to(device)
    return Setup(device, embedder, stacks, staged, base)


def time_one(
    s: Setup, options: InferenceOptions, repeats: int, compiled: bool
) -> tuple[dict[str, float], np.ndarray]:
    """Bare forward and infer stage in one precision, alternated so a busy spell hits both."""
    device = s.device
    start = time.perf_counter()
    batch = autobatch.resolve_batch_size(s.embedder, options, device)
    probe_s = time.perf_counter() - start
    swath = Swath(s.embedder, s.stacks, options, device)
    model: Any = s.embedder
    if compiled or execution.uses_channels_last(s.embedder.spec, options, device):
        model, _ = execution.prepare(s.embedder, options, device, batch)
    bare = bare_forward(model, s.staged, batch, options.precision)
    bare()  # warm-up (and the compile, if compiled)
    swath()  # warm-up
    bare_s = swath_s = float("inf")
    for _ in range(repeats):
        bare_s = min(bare_s, _best_time(bare, device, 1))
        swath_s = min(swath_s, _best_time(swath, device, 1))
    out = {
        "batch_size": float(batch),
        "probe_s": probe_s,
        "bare_s": bare_s,
        "swath_s": swath_s,
        "forward_s": swath.forward_s,
        "embed_s": swath.embed_s,
        "compile_s": swath.compile_s,
    }
    if s.embedder.spec.convolutional and device.type == "cuda" and not compiled:
        plain = bare_forward(s.embedder, s.staged, batch, options.precision)
        plain()
        out["bare_contiguous_s"] = _best_time(plain, device, repeats)
    assert swath.pooled is not None
    return out, swath.pooled


def per_point(s: Setup, repeats: int) -> float:
    """One call per point, its tiles as one batch (rs-embed's CPU path), fp32."""
    one = replace(s.base, batch_size=4)
    points = [
        PatchStack(stack.values[i : i + 1], INT16) for stack in s.stacks for i in range(len(stack))
    ]
    run = lambda: [engine.embed_patches(s.embedder, p, one, s.device) for p in points]  # noqa: E731
    return _best_time(run, s.device, repeats)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    s = setup(args)
    device = s.device
    side = 8192 if device.type == "cuda" else 2048
    out: dict[str, Any] = {
        "run": {
            "device": f"{device.type}: {device_name(device)}",
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "model": f"timm {args.arch}, in_chans=12, random weights",
            "points": sum(len(x) for x in s.stacks),
            "patch_px": args.patch,
            "tiles": len(s.staged),
            "chunk_points": len(s.stacks[0]),
            "repeats": args.repeats,
            "load_average_at_start": os.getloadavg()[0],
            "imports": sorted(
                m
                for m in ("prefect", "torchgeo", "zarr", "shapely", "pyproj", "rasterio")
                if m in sys.modules
            ),
        },
        "matmul_gflops": {
            prec: matmul_peak(device, DTYPES[prec], side, 10) for prec in args.precisions.split(",")
        },
        "gflop_per_tile": gflop_per_tile(s.embedder, device),
    }
    pooled: dict[str, np.ndarray] = {}
    for prec in args.precisions.split(","):
        options = replace(s.base, precision=prec)
        if prec != "fp32":
            began = time.perf_counter()
            out["guard"] = precision.check_precision(s.embedder, prec, device).as_dict()
            out["guard"]["guard_s"] = time.perf_counter() - began
        out[prec], pooled[prec] = time_one(s, options, args.repeats, compiled=False)
        if args.compile:
            fast = replace(options, compile=True)
            out[f"{prec}_compiled"], _ = time_one(s, fast, args.repeats, compiled=True)
    if device.type == "cpu" and not args.no_per_point:
        out["per_point_fp32_s"] = per_point(s, 1)
    if "fp32" in pooled and "bf16" in pooled:
        cos = (pooled["fp32"] * pooled["bf16"]).sum(1) / (
            np.linalg.norm(pooled["fp32"], axis=1) * np.linalg.norm(pooled["bf16"], axis=1)
        )
        out["cosine_bf16_fp32"] = {"min": float(cos.min()), "mean": float(cos.mean())}
    out["peak_host_mib"] = peak_host_mib()
    if device.type == "cuda":
        out["peak_device_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    out["load_average_at_end"] = os.getloadavg()[0]
    return out


def derive(out: dict[str, Any]) -> dict[str, float]:
    """Rates and ratios: tiles/s, share of the matmul peak, infer stage / bare forward,
    device busy share of the infer stage."""
    tiles, gflop, peak = out["run"]["tiles"], out["gflop_per_tile"], out["matmul_gflops"]
    d: dict[str, float] = {}
    for key in [k for k in out if k in ("fp32", "bf16", "fp32_compiled", "bf16_compiled")]:
        t, prec = out[key], key.split("_")[0]
        bare, sw = tiles / t["bare_s"], tiles / t["swath_s"]
        d[f"{key}_bare_tiles_per_s"], d[f"{key}_swath_tiles_per_s"] = bare, sw
        d[f"{key}_bare_share_of_peak"] = bare * gflop / peak[prec]
        d[f"{key}_swath_share_of_peak"] = sw * gflop / peak[prec]
        d[f"{key}_swath_over_bare"] = sw / bare
        d[f"{key}_device_busy"] = t["forward_s"] / t["embed_s"] if t["embed_s"] else 0.0
        if "bare_contiguous_s" in t:
            d[f"{key}_channels_last_gain"] = t["bare_contiguous_s"] / t["bare_s"]
    if "per_point_fp32_s" in out:
        d["swath_over_per_point_fp32"] = out["per_point_fp32_s"] / out["fp32"]["swath_s"]
    if "fp32" in out and "bf16" in out:
        d["bf16_over_fp32_swath"] = out["fp32"]["swath_s"] / out["bf16"]["swath_s"]
    return d


def table(out: dict[str, Any], d: dict[str, float]) -> str:
    run, peak = out["run"], out["matmul_gflops"]
    rows = [
        (
            "run",
            f"{run['tiles']} tiles ({run['points']} points of {run['patch_px']} px, "
            f"chunks of {run['chunk_points']}) on {run['device']}",
        ),
        ("model, GFLOP per tile", f"{run['model']}, {out['gflop_per_tile']:.1f}"),
        ("matmul peak GFLOP/s", ", ".join(f"{k} {v:.0f}" for k, v in peak.items())),
    ]
    for key in [k for k in out if k in ("fp32", "bf16", "fp32_compiled", "bf16_compiled")]:
        t = out[key]
        rows += [
            (f"{key}: batch size", f"{t['batch_size']:.0f}"),
            (f"{key}: bare forward tiles/s (share of peak)",
             f"{d[f'{key}_bare_tiles_per_s']:.1f} ({d[f'{key}_bare_share_of_peak']:.0%})"),
            (f"{key}: infer stage tiles/s (share of peak)",
             f"{d[f'{key}_swath_tiles_per_s']:.1f} ({d[f'{key}_swath_share_of_peak']:.0%})"),
            (f"{key}: infer stage / bare forward", f"{d[f'{key}_swath_over_bare']:.3f}"),
            (f"{key}: device busy share of the infer stage", f"{d[f'{key}_device_busy']:.3f}"),
        ]  # fmt: skip
        if t["compile_s"]:
            rows.append((f"{key}: compile s", f"{t['compile_s']:.1f}"))
        if f"{key}_channels_last_gain" in d:
            rows.append(
                (f"{key}: channels_last gain (bare)", f"{d[f'{key}_channels_last_gain']:.2f}x")
            )
    if "swath_over_per_point_fp32" in d:
        rows.append(
            ("infer stage / per-point loop (fp32)", f"{d['swath_over_per_point_fp32']:.2f}")
        )
    if "bf16_over_fp32_swath" in d:
        rows.append(("bf16 / fp32 (infer stage)", f"{d['bf16_over_fp32_swath']:.2f}"))
    if "guard" in out:
        g = out["guard"]
        rows.append(("bf16 guard: cosine before -> after, kept in fp32",
                     f"{g['cosine_before']:.5f} -> {g['cosine']:.5f}, "
                     f"{', '.join(g['fp32_layers']) or 'none'}"))  # fmt: skip
    if "cosine_bf16_fp32" in out:
        c = out["cosine_bf16_fp32"]
        rows.append(("cosine bf16 vs fp32 min / mean", f"{c['min']:.5f} / {c['mean']:.5f}"))
    rows.append(("peak host memory MiB (VmHWM)", f"{out['peak_host_mib']:.0f}"))
    if "peak_device_mib" in out:
        rows.append(("peak device memory MiB", f"{out['peak_device_mib']:.0f}"))
    rows.append(("imported", ", ".join(run["imports"]) or "none of prefect, torchgeo, zarr, geo"))
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
    worst = out.get("cosine_bf16_fp32", {}).get("min", 1.0)
    if not worst >= precision.COSINE_THRESHOLD:
        print(
            f"bf16 embeddings of the benchmark's points reach a minimum cosine of {worst:.5f} "
            f"to fp32, below the guard's threshold {precision.COSINE_THRESHOLD}",
            file=sys.stderr,
        )
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
