"""Prefetch: the Prefect task that fetches a chunk's imagery, once per sensor configuration,
into the inputs store (tasks/inputs.py holds the store and the plain functions), with the
retries every task that talks to a source or a store takes.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import prefect.runtime.task_run
from prefect import State, Task, task
from prefect.client.schemas.objects import TaskRun
from prefect.tasks import exponential_backoff

from tasks.caching import while_present
from tasks.inputs import PrefetchReport, bands_present, prefetch_chunk
from tasks.plan.chunks import Chunk
from tasks.sources.registry import SensorConfig, TransientSourceError, get_source

# Retries for failures a retry may fix (HTTP 429/5xx, timeouts, resets), after the source's
# own per-request retries: exponential backoff (2, 4, 8, 16, 32 s) with +-50% jitter, so a
# throttled or restarting server has time to recover and workers do not retry in step.
PREFETCH_RETRIES = 5
PREFETCH_BACKOFF_S = 2.0


def retry_if_transient(task: Task[..., Any], task_run: TaskRun | None, state: State[Any]) -> bool:
    """Prefect's retry condition: retry a failed prefetch only for a TransientSourceError."""
    return isinstance(state.result(raise_on_failure=False), TransientSourceError)


# Retries for transient failures only (a source's or a store's 429, 5xx, timeouts, resets):
# the prefetch, produce and write tasks all take these.
TRANSIENT_RETRIES: dict[str, Any] = {
    "retries": PREFETCH_RETRIES,
    "retry_delay_seconds": exponential_backoff(backoff_factor=PREFETCH_BACKOFF_S),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_if_transient,
}


@task(
    name="prefetch",
    # Short and distinct in the UI: the chunk, and which imagery (`c00012 sentinel-2-l2a 32px 10m`).
    task_run_name="prefetch {chunk.label} {config.sensor} {config.patch_px}px "
    "{config.resolution_m:g}m",
    **TRANSIENT_RETRIES,
    cache_policy=while_present(bands_present),
)
def prefetch_task(
    chunk: Chunk,
    bands: Sequence[str],
    config: SensorConfig,
    inputs_path: str,
    *,
    refresh: bool = False,
) -> PrefetchReport:
    report = prefetch_chunk(
        get_source(config.source), chunk, bands, config, inputs_path, refresh=refresh
    )
    return dataclasses.replace(report, retries=max(0, prefect.runtime.task_run.run_count - 1))
