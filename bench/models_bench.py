"""Each model family once: throughput against the device's matmul peak, fp32 and guarded bf16
(a benchmark, not a test).

    .venv/bin/python bench/models_bench.py [--device cpu|cuda] [--tiles 4] [--models a,b]

For one registered model per family, with seeded random weights (the same arithmetic as
pretrained ones): GFLOP per native tile (torch's FlopCounterMode), the bare forward's
tiles/s on pre-staged normalised tiles, its GFLOP/s and share of the device's matmul peak
of that precision, in float32 and in bf16 after the precision guard (embedders.precision;
the layers it keeps in float32 are listed), and the worst cosine of the bf16 pooled vectors
to float32 over the timed tiles. Prints JSON, then a table. A model the guard refuses in
bf16 gets "refused" and the guard's measured cosine.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from infer_bench import _best_time, device_name, matmul_peak

from embedders import batching, precision, registry
from embedders.spec import Embedder, Precision

# One model per family; the others of a family share its architecture and cost.
FAMILY_MODELS = (
    "ssl4eo_resnet50_s2_moco",
    "ssl4eo_vits16_s2_moco",
    "dofa_base",
    "dofa_large",
    "croma_base",
    "croma_base_s1s2",  # two sensors: the radar branch and the joint encoder on top
    "panopticon_base",
    "copernicusfm_base",
    "scalemae_large",
    "tessera_otf",  # a pixel time-series model: its "tile" is one pixel's series
    "presto",  # pixel series too, with S2 + S1 and each point's lat/lon
    "olmoearth_nano",  # tile-series models: a tile carries 12 monthly steps
    "olmoearth_base",
)


def gflop_per_tile(embedder: Embedder, device: torch.device) -> float:
    tile = torch.randn(1, *embedder.spec.sample_shape(), device=device)
    # nn.TransformerEncoderLayer's fused inference path (Tessera's) is one op FlopCounterMode
    # does not count: counted on the unfused path, which does the same products
    fused = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            embedder.forward(tile)
    finally:
        torch.backends.mha.set_fastpath_enabled(fused)
    return counter.get_total_flops() / 1e9


def pooled(embedder: Embedder, tiles: torch.Tensor, prec: Precision) -> np.ndarray:
    with torch.inference_mode(), batching.precision_context(prec, tiles.device):
        return embedder.forward(tiles)[0].double().cpu().numpy()


def measure(name: str, device: torch.device, n: int, repeats: int) -> dict[str, object]:
    embedder = registry.build(name, "random", device)
    tiles = precision.probe_batch(embedder, n, seed=1).to(device)
    gflop = gflop_per_tile(embedder, device)
    row: dict[str, object] = {"model": name, "tile_px": embedder.spec.tile_px, "gflop": gflop}
    ref = pooled(embedder, tiles, "fp32")  # also the warm-up
    row["fp32_s"] = _best_time(lambda: pooled(embedder, tiles, "fp32"), device, repeats)
    try:
        report = precision.check_precision(embedder, "bf16", device)
    except precision.PrecisionError as e:
        row["bf16"] = f"refused (guard cosine {e.report.cosine if e.report else 'n/a'})"
        return row
    row["guard"] = report.as_dict()
    low = pooled(embedder, tiles, "bf16")  # warm-up
    row["bf16_s"] = _best_time(lambda: pooled(embedder, tiles, "bf16"), device, repeats)
    row["bf16_cosine"] = precision.min_cosine(ref, low)
    return row


def table(rows: list[dict[str, object]], peaks: dict[str, float], n: int) -> str:
    head = (
        f"{'model':26} {'tile':>4} {'GFLOP':>6} | {'fp32 t/s':>8} {'GFLOP/s':>7} {'peak':>5} | "
        f"{'bf16 t/s':>8} {'GFLOP/s':>7} {'peak':>5} {'cosine':>9}  fp32 layers kept"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        g = float(str(r["gflop"]))
        fp32 = n / float(str(r["fp32_s"]))
        cells = f"{fp32:8.2f} {fp32 * g:7.1f} {fp32 * g / peaks['fp32']:5.0%}"
        if "bf16_s" in r:
            bf = n / float(str(r["bf16_s"]))
            guard = r["guard"]
            kept = ",".join(guard["fp32_layers"]) if isinstance(guard, dict) else ""
            low = f"{bf:8.2f} {bf * g:7.1f} {bf * g / peaks['bf16']:5.0%} "
            low += f"{float(str(r['bf16_cosine'])):9.6f}  {kept or '-'}"
        else:
            low = str(r["bf16"])
        lines.append(f"{r['model']:26} {r['tile_px']:>4} {g:6.1f} | {cells} | {low}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if any")
    p.add_argument("--tiles", type=int, default=None, help="tiles per timed batch (4 cpu, 64 gpu)")
    p.add_argument("--repeats", type=int, default=2, help="timings are the best of these")
    p.add_argument("--models", default=",".join(FAMILY_MODELS), help="comma-separated names")
    args = p.parse_args(argv)
    cuda = args.device == "cuda" or (args.device is None and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    n = args.tiles or (64 if cuda else 4)
    side = 8192 if cuda else 2048
    peaks = {
        "fp32": matmul_peak(device, torch.float32, side, 3),
        "bf16": matmul_peak(device, torch.bfloat16, side, 3),
    }
    rows = [measure(name, device, n, args.repeats) for name in args.models.split(",")]
    meta = {"device": device_name(device), "threads": torch.get_num_threads(), "tiles": n}
    print(json.dumps({**meta, "matmul_peak_gflops": peaks, "models": rows}, default=str))
    print(f"\n{meta['device']}, {meta['threads']} threads, {n} tiles per batch; matmul peak "
          f"fp32 {peaks['fp32']:.0f}, bf16 {peaks['bf16']:.0f} GFLOP/s")  # fmt: skip
    print(table(rows, peaks, n))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
