"""The compact inputs store against the first format (a benchmark, not a test).

    .venv/bin/python bench/inputs_bench.py [--points 64] [--patch 224] [--models a,b]

On median composites of two synthetic Sentinel-2-like dates (whole digital numbers, so half
of the median's pixels end in .5; 5 % masked), it measures in one run:
- bytes on disk per band-pixel and seconds to read a chunk back: float32 with NaN and Zarr's
  default codec (the store's first format) against int16 with a fill value, Blosc LZ4 and a
  CRC-32C (tasks/inputs.py);
- what the int16 rounding does to embeddings: each model's pooled vectors of the rounded
  composites against those of the unrounded float32 ones (cosine, worst and mean), with
  seeded random weights (the same arithmetic as pretrained ones).
Prints JSON, then a table.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from embedders import registry
from embedders.encoding import INT16, decode
from embedders.engine import embed_images
from embedders.spec import InferenceOptions
from tasks.inputs import write_band

S2 = {"B02": 1100, "B03": 1040, "B04": 950, "B07": 2370, "B08": 2300, "B11": 1820, "B12": 1120}


def composites(n: int, patch: int, bands: tuple[str, ...], seed: int = 0) -> np.ndarray:
    """(n, C, patch, patch) float32 medians of two dates (the mean of two values), NaN holes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:patch, 0:patch].astype(np.float32)
    out = np.empty((n, len(bands), patch, patch), dtype=np.float32)
    for i in range(n):
        for b, name in enumerate(bands):
            fy, fx = rng.uniform(0.01, 0.08, 2)
            field = S2.get(name, 1500) * (1 + 0.4 * np.sin(fy * yy) * np.cos(fx * xx))
            dates = np.rint(field + rng.normal(0, 60, (2, patch, patch)))
            out[i, b] = dates.mean(0)
    out[rng.random(out.shape) < 0.05] = np.nan
    return out


def store_figures(values: np.ndarray, where: Path) -> dict[str, dict[str, float]]:
    """Bytes per band-pixel and read seconds of one band, first format against compact."""
    band = values[:, 0]
    first = zarr.open_group(str(where / "first.zarr"), mode="w")
    first.create_array("b", shape=band.shape, dtype="float32", fill_value=np.nan)[...] = band
    compact = zarr.open_group(str(where / "compact.zarr"), mode="w")
    write_band(compact, "b", band, INT16)
    out = {}
    for name in ("first", "compact"):
        array = zarr.open_array(str(where / f"{name}.zarr"), path="b", mode="r")
        size = sum(
            f.stat().st_size for f in (where / f"{name}.zarr" / "b").rglob("*") if f.is_file()
        )
        began = time.perf_counter()
        for _ in range(5):
            np.asarray(array[...])
        out[name] = {
            "bytes_per_pixel": size / band.size,
            "read_s": (time.perf_counter() - began) / 5,
        }
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--points", type=int, default=64)
    p.add_argument("--patch", type=int, default=224)
    p.add_argument("--models", default="ssl4eo_resnet18_rgb,dofa_base")
    args = p.parse_args(argv)
    out: dict[str, object] = {"points": args.points, "patch_px": args.patch}
    with tempfile.TemporaryDirectory() as tmp:
        values = composites(args.points, args.patch, ("B02",))
        out["store"] = store_figures(values, Path(tmp))
    options = InferenceOptions(input_prep="tile", batch_size=8)
    cpu = torch.device("cpu")
    models = {}
    for name in args.models.split(","):
        embedder = registry.build(name, "random", cpu)
        exact = composites(args.points, args.patch, embedder.spec.bands, seed=1)
        rounded = decode(
            np.where(np.isnan(exact), INT16.fill, np.rint(exact)).astype(np.int16), INT16
        )
        half = float(np.mean(np.isfinite(exact) & (exact != np.rint(exact))))
        a = embed_images(embedder, list(exact), options, cpu).pooled
        b = embed_images(embedder, list(rounded), options, cpu).pooled
        cos = cosine(a.astype(np.float64), b.astype(np.float64))
        models[name] = {
            "pixels_rounded": half,
            "cosine_min": float(cos.min()),
            "cosine_mean": float(cos.mean()),
        }
    out["models"] = models
    print(json.dumps(out, indent=2))
    s = out["store"]
    print(
        f"\n{args.points} patches of {args.patch} px: bytes per band-pixel float32 "
        f"{s['first']['bytes_per_pixel']:.2f} -> int16 {s['compact']['bytes_per_pixel']:.2f}; "
        f"read {s['first']['read_s'] * 1e3:.1f} -> {s['compact']['read_s'] * 1e3:.1f} ms"
    )
    for name, m in models.items():
        print(
            f"{name}: {m['pixels_rounded']:.0%} of pixels rounded by 0.5 DN; cosine to the "
            f"unrounded embedding min {m['cosine_min']:.9f}, 1 - mean {1 - m['cosine_mean']:.1e}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
