"""Model-backed products: a chunk's patches through one model, tile-flattened and batched.

Models are loaded once per worker process and kept; forwards on one device run one at a
time in a process, so threads never fight over a GPU (or the CPU's cores).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from embedders import registry
from embedders.engine import embed_patches
from embedders.naming import given, setting
from embedders.pixels import PixelSeries, embed_series
from embedders.precision import PrecisionError, check_precision
from embedders.spec import (
    Embedder,
    InferenceOptions,
    ModelSpec,
    Status,
    WeightsChoice,
    WeightsInfo,
)
from embedders.tile_series import embed_tile_series
from embedders.tiling import grid_shape
from embedders.weights import WeightsUnavailable
from tasks.inputs import check_same_grid, read_stacks
from tasks.products.product import Fetch, ProductError, ProductRequest, fetches_of, identity_key
from tasks.products.registry import model_facts
from tasks.results import ChunkResult, DeviceTiming, ModelOutput
from tasks.series import Series, read_series
from tasks.sources.registry import SensorConfig

if TYPE_CHECKING:
    from tasks.plan.chunks import Chunk


@dataclass(frozen=True)
class ModelProduct:
    """A model-backed product: imagery from the inputs store through the tile-flattened engine.

    Everything its values depend on is here; `weights` is resolved once by the flow (the
    model is loaded to learn whether pretrained weights are there), never "auto".
    """

    name: str
    config: SensorConfig
    options: InferenceOptions
    weights: WeightsInfo
    device: str  # "cpu" or "cuda"
    precision_check: dict[str, object] | None = None  # the guard's report (bf16/fp16)
    uses_device: bool = True
    # the configurations of the other sensors it reads (ModelSpec.more_sensors), in order
    more_configs: tuple[SensorConfig, ...] = ()

    @property
    def spec(self) -> ModelSpec:
        return registry.get_spec(self.name)

    @property
    def fetches(self) -> tuple[Fetch, ...]:
        more = zip(self.more_configs, self.spec.more_sensors, strict=True)
        return (Fetch(self.config, self.spec.bands), *(Fetch(c, b) for c, (_, b) in more))

    def identity(self) -> dict[str, Any]:
        more = [c.identity() for c in self.more_configs]
        return {
            "product": "model",
            "model": self.spec.identity(),
            "weights": {"kind": self.weights.kind, "identity": self.weights.identity},
            "sensor": self.config.identity(),
            "inference": self.options.identity(),
        } | ({"more_sensors": more} if more else {})

    def key(self) -> str:
        more = [c.key() for c in self.more_configs]
        return identity_key(self.name, self.identity(), self.config.key(), *more)

    def output(self) -> ModelOutput:
        spec = self.spec
        grid = None
        if self.options.output == "grid":
            n = self.config.patch_px
            grid = (n, n) if spec.takes == "pixel-series" else grid_shape(spec, self.options, n, n)
        provenance = {
            "weights_file": self.weights.file,
            "weights_note": self.weights.note,
            "device": self.device,
            "source": self.config.source,
            "catalog": self.config.catalog,
            "description": spec.description,
            "precision_check": self.precision_check,
            "model_url": self._model_url(),
        }
        facts = dataclasses.replace(model_facts(spec), url=self._model_url())
        patch = self.config.patch_px
        return ModelOutput(
            self.name, spec.embed_dim, grid, self.identity(), provenance, facts, patch
        )

    def _model_url(self) -> str:
        """The weights' URL; a URN naming the seed for random weights (no model's values)."""
        if self.weights.kind != "pretrained":
            return f"urn:swath:random-weights:{self.name}:{self.weights.identity}"
        return self.spec.weights_url

    def describe(self) -> str:
        check = self.precision_check
        if not check:
            return self.weights.describe()
        layers = check["fp32_layers"]
        kept = ", ".join(str(x) for x in layers) if isinstance(layers, list) else ""
        return (
            f"{self.weights.describe()}; {check['precision']} checked on {check['device']}: "
            f"cosine to fp32 {float(str(check['cosine'])):.5f}, layers kept in fp32: "
            f"{kept or 'none'}"
        )

    def warning(self) -> str | None:
        if self.weights.kind == "random":
            return f"RANDOM WEIGHTS for {self.name}: {self.weights.describe()}"
        return None

    def produce(self, chunk: Chunk, inputs_path: str) -> ChunkResult:
        def model(device: str) -> Embedder:
            return load_model(self.name, self.weights.kind, device)

        if self.spec.takes != "tiles":
            series = SeriesWork(model, self.fetches, self.options, self.device)
            return infer_series_chunk(series, chunk, inputs_path)
        main, *more = self.fetches
        work = InferWork(model, main.bands, main.config, self.options, self.device, tuple(more))
        return infer_chunk(work, chunk, inputs_path)


@dataclass(frozen=True)
class InferWork:
    """What the infer stage needs to run a model over a chunk: the model on a device (built
    once per process and device), the bands it takes, where its imagery is, how to run it."""

    model: Callable[[str], Embedder]
    bands: tuple[str, ...]
    config: SensorConfig
    options: InferenceOptions
    device: str  # "cpu" or "cuda"
    # the other sensors it reads, each with its bands (ModelSpec.more_sensors), in order
    more: tuple[Fetch, ...] = ()


def infer_chunk(work: InferWork, chunk: Chunk, inputs_path: str) -> ChunkResult:
    """A chunk through a model, as the export's produce task runs it.

    The chunk's patches are read from the inputs store and staged (in pinned memory for a
    GPU) before a device is taken, so that they are ready while the device runs another
    chunk; then the tile-flattened engine, and a source's notes as the reason of a point
    without data. A model that reads several sensors gets their bands side by side in its
    channel order; a pixel is valid where every channel is (embedders.cutting)."""
    cuda = work.device == "cuda"
    sensors = [(work.config, work.bands), *((f.config, f.bands) for f in work.more)]
    patches, notes = read_stacks(inputs_path, sensors, chunk, pin=cuda)
    if work.device == "cpu":
        _check_cpu_threads()
    with device_pool(work.device).take() as device:
        start = time.time()
        out = embed_patches(work.model(device), patches, work.options, torch.device(device))
        timing = DeviceTiming(device, out.forward_s, start, time.time(), socket.gethostname())
    reasons = list(out.reason)
    for i, p in enumerate(chunk.points):
        if out.status[i] == Status.NODATA and p.id in notes:
            reasons[i] = notes[p.id]
    embeddings = out.grid if out.grid is not None else out.pooled
    return ChunkResult(embeddings, out.status, reasons, out.valid_fraction, timing=timing)


@dataclass(frozen=True)
class SeriesWork:
    """What the infer stage needs to run a pixel-series model over a chunk: the model on a
    device, its fetches (one per sensor, in the spec's sensor order), how to run it."""

    model: Callable[[str], Embedder]
    fetches: tuple[Fetch, ...]
    options: InferenceOptions
    device: str  # "cpu" or "cuda"


def infer_series_chunk(work: SeriesWork, chunk: Chunk, inputs_path: str) -> ChunkResult:
    """A chunk through a time-series model: each sensor's time series read from the inputs
    store (tasks/series.py), its bands side by side in the spec's channel order, each step at
    its day of year (`Series.day_of_year`); then the pixel engine (embedders/pixels.py), or
    for a model taking tiles of the series the tile-series engine (embedders/tile_series.py)."""
    series = [read_series(inputs_path, f.config, chunk, f.bands) for f in work.fetches]
    values = np.concatenate([s.values for s in series], axis=2)
    doy = np.stack([s.day_of_year for s in series], axis=1).astype(np.float32)
    latlon = np.array([[p.lat, p.lon] for p in chunk.points], dtype=np.float32).reshape(-1, 2)
    if work.device == "cpu":
        _check_cpu_threads()
    with device_pool(work.device).take() as device:
        start = time.time()
        model = work.model(device)
        if model.spec.takes == "tile-series":
            dev = torch.device(device)
            out = embed_tile_series(model, values, doy[:, 0], work.options, dev)
        else:
            pixels = PixelSeries(values, doy, latlon)
            out = embed_series(model, pixels, work.options, torch.device(device))
        timing = DeviceTiming(device, out.forward_s, start, time.time(), socket.gethostname())
    reasons = list(out.reason)
    for i, p in enumerate(chunk.points):
        why = _series_notes(p.id, work.fetches, series)
        if out.status[i] == Status.NODATA and why:
            reasons[i] = why
    embeddings = out.grid if out.grid is not None else out.pooled
    return ChunkResult(embeddings, out.status, reasons, out.valid_fraction, timing=timing)


def _series_notes(point: str, fetches: Sequence[Fetch], series: Sequence[Series]) -> str:
    """Why a point has no data, per sensor that has none in any step."""
    notes = [(f.config.sensor, s.notes().get(point)) for f, s in zip(fetches, series, strict=True)]
    return "; ".join(f"{sensor}: {why}" for sensor, why in notes if why)


@functools.cache
def _check_cpu_threads() -> None:
    """Say once per process when torch runs on one thread where the process may use more
    cores (Dask's nanny sets OMP_NUM_THREADS=1 in every worker)."""
    cores = len(os.sched_getaffinity(0))
    if torch.get_num_threads() == 1 < cores:
        logging.getLogger(__name__).warning(
            "torch runs on 1 thread in this process although %d cores are available to it "
            "(OMP_NUM_THREADS=%s); unless other workers share this machine's cores, give "
            "this worker its cores (README, Scale out with Dask)",
            cores,
            os.environ.get("OMP_NUM_THREADS", "unset"),
        )


def resolve_model(name: str, request: ProductRequest) -> ModelProduct:
    """The model `name` as this run runs it; loads it once to resolve its weights (the loaded
    model stays cached for the first infer, on the device it will run on)."""
    spec = registry.get_spec(name)
    if request.options.tile_overlap_px >= spec.tile_px:
        raise ProductError(
            f"{given(tile_overlap_px=request.options.tile_overlap_px)} is not smaller than "
            f"{name}'s "
            f"tile ({spec.tile_px} px); use a smaller overlap"
        )
    if spec.steps is not None and spec.takes == "tiles":
        raise ProductError(
            f"{name} takes a time series ({spec.steps.describe()}), and swath's engine runs "
            "tile models of one composite a point only: its inputs can be prefetched "
            f"(tasks/series.py), but no run produces it yet; leave it out of {setting('models')}"
        )
    fetch, *more = fetches_of(name, model_facts(spec), request)
    if more and spec.takes != "pixel-series":
        try:
            check_same_grid([fetch.config, *(f.config for f in more)])
        except ValueError as e:
            raise ProductError(f"{name}: {e}") from e
    device = devices_of(request.device)[0]
    try:
        embedder = load_model(name, request.weights, device)
        check = None
        if request.options.precision != "fp32":  # once per process, before any chunk
            report = check_precision(embedder, request.options.precision, torch.device(device))
            check = report.as_dict()
    except (WeightsUnavailable, PrecisionError, ValueError) as e:
        raise ProductError(str(e)) from e
    configs = tuple(f.config for f in more)
    return ModelProduct(
        name,
        fetch.config,
        request.options,
        embedder.weights,
        request.device,
        check,
        more_configs=configs,
    )


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
            f"{given(device='cuda')} was asked for but torch sees no CUDA device; use "
            f"{given(device='cpu')}"
        )
    return choice
