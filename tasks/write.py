"""Write: one chunk's results for one model into its own chunk-aligned region of the store."""

from dataclasses import dataclass

from prefect import task

from tasks.plan import Chunk
from tasks.prefetch import TRANSIENT_RETRIES
from tasks.produce import load_result
from tasks.sources import TransientSourceError, classify_error
from tasks.store import write_chunk


@dataclass(frozen=True)
class WriteReport:
    chunk: str
    model: str
    worst_cosine: float | None  # stored vs float32, for a compact store (tasks/compact.py)


def write_results(
    store: str, chunk: Chunk, model: str, results_path: str, group_path: str, t: int
) -> float | None:
    """Copy a chunk's results into the output store; its status, the done mark, goes last.
    Returns the worst cosine of a stored vector to its float32 value (compact stores)."""
    result = load_result(results_path, group_path)
    if len(result.status) != len(chunk.points):
        raise ValueError(
            f"results {group_path} hold {len(result.status)} points, chunk {chunk.key} has "
            f"{len(chunk.points)}; remove {results_path}/{group_path} and rerun"
        )
    return write_chunk(store, chunk, model, result, t)


# Not cached: the store's status (its done mark) decides which chunks the flow submits.
# Writes to object storage fail transiently too (throttling, 5xx, dropped connections):
# those are retried like the source's, the whole region again with the done mark last.
@task(
    name="write",
    task_run_name="write {model} {chunk.key}",
    **TRANSIENT_RETRIES,
)
def write_task(
    store: str, chunk: Chunk, model: str, results_path: str, group_path: str, t: int
) -> WriteReport:
    try:
        cosine = write_results(store, chunk, model, results_path, group_path, t)
    except (OSError, TimeoutError) as e:
        error = classify_error(e, f"writing {model} {chunk.key} into {store}")
        if isinstance(error, TransientSourceError):
            raise error from e
        raise
    return WriteReport(chunk.key, model, cosine)
