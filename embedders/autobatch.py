"""`batch_size="auto"`: the largest batch that fits the device's free memory, measured.

The probe runs the model on random tiles at two small batch sizes (after one warm-up
forward), measures the peak memory of each forward and fits
peak = fixed + per_tile * batch. The batch size is the largest whose peak, plus the
batches staged ahead of the forward, fits the available memory with HEADROOM to spare,
capped. It is measured once per (model, device, precision, tile size) in a process and
cached; an out-of-memory backoff during inference lowers the cached value.
"""

import contextlib
import ctypes
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import psutil
import torch

from embedders.batching import STAGED_BATCHES, device_of, precision_context
from embedders.spec import Embedder, InferenceOptions, Precision

log = logging.getLogger(__name__)

HEADROOM = 0.2  # share of available memory left unused: fragmentation, other processes
# A batch of 512 ViT-B/16 tiles keeps any current GPU busy for tens of milliseconds, long
# enough to hide per-batch overheads; larger batches only add memory risk.
CUDA_CAP = 512
# On CPU a batch only has to keep the cores busy; beyond that its activations fall out of
# the caches. timm ViT-B/16, 12 bands, 224 px, 2 cores (AMD EPYC, AVX512-BF16), tiles/s at
# batch 1/4/8/16/32: fp32 4.45/5.14/5.21/4.82/4.83, bf16 13.4/15.8/16.1/16.0/14.5.
CPU_CAP = 8
PROBE_BATCHES = (1, 4)  # two small batch sizes: cheap, and far enough apart to fit a slope


class MemoryGauge(Protocol):
    """Where the probe's numbers come from: the device, or a stand-in in tests."""

    def available(self) -> int:
        """Bytes that forwards may still use."""
        ...

    def peak(self, run: Callable[[], object]) -> int:
        """Peak bytes in use while `run` runs, above the level just before it."""
        ...


@dataclass(frozen=True)
class CudaGauge:
    """CUDA memory through torch's allocator statistics and the driver's free memory."""

    device: torch.device

    def available(self) -> int:
        free, _ = torch.cuda.mem_get_info(self.device)
        # Memory torch has cached but not handed out counts as used to the driver.
        cached = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        return free + cached

    def peak(self, run: Callable[[], object]) -> int:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        run()
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device) - base


class HostGauge:
    """Host memory: available RAM, and the process's peak resident set.

    On Linux the kernel's own peak (VmHWM) is reset before the run and read after it,
    with freed heap pages handed back to the system first (glibc's malloc_trim) so the
    level before the run is the memory in use. Elsewhere a thread samples the resident
    set every millisecond.
    """

    def available(self) -> int:
        return int(psutil.virtual_memory().available)

    def peak(self, run: Callable[[], object]) -> int:
        _trim_heap()
        base = psutil.Process().memory_info().rss
        if _reset_peak_rss():
            run()
            return _peak_rss() - base
        return _sampled_peak(run) - base


def _trim_heap() -> None:
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to hand back
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux >= 4.0: reset VmHWM to the current resident set
    except OSError:
        return False
    return True


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmHWM line; cannot measure peak memory")


def _sampled_peak(run: Callable[[], object]) -> int:
    proc, peak, done = psutil.Process(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, name="swath-rss", daemon=True)
    sampler.start()
    try:
        run()
    finally:
        done.set()
        sampler.join()
    return max(peak[0], proc.memory_info().rss)


