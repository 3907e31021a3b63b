"""Produce: the one task every product runs through, model-backed or precomputed, around
`tasks.results.produce_chunk` (the results store is there).
"""

from typing import Any

from prefect import task
from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy
from prefect.context import TaskRunContext

from tasks.caching import while_present
from tasks.plan.chunks import Chunk
from tasks.prefetch import TRANSIENT_RETRIES
from tasks.products.registry import Product
from tasks.results import produce_chunk, result_complete


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
    task_run_name="produce {chunk.label} {product.name}",
    **TRANSIENT_RETRIES,
    cache_policy=while_present(
        _results_present, policy=TASK_SOURCE + CacheKeyFnPolicy(cache_key_fn=_product_key)
    ),
)
def produce_task(
    product: Product, chunk: Chunk, inputs_path: str, results_path: str, *, refresh: bool = False
) -> str:
    return produce_chunk(product, chunk, inputs_path, results_path, refresh=refresh)
