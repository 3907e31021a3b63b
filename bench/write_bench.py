"""Cost of one chunk's write: swath's store (region write, done mark last) against Icechunk
(the same region written in a session and committed as one transaction). A benchmark, not a
test: it prints figures.

    .venv/bin/python bench/write_bench.py [--chunks 40] [--points 32] [--dim 768]

Both write the same arrays (embeddings, status, valid fraction) for `--chunks` chunks of
`--points` points, one chunk at a time, as the write tasks do, into a local store.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _arrays(group: zarr.Group, n: int, cs: int, dim: int) -> None:
    group.create_array("emb", shape=(1, n, dim), chunks=(1, cs, dim), dtype="float32")
    group.create_array("status", shape=(1, n), chunks=(1, cs), dtype="int8", fill_value=0)
    group.create_array("valid", shape=(1, n), chunks=(1, cs), dtype="float32")


def _write(group: zarr.Group, i: int, cs: int, data: dict[str, np.ndarray]) -> None:
    region = slice(i * cs, (i + 1) * cs)
    group["emb"][0, region] = data["emb"]
    group["valid"][0, region] = data["valid"]
    group["status"][0, region] = data["status"]  # the done mark, last


def bench_zarr(root: Path, chunks: int, cs: int, dim: int, data: dict[str, np.ndarray]) -> float:
    group = zarr.open_group(str(root / "plain.zarr"), mode="w")
    _arrays(group, chunks * cs, cs, dim)
    started = time.perf_counter()
    for i in range(chunks):
        _write(zarr.open_group(str(root / "plain.zarr"), mode="r+"), i, cs, data)
    return (time.perf_counter() - started) / chunks


def bench_icechunk(
    root: Path, chunks: int, cs: int, dim: int, data: dict[str, np.ndarray]
) -> float:
    import icechunk

    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(root / "ice")))
    session = repo.writable_session("main")
    _arrays(zarr.open_group(session.store, mode="w"), chunks * cs, cs, dim)
    session.commit("layout")
    started = time.perf_counter()
    for i in range(chunks):
        session = repo.writable_session("main")
        _write(zarr.open_group(session.store, mode="r+"), i, cs, data)
        session.commit(f"chunk {i}")
    return (time.perf_counter() - started) / chunks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunks", type=int, default=40)
    p.add_argument("--points", type=int, default=32)
    p.add_argument("--dim", type=int, default=768)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    data = {
        "emb": rng.normal(size=(a.points, a.dim)).astype("float32"),
        "valid": np.ones(a.points, "float32"),
        "status": np.ones(a.points, "int8"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        plain = bench_zarr(Path(tmp), a.chunks, a.points, a.dim, data)
        ice = bench_icechunk(Path(tmp), a.chunks, a.points, a.dim, data)
    figures = {
        "chunks": a.chunks,
        "points_per_chunk": a.points,
        "dim": a.dim,
        "zarr_region_write_ms_per_chunk": round(plain * 1e3, 2),
        "icechunk_commit_ms_per_chunk": round(ice * 1e3, 2),
        "icechunk_over_zarr": round(ice / plain, 2),
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
