"""How a model's forward runs: eager or compiled, and in which memory order.

Neither changes what a model computes, only how fast (measured on an NVIDIA H200, bf16,
batch 512: ViT-B/16 8,865 tiles/s eager, 10,965 with torch.compile after 17 s of compiling;
a 12-band ResNet-50 10,736 eager, 15,402 in channels_last; `bench/infer_bench.py`):

- channels_last: convolutional models (`ModelSpec.convolutional`) on CUDA take their
  weights and tiles in channels-last order, which cuDNN's fastest convolutions use
  ("auto"; "on" forces it anywhere, "off" never).
- compile: `torch.compile` of the embedder's forward, once per (model object, device,
  precision, memory order) in a process. Batches are padded to the batch size so that one
  graph serves every batch. Before its first use the compiled forward's pooled vectors of
  seeded probe tiles are compared with the eager forward's: below the precision guard's
  cosine the model is refused (`CompileMismatch`), never silently run either way.
"""

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from embedders import batching, precision
from embedders.naming import setting
from embedders.spec import Embedder, InferenceOptions, ModelSpec, WeightsInfo

log = logging.getLogger(__name__)


class CompileMismatch(ValueError):
    """A compiled forward whose embeddings differ from the eager forward's."""


def uses_channels_last(spec: ModelSpec, options: InferenceOptions, device: torch.device) -> bool:
    if options.channels_last == "auto":
        return spec.convolutional and device.type == "cuda"
    return options.channels_last == "on"


@dataclass
class _ChannelsLast:
    """An embedder whose tiles go in channels-last order (its module converted once)."""

    inner: Embedder
    spec: ModelSpec
    weights: WeightsInfo

    def forward(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner.forward(tiles.contiguous(memory_format=torch.channels_last))


@dataclass
class _Compiled:
    """An embedder whose forward is compiled, every batch padded to `batch_size` tiles."""

    spec: ModelSpec
    weights: WeightsInfo
    compiled: object  # the torch.compile'd forward
    batch_size: int

    def forward(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(tiles)
        if n < self.batch_size:
            pad = tiles.new_zeros((self.batch_size - n, *tiles.shape[1:]))
            tiles = torch.cat([tiles, pad])
        pooled, grid = self.compiled(tiles)  # type: ignore[operator]
        return pooled[:n], grid[:n]


_converted: set[int] = set()
_compiled: dict[tuple[int, str, str, bool, int], _Compiled] = {}
_lock = threading.Lock()


def _channels_last(embedder: Embedder) -> Embedder:
    module = getattr(embedder, "module", None)
    if isinstance(module, nn.Module) and id(module) not in _converted:
        module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        _converted.add(id(module))
    return _ChannelsLast(embedder, embedder.spec, embedder.weights)


def prepare(
    embedder: Embedder, options: InferenceOptions, device: torch.device, batch_size: int
) -> tuple[Embedder, float]:
    """The embedder as `options` runs it on `device`, and the seconds spent compiling it
    in this call (0 when it was compiled before, or is not compiled)."""
    runner = embedder
    channels_last = uses_channels_last(embedder.spec, options, device)
    if channels_last:
        with _lock:
            runner = _channels_last(embedder)
    if not options.compile:
        return runner, 0.0
    owner = getattr(embedder, "module", embedder)
    key = (id(owner), str(device), options.precision, channels_last, batch_size)
    with _lock:
        if key in _compiled:
            return _compiled[key], 0.0
        began = time.perf_counter()
        done = _compile(runner, options, device, batch_size)
        _compiled[key] = done
        seconds = time.perf_counter() - began
    log.info(
        "model %s compiled for %s in %s (batch %d) in %.1f s",
        *(embedder.spec.name, device, options.precision, batch_size, seconds),
    )
    return done, seconds


def _compile(
    runner: Embedder, options: InferenceOptions, device: torch.device, batch_size: int
) -> _Compiled:
    """Compile, run once at the batch size (the compiling happens there), and compare with
    eager on the precision guard's probe tiles."""
    done = _Compiled(runner.spec, runner.weights, torch.compile(runner.forward), batch_size)
    tiles = precision.probe_batch(runner, min(4, batch_size), seed=0).to(device)
    with torch.inference_mode(), batching.precision_context(options.precision, device):
        eager = runner.forward(tiles)[0].double().cpu().numpy()
        fast = done.forward(tiles)[0].double().cpu().numpy()
    cosine = precision.min_cosine(eager, fast)
    if not cosine >= precision.COSINE_THRESHOLD or not np.isfinite(fast).all():
        raise CompileMismatch(
            f"model {runner.spec.name} compiled on {device} in {options.precision}: pooled "
            f"vectors of probe tiles reach a minimum cosine of {cosine:.5f} to the eager "
            f"forward, below {precision.COSINE_THRESHOLD}; run it without {setting('compile')}"
        )
    return done


def forget_compiled() -> None:
    """Drop every compiled forward (tests)."""
    with _lock:
        _compiled.clear()
