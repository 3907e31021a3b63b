"""Batches of tiles through a model on its device: full batches from a queue of tiles that
are already there, out-of-memory backoff, failure isolation, and a bound on how far the host
runs ahead of the device.

Tiles reach the queue cut and normalised on the device (embedders.cutting), each with a ref
saying whose tile it is. A batch is the queue's first `batch_size` tiles, whichever images
and blocks they come from. On CUDA nothing here waits for the device: forwards are queued on
the current stream and their outputs stay on the device, so the host prepares the next
batch while the device runs this one; `Pacer` keeps at most IN_FLIGHT batches queued.
"""

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, Self

import torch

from embedders.spec import Embedder, Precision

log = logging.getLogger(__name__)

# Batches queued on the device ahead of the one running: enough that the device never waits
# for the host between two forwards, few enough that their memory stays small.
IN_FLIGHT = 2
# Input tiles alive on the device beside a forward's own memory, in batches: the queue of cut
# tiles, the next block being cut (its float32 pixels and its tiles) and the batch assembled.
STAGED_BATCHES = 4


@dataclass
class BatchPlan:
    """How the tile queue is batched. `batch_size` is lowered in place on out-of-memory."""

    batch_size: int
    device: torch.device
    what: str  # names the model in messages, e.g. "model dofa_base"


@dataclass(frozen=True)
class Failure:
    """A tile whose forward raised; the reason is "<exception type>: <message>"."""

    reason: str


@dataclass
class Launched:
    """The float32 outputs of one forward, on the model's device (maybe still computing)."""

    pooled: torch.Tensor  # (m, D)
    grid: torch.Tensor | None  # (m, D, g, g), when asked for

    def __len__(self) -> int:
        return len(self.pooled)

    def __getitem__(self, part: slice) -> "Launched":
        return Launched(self.pooled[part], None if self.grid is None else self.grid[part])


Forward = Callable[[torch.Tensor], Launched]


class Refs(Protocol):
    """Whose tiles a run of the queue holds: one entry per tile, sliceable."""

    def __len__(self) -> int: ...

    def __getitem__(self, part: slice) -> Self: ...


@contextlib.contextmanager
def _ieee_fp32() -> Iterator[None]:
    """Float32 as IEEE float32 on CUDA. cuDNN runs float32 convolutions in TF32 (a 10-bit
    mantissa) by default, which moves results by ~1e-3 and lets them depend on the batch
    size through the algorithm cuDNN picks for it."""
    # torch.backends.cudnn.conv exists at runtime (torch >= 2.9); the stubs leave it out.
    conv = torch.backends.cudnn.conv  # type: ignore[attr-defined]
    matmul = torch.backends.cuda.matmul
    saved = conv.fp32_precision, matmul.fp32_precision
    conv.fp32_precision = matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved


def precision_context(
    precision: Precision, device: torch.device
) -> contextlib.AbstractContextManager[object]:
    """Autocast for bf16 (CPU and CUDA) and fp16 (CUDA only); IEEE float32 for fp32."""
    if precision == "fp32":
        return _ieee_fp32() if device.type == "cuda" else contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(
            f"precision fp16 needs a CUDA device, got {device}; use bf16 or fp32 on {device.type}"
        )
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def launch(embedder: Embedder, tiles: torch.Tensor, *, want_grid: bool) -> Launched:
    """Run one forward; its outputs as float32, on the device."""
    pooled, grid = embedder.forward(tiles)
    return Launched(pooled.float(), grid.float() if want_grid else None)


