"""Prefetch: a chunk's imagery, fetched once per sensor configuration, into the inputs store.

Layout of the inputs store (Zarr v3), one group per sensor configuration and chunk:

    <inputs_path>/<config.key()>/              attrs: {"config": {...the SensorConfig...}}
    <inputs_path>/<config.key()>/<chunk.key>/  attrs: {"point_ids": [...], "notes": {id: why},
                                                       "bands_done": [band, ...]}
    <inputs_path>/<config.key()>/<chunk.key>/<band>   (n_points, N, N) float32, NaN = masked

A band counts as present only once its name is in `bands_done`, which is written after the
array: a prefetch that dies half way leaves a band that the next run fetches again.
Prefetches of different chunks may run at once (threads or processes); one chunk of one
configuration is prefetched by one task at a time.
"""

import dataclasses
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import prefect.runtime.task_run
import zarr
import zarr.errors
from prefect import State, Task, task
from prefect.client.schemas.objects import TaskRun
from prefect.tasks import exponential_backoff

from tasks.caching import while_present
from tasks.chunks import Chunk
from tasks.sources import (
    ImagerySource,
    Patches,
    SensorConfig,
    TransientSourceError,
    get_source,
)

# Retries for failures a retry may fix (HTTP 429/5xx, timeouts, resets), after the source's
# own per-request retries: exponential backoff (2, 4, 8, 16, 32 s) with +-50% jitter, so a
# throttled or restarting server has time to recover and workers do not retry in step.
PREFETCH_RETRIES = 5
PREFETCH_BACKOFF_S = 2.0

_chunk_locks: dict[str, threading.Lock] = {}
_chunk_locks_guard = threading.Lock()


class MissingInputsError(LookupError):
    """The inputs store lacks patches that the infer stage asked for."""


@dataclass(frozen=True)
class PrefetchReport:
    chunk: str
    config: str
    fetched: tuple[str, ...]  # bands fetched from the source by this call
    reused: tuple[str, ...]  # bands already in the store
    requests: int = 0  # requests the source made (as it counts them)
    bytes_read: int = 0  # bytes of pixels it received
    retries: int = 0  # attempts of this task that failed transiently before this one


def prefetch_chunk(
    source: ImagerySource,
    chunk: Chunk,
    bands: Sequence[str],
    config: SensorConfig,
    inputs_path: str,
    *,
    refresh: bool = False,
) -> PrefetchReport:
    """Fetch the chunk's bands not yet in the inputs store, in one source call, and store them.

    `refresh` fetches every band again.
    """
    group = _chunk_group(inputs_path, config, chunk)
    done = set() if refresh else set(_list_attr(group, "bands_done"))
    todo = [b for b in dict.fromkeys(bands) if b not in done]
    reused = tuple(b for b in dict.fromkeys(bands) if b in done)
    requests = bytes_read = 0
    if todo:
        patches = source.fetch(chunk.points, todo, config)
        requests, bytes_read = patches.requests, patches.bytes_read
        _check_patches(patches, chunk, todo, config)
        for band in todo:
            data = patches.bands[band].astype(np.float32, copy=False)
            array = group.create_array(
                band,
                shape=data.shape,
                chunks=data.shape,  # one Zarr chunk per band: infer reads the whole chunk
                dtype="float32",
                fill_value=np.nan,
                overwrite=True,
            )
            array[...] = data
        with _lock_for(f"{inputs_path}/{config.key()}/{chunk.key}"):
            notes = {**_dict_attr(group, "notes"), **patches.notes}
            done = set(_list_attr(group, "bands_done")) | set(todo)
            group.attrs.update({"notes": notes, "bands_done": sorted(done)})
    return PrefetchReport(chunk.key, config.key(), tuple(todo), reused, requests, bytes_read)


