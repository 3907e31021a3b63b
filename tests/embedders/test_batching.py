from dataclasses import dataclass

import numpy as np
import pytest
import torch

from embedders.batching import (
    IN_FLIGHT,
    BatchPlan,
    Failure,
    Launched,
    Pacer,
    TileQueue,
    precision_context,
    step,
)

CPU = torch.device("cpu")


@dataclass(frozen=True)
class Ids:
    """Refs that are the tiles' own numbers."""

    ids: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, part: slice) -> "Ids":
        return Ids(self.ids[part])


def _plan(batch_size: int, device: torch.device = CPU) -> BatchPlan:
    return BatchPlan(batch_size, device, "model m")


def _queue(*runs: range, device: torch.device = CPU) -> TileQueue[Ids]:
    """Tiles (1, 2, 2) filled with their own number, pushed in runs (as blocks are)."""
    queue: TileQueue[Ids] = TileQueue()
    for run in runs:
        values = torch.tensor(list(run), dtype=torch.float32, device=device)
        queue.push(values[:, None, None, None].expand(-1, 1, 2, 2), Ids(np.array(run)))
    return queue


class Recorder:
    """A forward that returns each tile's value as its vector and records its batches."""

    def __init__(self, oom_above: int | None = None, bad_value: float | None = None) -> None:
        self.oom_above, self.bad_value = oom_above, bad_value
        self.batches: list[list[int]] = []  # tile values of each forward that ran
        self.devices: set[str] = set()

    def __call__(self, tiles: torch.Tensor) -> Launched:
        self.devices.add(str(tiles.device))
        if self.oom_above is not None and len(tiles) > self.oom_above:
            raise torch.OutOfMemoryError(f"fake OOM for a batch of {len(tiles)}")
        values = tiles[:, 0, 0, 0]
        if self.bad_value is not None and (values == self.bad_value).any():
            raise ValueError(f"bad tile {self.bad_value:g}")
        self.batches.append([int(v) for v in values.tolist()])
        return Launched(values[:, None].clone(), None)


def _drain(queue: TileQueue[Ids], forward: Recorder, plan: BatchPlan) -> list[tuple[int, object]]:
    """Every tile's (ref, value or Failure), in the order the outcomes came."""
    out: list[tuple[int, object]] = []
    while len(queue):
        for refs, outcome in step(queue, forward, plan):
            if isinstance(outcome, Failure):
                out += [(int(i), outcome) for i in refs.ids]
            else:
                values = outcome.pooled[:, 0].tolist()
                out += list(zip(refs.ids.tolist(), [int(v) for v in values], strict=True))
    return out


def test_step__every_tile_once_in_order_in_full_batches_across_runs() -> None:
    forward = Recorder()
    out = _drain(_queue(range(0, 7), range(7, 9), range(9, 23)), forward, _plan(5))
    assert out == [(i, i) for i in range(23)]  # refs stay with their tiles
    assert [len(b) for b in forward.batches] == [5, 5, 5, 5, 3]


def test_step__out_of_memory_halves_the_batch_and_gives_the_tiles_back() -> None:
    forward = Recorder(oom_above=4)
    plan = _plan(16)
    out = _drain(_queue(range(0, 25), range(25, 40)), forward, plan)
    assert out == [(i, i) for i in range(40)]
    assert sorted(v for b in forward.batches for v in b) == list(range(40))  # each tile once
    assert {len(b) for b in forward.batches} == {4} and plan.batch_size == 4


def test_step__out_of_memory_on_one_tile_names_the_model() -> None:
    with pytest.raises(torch.OutOfMemoryError, match="model m: out of memory with a batch of one"):
        _drain(_queue(range(3)), Recorder(oom_above=0), _plan(2))


def test_step__a_failing_tile_fails_alone() -> None:
    out = _drain(_queue(range(5), range(5, 12)), Recorder(bad_value=7), _plan(8))
    assert [ref for ref, _ in out] == list(range(12))
    assert out[7][1] == Failure("ValueError: bad tile 7")
    assert [v for _, v in out if not isinstance(v, Failure)] == [v for v in range(12) if v != 7]


def test_step__rejects_a_batch_size_below_one() -> None:
    with pytest.raises(ValueError, match="model m: batch_size must be >= 1, got 0"):
        step(_queue(range(3)), Recorder(), _plan(0))


def test_tile_queue__refuses_tiles_without_a_ref_each() -> None:
    queue: TileQueue[Ids] = TileQueue()
    with pytest.raises(ValueError, match="3 tiles with 2 refs"):
        queue.push(torch.zeros(3, 1, 2, 2), Ids(np.arange(2)))


def test_pacer__on_the_cpu_waits_for_nothing() -> None:
    pacer = Pacer(CPU)
    for _ in range(IN_FLIGHT + 3):
        pacer.mark()  # no event, no error


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
def test_step__cuda_tiles_run_on_the_device_in_order() -> None:
    cuda = torch.device("cuda", torch.cuda.current_device())
    forward = Recorder()
    pacer = Pacer(cuda)
    queue = _queue(range(0, 10), range(10, 21), device=cuda)
    out: list[tuple[int, object]] = []
    while len(queue):
        for refs, outcome in step(queue, forward, _plan(4, cuda)):
            assert isinstance(outcome, Launched)
            out += list(zip(refs.ids.tolist(), outcome.pooled[:, 0].int().tolist(), strict=True))
        pacer.mark()
    assert out == [(i, i) for i in range(21)]
    assert forward.devices == {str(cuda)}
