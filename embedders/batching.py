"""Batches of tiles through a model: built ahead in a background thread, staged on the
device, run with out-of-memory backoff and failure isolation.

A producer thread turns a stream of (ref, writer) into batches of `plan.batch_size`
tiles: each writer fills its tile's slot of a host buffer (pinned on CUDA, reused from
batch to batch) which, on CUDA, is sent to the device on a side stream. It runs up to
`PREFETCH_DEPTH` batches ahead of the forward, so cutting and copying the next batch
overlaps the current forward. The caller's thread runs the forwards in stream order; on
CUDA it reads a batch's outputs back only after the next batch is launched, so the host's
work on outputs overlaps the device's work too.
"""

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from embedders.spec import Embedder, Precision

log = logging.getLogger(__name__)

# Batches built ahead of the forward. Two hide the preparation of the next batch behind a
# forward that takes at least as long; each costs one batch of input memory.
PREFETCH_DEPTH = 2


# Writes one tile, as the model takes it, into a (C, T, T) float32 slot of a batch.
TileWriter = Callable[[np.ndarray], None]


@dataclass
class BatchPlan:
    """How a tile stream is batched. `batch_size` is lowered in place on out-of-memory."""

    batch_size: int
    device: torch.device
    tile_shape: tuple[int, int, int]  # (C, T, T)
    what: str  # names the model in messages, e.g. "model dofa_base"


@dataclass(frozen=True)
class Failure:
    """A tile whose forward raised; the reason is "<exception type>: <message>"."""

    reason: str


Outcome = tuple[np.ndarray, np.ndarray | None] | Failure


@dataclass
class Launched:
    """The outputs of one forward, on their way to host memory (`done` fires on arrival)."""

    pooled: torch.Tensor
    grid: torch.Tensor | None
    done: torch.cuda.Event | None = None

    def outcomes(self) -> list[Outcome]:
        if self.done is not None:
            self.done.synchronize()
        pooled = self.pooled.numpy()
        grid = None if self.grid is None else self.grid.numpy()
        return [(pooled[k], None if grid is None else grid[k]) for k in range(len(pooled))]


Forward = Callable[[torch.Tensor], Launched]


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
    """Run one forward; on CUDA start copying its float32 outputs to pinned host memory."""
    pooled, grid = embedder.forward(tiles)
    outputs = [pooled.float(), grid.float()] if want_grid else [pooled.float()]
    if tiles.device.type != "cuda":
        return Launched(outputs[0], outputs[1] if want_grid else None)
    host = [
        torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True)
        for t in outputs
    ]
    done = torch.cuda.Event()
    done.record()
    return Launched(host[0], host[1] if want_grid else None, done)


def device_of(device: torch.device) -> torch.device:
    """`cuda` as the current CUDA device of this thread (`cuda:N`), other devices as they are.

    A new thread's current CUDA device is 0, so a bare `cuda` must be resolved in the
    caller's thread before the producer thread uses it.
    """
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


@dataclass
class _Buffer:
    """Host memory for one batch, reused: `free_after` fires when the device is done
    reading it (CUDA)."""

    tensor: torch.Tensor  # (capacity, C, T, T) float32; pinned on CUDA
    free_after: torch.cuda.Event | None = None


@dataclass
class _Staged[R]:
    refs: list[R]
    buffer: _Buffer
    host: torch.Tensor  # the batch: the first len(refs) tiles of the buffer
    on_device: torch.Tensor | None = None  # the same tiles on the device (CUDA), if copied
    ready: torch.cuda.Event | None = None  # fires when `on_device` has arrived


@dataclass(frozen=True)
class _End:
    pass


@dataclass(frozen=True)
class _Raised:
    error: BaseException


