"""Infer: a chunk's patches through one model, tile-flattened and batched, into the results store.

Models are loaded once per worker process and kept; forwards on one device run one at a
time in a process, so threads never fight over a GPU (or the CPU's cores).
"""

import hashlib
import json
import queue
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import zarr
from prefect import task

from embedders import registry
from embedders.engine import embed_images
from embedders.spec import Embedder, InferenceOptions, Status, WeightsChoice
from tasks.caching import while_present
from tasks.plan import Chunk
from tasks.prefetch import read_patches
from tasks.sources import SensorConfig
from tasks.store import ChunkResult


@dataclass(frozen=True)
class ModelRun:
    """One model as this export runs it: everything its results depend on, and where it runs."""

    model: str
    config: SensorConfig
    options: InferenceOptions
    weights: WeightsChoice  # resolved once by the flow: "pretrained" or "random", never "auto"
    weights_identity: str
    device: str

    def identity(self) -> dict[str, object]:
        opts = asdict(self.options)
        del opts["batch_size"]
        return {
            "spec": asdict(registry.get_spec(self.model)),
            "weights": {"kind": self.weights, "identity": self.weights_identity},
            "sensor": asdict(self.config),
            "inference": opts,
        }

    @property
    def key(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, default=str).encode()
        return f"{self.model}-{hashlib.sha256(blob).hexdigest()[:12]}"


_models: dict[tuple[str, str, str], Embedder] = {}
_models_lock = threading.Lock()


class DevicePool:
    """The devices of one kind in this process, each running one infer at a time: with N
    GPUs, N infer tasks run at once, each pinned to its own GPU, and no more; on the CPU,
    one (the forward already uses every core)."""

    def __init__(self, devices: Sequence[str]) -> None:
        if not devices:
            raise ValueError("a device pool needs at least one device")
        self.devices = tuple(devices)
        self._free: queue.SimpleQueue[str] = queue.SimpleQueue()
        for device in devices:
            self._free.put(device)

    @contextmanager
    def take(self) -> Iterator[str]:
        """Wait for a free device and hold it."""
        device = self._free.get()
        try:
            yield device
        finally:
            self._free.put(device)


_pools: dict[str, DevicePool] = {}
_pools_lock = threading.Lock()


def devices_of(kind: str) -> list[str]:
    """The devices an infer of `kind` ("cpu" or "cuda") may run on in this process. A Dask
    worker pinned to one GPU (CUDA_VISIBLE_DEVICES) sees just that one."""
    if kind == "cuda":
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [kind]


def device_pool(kind: str) -> DevicePool:
    with _pools_lock:
        if kind not in _pools:
            _pools[kind] = DevicePool(devices_of(kind))
        return _pools[kind]


def load_model(name: str, weights: WeightsChoice, device: str) -> Embedder:
    """The model, built once per process and kept for every later chunk.

    A model built with "auto" is also kept under the weights it resolved to, so the infer
    stage, which asks for the resolved kind, finds it.
    """
    with _models_lock:
        key = (name, weights, device)
        if key not in _models:
            model = registry.build(name, weights, torch.device(device))
            _models[key] = _models[(name, model.weights.kind, device)] = model
        return _models[key]


def resolve_device(choice: str) -> str:
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "--device cuda was asked for but torch sees no CUDA device; use --device cpu"
        )
    return choice


def infer_chunk(
    run: ModelRun, chunk: Chunk, inputs_path: str, results_path: str, *, refresh: bool = False
) -> str:
    """Embed every point of `chunk` with `run`'s model; returns the result group's path.

    Results already complete are kept unless `refresh`.
    """
    group_path = f"{run.key}/{chunk.key}"
    if not refresh and result_complete(results_path, group_path):
        return group_path
    bands = registry.get_spec(run.model).bands
    patches = read_patches(inputs_path, run.config, chunk, bands)
    images = [
        np.stack([patches.bands[b][i] for b in bands]).astype("float32", copy=False)
        for i in range(len(chunk.points))
    ]
    with device_pool(run.device).take() as device:
        embedder = load_model(run.model, run.weights, device)
        out = embed_images(embedder, images, run.options, torch.device(device))
    reasons = list(out.reason)
    for i, p in enumerate(chunk.points):
        if out.status[i] == Status.NODATA and p.id in patches.notes:
            reasons[i] = patches.notes[p.id]
    embeddings = out.grid if out.grid is not None else out.pooled
    save_result(
        results_path, group_path, ChunkResult(embeddings, out.status, reasons, out.valid_fraction)
    )
    return group_path


def save_result(results_path: str, group_path: str, result: ChunkResult) -> None:
    group = zarr.open_group(results_path, mode="a").require_group(group_path)
    for name, arr in (
        ("embeddings", result.embeddings.astype("float32")),
        ("status", result.status.astype("int8")),
        ("valid_fraction", result.valid_fraction.astype("float32")),
    ):
        group.create_array(name, shape=arr.shape, dtype=arr.dtype, overwrite=True)[...] = arr
    group.attrs.update({"reason": list(result.reason), "complete": True})


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
            f"results {group_path} in {results_path} are not complete; rerun infer"
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
    return result_complete(p["results_path"], f"{p['run'].key}/{p['chunk'].key}")


@task(
    name="infer",
    task_run_name="infer {run.model} {chunk.key}",
    cache_policy=while_present(_results_present),
)
def infer_task(
    run: ModelRun, chunk: Chunk, inputs_path: str, results_path: str, *, refresh: bool = False
) -> str:
    return infer_chunk(run, chunk, inputs_path, results_path, refresh=refresh)
