"""Compact storage (--dtype): bytes on disk and the cosine to float32, per dtype. A benchmark,
not a test: it prints figures.

    .venv/bin/python bench/dtype_bench.py [--points 4096] [--dim 768] [--chunk 256]

Writes the same embeddings into three stores (float32, float16, int8) with swath's own
`create_store` + `write_chunk`, one chunk at a time as the write tasks do. The vectors are
the pooled outputs of a real forward (`ssl4eo_resnet18_rgb`, seeded random weights, on
random 64 px images) with `--real`, else Gaussian vectors with a spread of norms.
"""

import argparse
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from embedders.spec import Status
from tasks.plan.chunks import make_chunks
from tasks.plan.points import Point
from tasks.results import ChunkResult, ModelOutput
from tasks.store import compact
from tasks.store.layout import StoreLayout, create_store
from tasks.write import write_chunk


def _vectors(n: int, dim: int, real: bool) -> np.ndarray:
    rng = np.random.default_rng(0)
    if not real:
        return (rng.standard_normal((n, dim)) * rng.uniform(0.1, 10, (n, 1))).astype("f4")
    import torch

    from embedders import registry
    from embedders.engine import embed_images
    from embedders.spec import InferenceOptions

    model = registry.build("ssl4eo_resnet18_rgb", "random", torch.device("cpu"))
    images = list(rng.uniform(0, 3000, (n, 3, 64, 64)).astype("f4"))
    result = embed_images(model, images, InferenceOptions(batch_size=64), torch.device("cpu"))
    return np.asarray(result.pooled, dtype="f4")[:, :dim]


def _size(path: Path, name: str) -> int:
    return sum(p.stat().st_size for p in (path / name).rglob("*") if p.is_file())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--points", type=int, default=4096)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--real", action="store_true")
    a = p.parse_args()
    emb = _vectors(a.points, a.dim, a.real)
    points = tuple(Point(f"p{i}", 0.0, 0.0, 32631, 500_000.0 + i, 0.0) for i in range(a.points))
    model = ModelOutput("m", emb.shape[1], None, identity={"product": "bench"})
    chunks = make_chunks(list(points), a.chunk)
    base = None
    print(f"{a.points} vectors of {emb.shape[1]} dims, chunks of {a.chunk}")
    print(f"{'dtype':8} {'bytes':>12} {'ratio':>7} {'worst cosine':>13} {'mean cosine':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in compact.DTYPES:
            path = Path(tmp, f"{dtype}.zarr")
            layout = StoreLayout(points, a.chunk, (model,), dtype)
            create_store(str(path), layout, (date(2024, 1, 1), date(2024, 12, 31)), attrs={})
            for c in chunks:
                s = slice(c.start, c.stop)
                ok = np.full(len(c.points), Status.OK, np.int8)
                result = ChunkResult(emb[s], ok, [""] * len(c.points), np.ones(len(c.points), "f4"))
                write_chunk(str(path), c, "m", result, 0)
            size = _size(path, "m") + (_size(path, "m_scale") if dtype == "int8" else 0)
            base = base or size
            stored, scale = compact.encode(emb, dtype)
            back = compact.decode(stored, scale).astype("f8")
            e = emb.astype("f8")
            cos = (e * back).sum(1) / np.linalg.norm(e, axis=1) / np.linalg.norm(back, axis=1)
            print(
                f"{dtype:8} {size:>12,} {base / size:>6.2f}x {cos.min():>13.6f} {cos.mean():>12.6f}"
            )


if __name__ == "__main__":
    main()
