import threading
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from embedders.batching import (
    PREFETCH_DEPTH,
    BatchPlan,
    Failure,
    Launched,
    Outcome,
    TileWriter,
    precision_context,
    run_batches,
)

CPU = torch.device("cpu")


SHAPE = (1, 2, 2)


def _plan(batch_size: int, device: torch.device = CPU) -> BatchPlan:
    return BatchPlan(batch_size, device, SHAPE, "model m")


def _stream(n: int, fail_at: int | None = None) -> Iterator[tuple[int, TileWriter]]:
    """Tiles (1, 2, 2) filled with their own index; raises at tile `fail_at`."""
    for k in range(n):
        if k == fail_at:
            raise ValueError(f"image {k}: broken patch")
        yield k, _writer(k)


def _writer(value: float) -> TileWriter:
    def write(out: np.ndarray) -> None:
        out.fill(value)

    return write


class Recorder:
    """A forward that returns each tile's value as its vector and records its batches."""

    def __init__(self, oom_above: int | None = None, bad_value: float | None = None) -> None:
        self.oom_above, self.bad_value = oom_above, bad_value
        self.batches: list[list[int]] = []  # tile values of each forward that ran
        self.threads: set[int] = set()
        self.buffers: set[int] = set()  # addresses of the batches' memory

    def __call__(self, tiles: torch.Tensor) -> Launched:
        self.threads.add(threading.get_ident())
        self.buffers.add(tiles.data_ptr())
        if self.oom_above is not None and len(tiles) > self.oom_above:
            raise torch.OutOfMemoryError(f"fake OOM for a batch of {len(tiles)}")
        values = tiles[:, 0, 0, 0]
        if self.bad_value is not None and (values == self.bad_value).any():
            raise ValueError(f"bad tile {self.bad_value:g}")
        self.batches.append([int(v) for v in values.tolist()])
        return Launched(values[:, None].clone(), None)


def _values(outcomes: list[tuple[int, Outcome]]) -> list[float]:
    return [float(o[0][0]) for _, o in outcomes if not isinstance(o, Failure)]


def _producer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "swath-batches"]


def test_run_batches__every_tile_once_in_order_in_full_batches() -> None:
    forward = Recorder()
    out = list(run_batches(_stream(23), forward, _plan(5)))
    assert [ref for ref, _ in out] == list(range(23))
    assert _values(out) == list(range(23))
    assert [len(b) for b in forward.batches] == [5, 5, 5, 5, 3]
    assert forward.threads == {threading.get_ident()}  # forwards run in the caller's thread
    assert _producer_threads() == []


def test_run_batches__batch_memory_is_reused() -> None:
    forward = Recorder()
    out = list(run_batches(_stream(200), forward, _plan(4)))
    assert _values(out) == list(range(200))  # no batch overwritten while in use
    assert len(forward.batches) == 50 and len(forward.buffers) <= PREFETCH_DEPTH + 3


def test_run_batches__the_next_batch_is_built_while_the_forward_runs() -> None:
    second_batch_started = threading.Event()
    producer_thread: list[int] = []

    def stream() -> Iterator[tuple[int, TileWriter]]:
        for k, tile in _stream(8):
            producer_thread.append(threading.get_ident())
            if k == 4:
                second_batch_started.set()
            yield k, tile

    def forward(tiles: torch.Tensor) -> Launched:
        # Without a producer thread running ahead, this would wait in vain.
        assert second_batch_started.wait(timeout=10), "batch 2 was not built during forward 1"
        return Launched(tiles[:, 0, 0, :1].clone(), None)

    out = list(run_batches(stream(), forward, _plan(4)))
    assert _values(out) == list(range(8))
    assert set(producer_thread) != {threading.get_ident()}


def test_run_batches__an_error_in_the_tile_stream_is_raised_in_the_caller() -> None:
    seen: list[int] = []
    with pytest.raises(ValueError, match="image 6: broken patch"):
        for ref, _ in run_batches(_stream(10, fail_at=6), Recorder(), _plan(3)):
            seen.append(ref)
    assert seen == sorted(seen) and set(seen) <= set(range(6))  # none from tile 6 on
    assert _producer_threads() == []


def test_run_batches__stopping_early_stops_the_producer() -> None:
    outcomes = run_batches(_stream(1000), Recorder(), _plan(2))
    assert next(outcomes)[0] == 0
    outcomes.close()
    assert _producer_threads() == []


def test_run_batches__out_of_memory_halves_the_batch_for_the_rest_of_the_stream() -> None:
    forward = Recorder(oom_above=4)
    plan = _plan(16)
    out = list(run_batches(_stream(40), forward, plan))
    assert _values(out) == list(range(40))
    assert sorted(v for b in forward.batches for v in b) == list(range(40))  # each tile once
    assert {len(b) for b in forward.batches} == {4} and plan.batch_size == 4


def test_run_batches__out_of_memory_on_one_tile_names_the_model() -> None:
    with pytest.raises(torch.OutOfMemoryError, match="model m: out of memory with a batch of one"):
        list(run_batches(_stream(3), Recorder(oom_above=0), _plan(2)))
    assert _producer_threads() == []


def test_run_batches__a_failing_tile_fails_alone() -> None:
    out = list(run_batches(_stream(12), Recorder(bad_value=7), _plan(8)))
    assert [ref for ref, _ in out] == list(range(12))
    assert out[7][1] == Failure("ValueError: bad tile 7")
    assert _values(out) == [v for v in range(12) if v != 7]


def test_run_batches__rejects_a_batch_size_below_one() -> None:
    with pytest.raises(ValueError, match="model m: batch_size must be >= 1, got 0"):
        list(run_batches(_stream(3), Recorder(), _plan(0)))


def test_precision__fp32_on_cuda_is_ieee_float32_not_tf32() -> None:
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = conv.fp32_precision, matmul.fp32_precision
    with precision_context("fp32", torch.device("cuda")):  # sets flags only: no GPU needed
        assert (conv.fp32_precision, matmul.fp32_precision) == ("ieee", "ieee")
    assert (conv.fp32_precision, matmul.fp32_precision) == before


def test_precision__bf16_autocasts_on_cpu_and_fp16_is_refused_there() -> None:
    with precision_context("bf16", CPU):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="fp16 needs a CUDA device, got cpu; use bf16 or fp32"):
        precision_context("fp16", CPU)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_run_batches__cuda_tiles_arrive_on_the_device_in_order() -> None:
    devices: set[str] = set()

    def forward(tiles: torch.Tensor) -> Launched:
        devices.add(str(tiles.device))
        return Launched(tiles[:, 0, 0, :1].float().cpu(), None)

    out = list(run_batches(_stream(21), forward, _plan(4, torch.device("cuda"))))
    assert _values(out) == list(range(21))
    assert devices == {f"cuda:{torch.cuda.current_device()}"}