def read_patches(
    inputs_path: str, config: SensorConfig, chunk: Chunk, bands: Sequence[str]
) -> Patches:
    """The chunk's patches for `bands` from the inputs store, as prefetch_chunk wrote them."""
    where = f"chunk {chunk.key} of sensor configuration {config.key()} in {inputs_path}"
    try:
        group = zarr.open_group(inputs_path, path=f"{config.key()}/{chunk.key}", mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
        raise MissingInputsError(f"{where} has no inputs; run prefetch for it first") from e
    done = _list_attr(group, "bands_done")
    missing = [b for b in bands if b not in done]
    if missing:
        raise MissingInputsError(
            f"{where} lacks band(s) {missing} (it has {done}); run prefetch with these bands"
        )
    point_ids = tuple(_list_attr(group, "point_ids"))
    return Patches(
        point_ids=point_ids,
        bands={b: _read_band(group, b, where) for b in bands},
        notes={k: str(v) for k, v in _dict_attr(group, "notes").items()},
    )


def _chunk_group(inputs_path: str, config: SensorConfig, chunk: Chunk) -> zarr.Group:
    """Open the chunk's group, creating it and its configuration's group if needed."""
    require_group(inputs_path, config.key(), {"config": config.record()})
    point_ids = [p.id for p in chunk.points]
    path = f"{config.key()}/{chunk.key}"
    group = require_group(
        inputs_path, path, {"point_ids": point_ids, "notes": {}, "bands_done": []}
    )
    if _list_attr(group, "point_ids") != point_ids:
        raise ValueError(
            f"inputs group {path} in {inputs_path} holds other points than chunk {chunk.key}; "
            "remove that group and rerun prefetch"
        )
    return group


def require_group(
    store_path: str, path: str, attributes: dict[str, Any] | None = None
) -> zarr.Group:
    """Open a group, or create it with `attributes`; safe when other writers (threads, or
    processes of a Dask cluster) create it, or the store's root, at the same moment."""
    try:
        return zarr.open_group(store_path, path=path, mode="a", attributes=attributes)
    except zarr.errors.ContainsGroupError:  # created by another writer between open and create
        return zarr.open_group(store_path, path=path, mode="r+")


def _check_patches(
    patches: Patches, chunk: Chunk, bands: Sequence[str], config: SensorConfig
) -> None:
    n = config.patch_px
    expected = (len(chunk.points), n, n)
    if patches.point_ids != tuple(p.id for p in chunk.points):
        raise ValueError(f"source returned patches for other points than chunk {chunk.key}")
    for band in bands:
        got = patches.bands[band].shape if band in patches.bands else None
        if got != expected:
            raise ValueError(
                f"source returned band {band} of chunk {chunk.key} with shape {got}, "
                f"expected {expected} (points, patch_px, patch_px)"
            )


def _lock_for(name: str) -> threading.Lock:
    with _chunk_locks_guard:
        return _chunk_locks.setdefault(name, threading.Lock())


def _read_band(group: zarr.Group, band: str, where: str) -> np.ndarray:
    array = group.get(band)
    if not isinstance(array, zarr.Array):
        raise MissingInputsError(f"{where}: band {band} is listed as done but has no array")
    return np.asarray(array[...], dtype=np.float32)


def _list_attr(group: zarr.Group, name: str) -> list[Any]:
    value = group.attrs.get(name)
    return list(value) if isinstance(value, list) else []


def _dict_attr(group: zarr.Group, name: str) -> dict[str, Any]:
    value = group.attrs.get(name)
    return dict(value) if isinstance(value, dict) else {}


def check_source(bands: Sequence[str], config: SensorConfig) -> None:
    """The source's own check that it can serve `bands` for `config` (before any write)."""
    get_source(config.source).check(bands, config)


def retry_if_transient(task: Task[..., Any], task_run: TaskRun | None, state: State[Any]) -> bool:
    """Prefect's retry condition: retry a failed prefetch only for a TransientSourceError."""
    return isinstance(state.result(raise_on_failure=False), TransientSourceError)


def bands_present(parameters: dict[str, Any]) -> bool:
    """Whether a prefetch task's bands are all in the inputs store (for the Prefect cache)."""
    p = parameters
    try:
        group = zarr.open_group(
            p["inputs_path"], path=f"{p['config'].key()}/{p['chunk'].key}", mode="r"
        )
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        return False
    return set(p["bands"]) <= set(_list_attr(group, "bands_done"))


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
    task_run_name="prefetch {chunk.key}",
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