@dataclass(frozen=True)
class Probe:
    """The measured memory of one forward: fixed + per_tile * batch, in bytes."""

    fixed: int
    per_tile: int

    @classmethod
    def fit(cls, sizes: tuple[int, int], peaks: tuple[int, int]) -> "Probe":
        (n1, n2), (p1, p2) = sizes, peaks
        per_tile = max((p2 - p1) // (n2 - n1), 0)
        return cls(max(p1 - per_tile * n1, 0), per_tile)


def fit_batch_size(probe: Probe, available: int, *, tile_bytes: int, cap: int) -> int:
    """The largest batch whose forward and staged input batches fit `available` with
    HEADROOM to spare; at least 1 (the out-of-memory backoff names a model that does not
    fit at all), at most `cap`. Each tile costs at least its own input."""
    per_tile = max(probe.per_tile, tile_bytes) + STAGED_BATCHES * tile_bytes
    budget = int(available * (1 - HEADROOM)) - probe.fixed
    return max(1, min(cap, budget // per_tile))


def _gauge(device: torch.device) -> MemoryGauge:
    if device.type == "cuda":
        return CudaGauge(device)
    if device.type == "cpu":
        return HostGauge()
    raise ValueError(
        f"batch_size 'auto' measures memory on cpu and cuda only, not {device}; "
        "pass an integer batch size"
    )


def measure(
    embedder: Embedder, precision: Precision, device: torch.device, gauge: MemoryGauge
) -> Probe | None:
    """Peak memory of forwards at PROBE_BATCHES; None if the larger one runs out of memory."""
    spec = embedder.spec
    shape = spec.sample_shape()
    generator = torch.Generator().manual_seed(0)

    def forward(n: int) -> Callable[[], object]:
        def run() -> object:
            tiles = torch.randn((n, *shape), generator=generator).to(device)
            with torch.inference_mode(), precision_context(precision, device):
                return embedder.forward(tiles)

        return run

    peaks: list[int] = []
    try:
        forward(1)()  # warm-up: one-off allocations are not the model's memory
        for n in PROBE_BATCHES:
            peaks.append(gauge.peak(forward(n)))
    except torch.OutOfMemoryError as e:
        if peaks:
            return None
        raise torch.OutOfMemoryError(
            f"model {spec.name}: out of memory probing a batch of one tile on {device}; "
            "free device memory, use a device with more memory or a smaller model"
        ) from e
    except Exception as e:
        raise RuntimeError(
            f"model {spec.name}: the batch-size probe's forward on random tiles failed; "
            "pass an integer batch size to skip the probe"
        ) from e
    return Probe.fit(PROBE_BATCHES, (peaks[0], peaks[1]))


def probe_batch_size(
    embedder: Embedder,
    options: InferenceOptions,
    device: torch.device,
    *,
    gauge: MemoryGauge | None = None,
) -> int:
    """Measure and fit the batch size "auto" stands for (uncached; see resolve_batch_size)."""
    device = device_of(device)
    gauge = gauge or _gauge(device)
    spec = embedder.spec
    probe = measure(embedder, options.precision, device, gauge)
    if probe is None:
        log.warning(
            "model %s on %s: a batch of %d tiles runs out of memory; batch size auto = 1",
            *(spec.name, device, PROBE_BATCHES[1]),
        )
        return 1
    available = gauge.available()
    cap = CUDA_CAP if device.type == "cuda" else CPU_CAP
    tile_bytes = 4 * math.prod(spec.sample_shape())
    size = fit_batch_size(probe, available, tile_bytes=tile_bytes, cap=cap)
    log.info(
        "model %s on %s (%s): a forward takes %.0f MiB + %.1f MiB per tile, %.0f MiB are "
        "available; batch size auto = %d",
        *(spec.name, device, options.precision, probe.fixed / 2**20, probe.per_tile / 2**20),
        *(available / 2**20, size),
    )
    return size


_Key = tuple[str, int, int, str, str]
_resolved: dict[_Key, int] = {}
_lock = threading.Lock()


def _key(embedder: Embedder, options: InferenceOptions, device: torch.device) -> _Key:
    spec = embedder.spec
    return (
        spec.name,
        spec.tile_px,
        len(spec.channels()),
        str(device_of(device)),
        options.precision,
    )


def resolve_batch_size(embedder: Embedder, options: InferenceOptions, device: torch.device) -> int:
    """The batch size to run with: `options.batch_size`, or for "auto" the probed value,
    measured once per (model, device, precision, tile size) in this process."""
    size = options.batch_size
    if size != "auto":
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"batch_size must be an integer >= 1 or 'auto', got {size!r}")
        return size
    key = _key(embedder, options, device)
    with _lock:
        if key not in _resolved:
            _resolved[key] = probe_batch_size(embedder, options, device)
        return _resolved[key]


def lower_auto_batch_size(
    embedder: Embedder, options: InferenceOptions, device: torch.device, size: int
) -> None:
    """After an out-of-memory backoff, keep the smaller size for later calls (auto only)."""
    if options.batch_size != "auto":
        return
    key = _key(embedder, options, device)
    with _lock:
        if size < _resolved.get(key, size + 1):
            _resolved[key] = size


def forget_batch_sizes() -> None:
    """Drop every cached "auto" batch size (the next call probes again)."""
    with _lock:
        _resolved.clear()
