"""What a product makes of a chunk, and the results store that keeps it until it is written.

Results live in `<work-dir>/results.zarr/<product.key()>/<chunk.key>` and count once marked
complete. Nothing here imports Prefect: tasks/produce.py wraps `produce_chunk` in the one
task every product runs through, and bench/infer_task_bench.py runs it on a bare machine.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
import zarr.errors

from tasks.inputs import require_group

if TYPE_CHECKING:
    from tasks.plan.chunks import Chunk
    from tasks.products.product import Product, ProductFacts


@dataclass(frozen=True)
class ModelOutput:
    """One model's variables in the store, and everything that makes its results what they are."""

    name: str
    embed_dim: int
    grid_shape: tuple[int, int] | None  # None for pooled output
    identity: dict[str, Any] = field(default_factory=dict)  # JSON-able: spec, weights, config
    provenance: dict[str, Any] = field(default_factory=dict)  # recorded, not compared: files, notes
    # What the product declares (tasks/products/product.py), as this run resolved it: what the STAC
    # Item and the geoemb: attributes say (tasks/store/conventions.py); not compared.
    facts: ProductFacts | None = field(default=None, compare=False)
    patch_px: int = field(default=0, compare=False)  # each point's patch side, in pixels


@dataclass
class ChunkResult:
    """A chunk's results for one model, as written into the store."""

    embeddings: np.ndarray  # (n, D) or (n, D, gy, gx) float32
    status: np.ndarray  # (n,) int8
    reason: list[str]
    valid_fraction: np.ndarray  # (n,) float32
    # How a model product used its device (None for precomputed ones): kept in the results
    # store's attributes for the run's summary and the benchmarks, never in the output store.
    timing: DeviceTiming | None = None


@dataclass(frozen=True)
class DeviceTiming:
    """One chunk's time on a device: the model's forwards (`forward_s`) within the span
    the infer held the device (`start` and `end`, seconds since the epoch)."""

    device: str
    forward_s: float
    start: float
    end: float
    host: str = ""


def produce_chunk(
    product: Product, chunk: Chunk, inputs_path: str, results_path: str, *, refresh: bool = False
) -> str:
    """The chunk's results for `product`, computed unless already complete; their group path."""
    group_path = f"{product.key()}/{chunk.key}"
    if not refresh and result_complete(results_path, group_path):
        return group_path
    result = product.produce(chunk, inputs_path)
    if len(result.status) != len(chunk.points):
        raise ValueError(
            f"product {product.name} returned {len(result.status)} results for chunk "
            f"{chunk.key} of {len(chunk.points)} points"
        )
    save_result(results_path, group_path, result)
    return group_path


def save_result(results_path: str, group_path: str, result: ChunkResult) -> None:
    parent, _, _ = group_path.rpartition("/")
    if parent:  # the product's group first: its chunks may be saved at once elsewhere
        require_group(results_path, parent)
    group = require_group(results_path, group_path)
    for name, arr in (
        ("embeddings", result.embeddings.astype("float32")),
        ("status", result.status.astype("int8")),
        ("valid_fraction", result.valid_fraction.astype("float32")),
    ):
        group.create_array(name, shape=arr.shape, dtype=arr.dtype, overwrite=True)[...] = arr
    attrs: dict[str, Any] = {"reason": list(result.reason), "complete": True}
    if result.timing is not None:
        attrs["timing"] = asdict(result.timing)
    group.attrs.update(attrs)


def read_timing(results_path: str, group_path: str) -> DeviceTiming | None:
    """The device timing a chunk's results were saved with, if any."""
    try:
        group = zarr.open_group(results_path, path=group_path, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        return None
    timing = group.attrs.get("timing")
    return DeviceTiming(**timing) if isinstance(timing, dict) else None


def result_complete(results_path: str, group_path: str) -> bool:
    try:
        group = zarr.open_group(results_path, path=group_path, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        return False
    return bool(group.attrs.get("complete"))


def load_result(results_path: str, group_path: str) -> ChunkResult:
    group = zarr.open_group(results_path, path=group_path, mode="r")
    if not group.attrs.get("complete"):
        raise FileNotFoundError(
            f"results {group_path} in {results_path} are not complete; rerun the export"
        )

    def read(name: str) -> np.ndarray:
        return np.asarray(zarr.open_array(results_path, path=f"{group_path}/{name}", mode="r")[...])

    reasons = group.attrs["reason"]
    assert isinstance(reasons, list)
    return ChunkResult(
        read("embeddings"), read("status"), [str(r) for r in reasons], read("valid_fraction")
    )
