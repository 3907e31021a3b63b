import time
from collections.abc import Callable

import numpy as np
import pytest
import torch

from embedders import autobatch
from embedders.autobatch import CPU_CAP, HostGauge, Probe, fit_batch_size, probe_batch_size
from embedders.engine import embed_images
from embedders.spec import Embedder, InferenceOptions
from tests.embedders.fakes import Wrapper

CPU = torch.device("cpu")
AUTO = InferenceOptions(batch_size="auto")
MiB = 2**20
RESNET_TILE_BYTES = 4 * 3 * 224 * 224  # one float32 RGB tile of 224 px


class FakeGauge:
    """Memory as a test wants it: `available` bytes free, each probe forward peaking at
    fixed + per_tile * batch."""

    def __init__(self, available: int, fixed: int, per_tile: int) -> None:
        self._available, self._peaks = available, [fixed + per_tile * n for n in (1, 4)]

    def available(self) -> int:
        return self._available

    def peak(self, run: Callable[[], object]) -> int:
        run()
        return self._peaks.pop(0)


def test_resolve__an_integer_batch_size_is_used_as_it_is(resnet18: Embedder) -> None:
    spy = Wrapper(resnet18)
    assert autobatch.resolve_batch_size(spy, InferenceOptions(batch_size=7), CPU) == 7
    assert spy.batches == []  # no probe


@pytest.mark.parametrize("size", [0, -3, "big"])
def test_resolve__rejects_sizes_that_are_not_positive_or_auto(
    resnet18: Embedder, size: object
) -> None:
    options = InferenceOptions(batch_size=size)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"batch_size must be an integer >= 1 or 'auto'"):
        autobatch.resolve_batch_size(resnet18, options, CPU)


def test_resolve__auto_is_measured_once_per_model_device_and_precision(
    resnet18: Embedder,
) -> None:
    spy = Wrapper(resnet18)
    size = autobatch.resolve_batch_size(spy, AUTO, CPU)
    assert isinstance(size, int) and 1 <= size <= CPU_CAP
    assert spy.batches == [1, 1, 4]  # a warm-up, then the two probe batches
    assert autobatch.resolve_batch_size(spy, AUTO, CPU) == size
    assert autobatch.resolve_batch_size(spy, InferenceOptions(batch_size="auto"), CPU) == size
    assert spy.batches == [1, 1, 4]  # cached
    autobatch.resolve_batch_size(spy, InferenceOptions(batch_size="auto", precision="bf16"), CPU)
    assert spy.batches == [1, 1, 4] * 2  # another precision is another probe


def test_probe__less_free_memory_gives_a_smaller_batch(resnet18: Embedder) -> None:
    def probe(available: int) -> int:
        gauge = FakeGauge(available, fixed=100 * MiB, per_tile=20 * MiB)
        return probe_batch_size(resnet18, AUTO, CPU, gauge=gauge)

    # (0.8 * 256 MiB - 100 MiB) // (20 MiB + 3 staged input tiles) = 4
    assert probe(256 * MiB) == 4
    assert probe(192 * MiB) == 2
    assert probe(64 * 2**30) == CPU_CAP
    assert probe(64 * MiB) == 1  # no room at all: one tile, and the backoff has the last word


def test_fit__slope_and_intercept_of_two_probe_peaks() -> None:
    assert Probe.fit((1, 4), (120 * MiB, 180 * MiB)) == Probe(100 * MiB, 20 * MiB)
    # A noisy measurement whose peak falls with the batch is not a negative cost.
    assert Probe.fit((1, 4), (120 * MiB, 110 * MiB)) == Probe(120 * MiB, 0)


def test_fit__each_tile_costs_at_least_its_input_and_its_staged_copies() -> None:
    free = Probe(0, 0)
    size = fit_batch_size(free, 100 * RESNET_TILE_BYTES, tile_bytes=RESNET_TILE_BYTES, cap=512)
    assert size == 16  # 80 tiles of memory after headroom, 5 copies of each tile
    assert fit_batch_size(free, 10**12, tile_bytes=RESNET_TILE_BYTES, cap=512) == 512


def test_probe__out_of_memory_at_the_larger_probe_batch_gives_one(resnet18: Embedder) -> None:
    assert probe_batch_size(Wrapper(resnet18, oom_above=1), AUTO, CPU) == 1


def test_probe__out_of_memory_on_one_tile_names_the_model(resnet18: Embedder) -> None:
    with pytest.raises(
        torch.OutOfMemoryError, match="model ssl4eo_resnet18_rgb: out of memory probing a batch"
    ):
        probe_batch_size(Wrapper(resnet18, oom_above=0), AUTO, CPU)


def test_probe__a_failing_forward_says_how_to_skip_the_probe(resnet18: Embedder) -> None:
    with pytest.raises(RuntimeError, match="pass an integer batch size to skip the probe"):
        probe_batch_size(Wrapper(resnet18, fail_above_value=-1e9), AUTO, CPU)


def test_probe__only_cpu_and_cuda_memory_can_be_measured(resnet18: Embedder) -> None:
    with pytest.raises(ValueError, match="measures memory on cpu and cuda only, not meta"):
        probe_batch_size(resnet18, AUTO, torch.device("meta"))


def test_embed__out_of_memory_lowers_the_cached_auto_batch_size(
    resnet18: Embedder, make_image: Callable[..., np.ndarray]
) -> None:
    flaky = Wrapper(resnet18)
    assert autobatch.resolve_batch_size(flaky, AUTO, CPU) > 2
    flaky.oom_above = 2  # the device fills up after the probe
    options = InferenceOptions(input_prep="tile", batch_size="auto")
    embed_images(flaky, [make_image(0, 448, 448)], options, CPU)
    assert autobatch.resolve_batch_size(flaky, AUTO, CPU) == 2


def _hold(nbytes: int, seconds: float = 0.0) -> Callable[[], object]:
    def run() -> object:
        block = torch.ones(nbytes // 4)  # written, so resident
        time.sleep(seconds)
        return block.sum()

    return run


def test_host_gauge__peak_sees_a_64_mib_allocation() -> None:
    peak = HostGauge().peak(_hold(64 * MiB))
    assert 60 * MiB < peak < 100 * MiB


def test_host_gauge__sampling_sees_a_64_mib_allocation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(autobatch, "_reset_peak_rss", lambda: False)  # not Linux
    peak = HostGauge().peak(_hold(64 * MiB, seconds=0.1))
    assert 60 * MiB < peak < 100 * MiB


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gauge__peak_sees_a_64_mib_allocation() -> None:
    gauge = autobatch.CudaGauge(torch.device("cuda", torch.cuda.current_device()))

    def run() -> object:
        return torch.ones(16 * MiB, device="cuda").sum()

    assert 64 * MiB <= gauge.peak(run) < 80 * MiB
    assert gauge.available() > 0
