"""Produce: one product's results for one chunk, kept in the results store until written.

The one task every product runs through, model-backed or precomputed. Results live in
`<work-dir>/results.zarr/<product.key()>/<chunk.key>` and count once marked complete.
"""

from typing import Any

import numpy as np
import zarr
from prefect import task
from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy
from prefect.context import TaskRunContext

from tasks.caching import while_present
from tasks.chunks import Chunk
from tasks.prefetch import TRANSIENT_RETRIES, require_group
from tasks.products import Product
from tasks.store import ChunkResult


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
    if result.forward_s is not None:  # the seconds of the model's forwards (bench/scale_bench.py)
        attrs["forward_s"] = result.forward_s
    group.attrs.update(attrs)


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


def _results_present(parameters: dict[str, Any]) -> bool:
    p = parameters
    return result_complete(p["results_path"], f"{p['product'].key()}/{p['chunk'].key}")


def _product_key(_: TaskRunContext, parameters: dict[str, Any]) -> str:
    """The cache key from the product's declared identity and the chunk, nothing else: a
    reworded description or another product in the registry keeps finished work cached."""
    p = parameters
    return f"{p['product'].key()}/{p['chunk'].key}/{p['results_path']}"


@task(
    name="produce",
    task_run_name="produce {product.name} {chunk.key}",
    **TRANSIENT_RETRIES,
    cache_policy=TASK_SOURCE
    + CacheKeyFnPolicy(cache_key_fn=_product_key)
    + while_present(_results_present, inputs=False),
)
def produce_task(
    product: Product, chunk: Chunk, inputs_path: str, results_path: str, *, refresh: bool = False
) -> str:
    return produce_chunk(product, chunk, inputs_path, results_path, refresh=refresh)