class _Producer[R]:
    """Builds batches from a tile stream in a background thread, PREFETCH_DEPTH ahead.

    Exceptions raised while building (by the tile stream too) are raised again from
    iteration, in the caller's thread. Leaving the context stops the thread.
    """

    def __init__(self, tiles: Iterator[tuple[R, TileWriter]], plan: BatchPlan) -> None:
        self._tiles = tiles
        self._plan = plan
        self._cuda = plan.device.type == "cuda"
        self._stream = torch.cuda.Stream(plan.device) if self._cuda else None
        self._queue: queue.Queue[_Staged[R] | _End | _Raised] = queue.Queue(PREFETCH_DEPTH)
        self._free: queue.SimpleQueue[_Buffer] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="swath-batches", daemon=True)

    def __enter__(self) -> "_Producer[R]":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Empty):
            while True:  # unblock a pending put and free staged batches
                self._queue.get_nowait()
        self._thread.join()

    def __iter__(self) -> Iterator[_Staged[R]]:
        while True:
            item = self._queue.get()
            if isinstance(item, _End):
                return
            if isinstance(item, _Raised):
                raise item.error
            yield item

    def _produce(self) -> None:
        # A new thread's current CUDA device is 0: pin memory and copy from the plan's
        # device's context, not device 0's.
        on_device = torch.cuda.device(self._plan.device) if self._cuda else contextlib.nullcontext()
        try:
            with torch.inference_mode(), on_device:
                for batch in self._batches():
                    if not self._put(batch):
                        return
            self._put(_End())
        except BaseException as e:  # handed to the consumer, which raises it
            self._put(_Raised(e))

    def release(self, batch: _Staged[R]) -> None:
        """Hand a batch's buffer back for reuse, once the forwards reading it are queued."""
        if self._cuda:
            batch.buffer.free_after = torch.cuda.Event()
            batch.buffer.free_after.record(torch.cuda.current_stream(self._plan.device))
        self._free.put(batch.buffer)

    def _buffer(self, size: int) -> _Buffer:
        with contextlib.suppress(queue.Empty):
            buffer = self._free.get_nowait()
            if len(buffer.tensor) >= size:
                if buffer.free_after is not None:
                    buffer.free_after.synchronize()
                return buffer
        shape = (max(size, self._plan.batch_size), *self._plan.tile_shape)
        return _Buffer(torch.empty(shape, dtype=torch.float32, pin_memory=self._cuda))

    def _batches(self) -> Iterator[_Staged[R]]:
        pending: list[tuple[R, TileWriter]] = []
        for item in self._tiles:
            pending.append(item)
            if len(pending) >= self._plan.batch_size:
                yield self._stage(pending)
                pending = []
        if pending:
            yield self._stage(pending)

    def _stage(self, items: list[tuple[R, TileWriter]]) -> _Staged[R]:
        buffer = self._buffer(len(items))
        host = buffer.tensor[: len(items)]
        slots = host.numpy()
        for k, (_, write) in enumerate(items):
            write(slots[k])  # the one copy of each tile, straight into the batch
        staged = _Staged([ref for ref, _ in items], buffer, host)
        if self._stream is not None:
            try:
                with torch.cuda.stream(self._stream):
                    staged.on_device = host.to(self._plan.device, non_blocking=True)
                    staged.ready = torch.cuda.Event()
                    staged.ready.record(self._stream)
            except torch.OutOfMemoryError:  # the forward copies it, under its OOM backoff
                log.info("%s: no device memory to stage a batch ahead", self._plan.what)
        return staged

    def _put(self, item: _Staged[R] | _End | _Raised) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False


def _on_device[R](batch: _Staged[R], start: int, stop: int, device: torch.device) -> torch.Tensor:
    if batch.on_device is not None:
        return batch.on_device[start:stop]
    return batch.host[start:stop].to(device, non_blocking=True)


def _receive[R](batch: _Staged[R], device: torch.device) -> None:
    """Make the forward's stream wait for a batch copied on the side stream."""
    if batch.on_device is not None and batch.ready is not None:
        stream = torch.cuda.current_stream(device)
        stream.wait_event(batch.ready)
        batch.on_device.record_stream(stream)


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


def _run[R](
    batch: _Staged[R], forward: Forward, plan: BatchPlan
) -> Iterator[tuple[list[R], list[Launched | Failure]]]:
    """A staged batch in parts of at most `plan.batch_size` tiles; on out-of-memory the
    batch size halves and the same tiles run again, so no tile is lost or done twice."""
    pos = 0
    while pos < len(batch.refs):
        size = min(plan.batch_size, len(batch.refs) - pos)
        try:
            pieces = _isolate(forward, _on_device(batch, pos, pos + size, plan.device))
        except torch.OutOfMemoryError as e:
            _back_off(plan, size, e)
            continue
        yield batch.refs[pos : pos + size], pieces
        pos += size


def _finish[R](refs: list[R], pieces: list[Launched | Failure]) -> Iterator[tuple[R, Outcome]]:
    outcomes: list[Outcome] = []
    for piece in pieces:
        outcomes += piece.outcomes() if isinstance(piece, Launched) else [piece]
    yield from zip(refs, outcomes, strict=True)


def run_batches[R](
    tiles: Iterator[tuple[R, TileWriter]], forward: Forward, plan: BatchPlan
) -> Iterator[tuple[R, Outcome]]:
    """The outcome of every tile of the stream, in stream order.

    `tiles` is consumed in a background thread; `forward` runs in the caller's thread
    (inside its inference mode and autocast). Batches are full except the last one and
    after an out-of-memory backoff. Outputs must not be views of the input tiles.
    """
    if plan.batch_size < 1:
        raise ValueError(f"{plan.what}: batch_size must be >= 1, got {plan.batch_size}")
    plan.device = device_of(plan.device)
    previous: tuple[list[R], list[Launched | Failure]] | None = None
    with _Producer(tiles, plan) as producer:
        for batch in producer:
            _receive(batch, plan.device)
            for part in _run(batch, forward, plan):
                if previous is not None:  # read back once the next forward is launched
                    yield from _finish(*previous)
                previous = part
            producer.release(batch)
    if previous is not None:
        yield from _finish(*previous)