def device_of(device: torch.device) -> torch.device:
    """`cuda` as the current CUDA device of this thread (`cuda:N`), other devices as they are."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


# The clock of forwards on the CPU (a test replaces it).
_clock = time.perf_counter


class ForwardClock:
    """Seconds spent in the model's forwards of one call. On the CPU a forward returns when
    it is done: the wall time of each call is added up. On CUDA a forward only queues work:
    two timing events are recorded on the device's stream around it and read once at the
    end (`seconds`), so the batch loop gains no synchronisation."""

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self._seconds = 0.0
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    @contextlib.contextmanager
    def forward(self) -> Iterator[None]:
        if self._device.type != "cuda":
            began = _clock()
            try:
                yield
            finally:
                self._seconds += _clock() - began
            return
        stream = torch.cuda.current_stream(self._device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        try:
            yield
        finally:
            end.record(stream)
            self._events.append((start, end))

    def seconds(self) -> float:
        for start, end in self._events:
            end.synchronize()
            self._seconds += start.elapsed_time(end) / 1000  # milliseconds
        self._events.clear()
        return self._seconds


class TileQueue[R: Refs]:
    """Tiles on the device waiting for a forward, in order, in runs of (tiles, refs)."""

    def __init__(self) -> None:
        self._runs: deque[tuple[torch.Tensor, R]] = deque()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, tiles: torch.Tensor, refs: R) -> None:
        if len(tiles) != len(refs):
            raise ValueError(f"{len(tiles)} tiles with {len(refs)} refs")
        if len(tiles):
            self._runs.append((tiles, refs))
            self._size += len(tiles)

    def take(self, n: int) -> list[tuple[torch.Tensor, R]]:
        """The first `n` tiles (or all there are), as runs."""
        out: list[tuple[torch.Tensor, R]] = []
        while n > 0 and self._runs:
            tiles, refs = self._runs[0]
            m = min(n, len(tiles))
            out.append((tiles[:m], refs[:m]))
            if m == len(tiles):
                self._runs.popleft()
            else:
                self._runs[0] = (tiles[m:], refs[m:])
            self._size -= m
            n -= m
        return out

    def give_back(self, runs: list[tuple[torch.Tensor, R]]) -> None:
        """Put taken runs back at the front, in their order (after an out-of-memory)."""
        for tiles, refs in reversed(runs):
            self._runs.appendleft((tiles, refs))
            self._size += len(tiles)


def _isolate(forward: Forward, tiles: torch.Tensor) -> list[Launched | Failure]:
    """Run a batch; if it raises (other than out-of-memory), split it in halves until the
    failing tiles are found. Returns pieces that cover the tiles in order."""
    try:
        return [forward(tiles)]
    except torch.OutOfMemoryError:
        raise
    except Exception as e:  # a failing tile marks its image FAILED; the others go on
        if len(tiles) == 1:
            return [Failure(f"{type(e).__name__}: {e}")]
        mid = len(tiles) // 2
        return _isolate(forward, tiles[:mid]) + _isolate(forward, tiles[mid:])


def _back_off(plan: BatchPlan, size: int, error: torch.OutOfMemoryError) -> None:
    if size == 1:
        raise torch.OutOfMemoryError(
            f"{plan.what}: out of memory with a batch of one tile; free device memory, "
            "use a device with more memory or a smaller model"
        ) from error
    plan.batch_size = size // 2
    log.warning("%s: out of memory; retrying with batch size %d", plan.what, plan.batch_size)
    if plan.device.type == "cuda":
        torch.cuda.empty_cache()


def _align[R: Refs](
    runs: list[tuple[torch.Tensor, R]], pieces: list[Launched | Failure]
) -> list[tuple[R, Launched | Failure]]:
    """The outputs of a batch cut along the runs it was taken from: (refs, outputs) pairs
    that cover the batch in order."""
    out: list[tuple[R, Launched | Failure]] = []
    queue = deque(refs for _, refs in runs)
    for piece in pieces:
        n, done = (1 if isinstance(piece, Failure) else len(piece)), 0
        while done < n:
            refs = queue.popleft()
            m = min(len(refs), n - done)
            part = piece if isinstance(piece, Failure) else piece[done : done + m]
            out.append((refs[:m], part))
            if m < len(refs):
                queue.appendleft(refs[m:])
            done += m
    return out


def step[R: Refs](
    queue: TileQueue[R], forward: Forward, plan: BatchPlan
) -> list[tuple[R, Launched | Failure]]:
    """One batch of the queue's first `plan.batch_size` tiles through `forward`: the outputs
    along the refs. On out-of-memory the batch size halves and the tiles go back to the
    queue, so no tile is lost or done twice (an empty list says so)."""
    if plan.batch_size < 1:
        raise ValueError(f"{plan.what}: batch_size must be >= 1, got {plan.batch_size}")
    size = min(plan.batch_size, len(queue))
    runs = queue.take(size)
    tiles = runs[0][0] if len(runs) == 1 else torch.cat([t for t, _ in runs])
    try:
        pieces = _isolate(forward, tiles)
    except torch.OutOfMemoryError as e:
        queue.give_back(runs)
        del tiles
        _back_off(plan, size, e)
        return []
    return _align(runs, pieces)


class Pacer:
    """Keeps the host at most IN_FLIGHT batches ahead of a CUDA device (a no-op elsewhere):
    every batch queued on the device holds its tiles' memory until it has run."""

    def __init__(self, device: torch.device) -> None:
        self._cuda = device.type == "cuda"
        self._marks: deque[torch.cuda.Event] = deque()

    def mark(self) -> None:
        """After a batch's work is queued: wait for the oldest batch if too many are."""
        if not self._cuda:
            return
        event = torch.cuda.Event()
        event.record()
        self._marks.append(event)
        while len(self._marks) > IN_FLIGHT:
            self._marks.popleft().synchronize()
