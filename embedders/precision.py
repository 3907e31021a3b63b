"""Reduced precision that is never silently wrong: a measured guard, once per model.

Before a model runs in bf16 or fp16, `check_precision` embeds a few seeded probe tiles in
float32 and in the reduced precision (the autocast of `batching.precision_context`, the
one the engine uses) and compares their pooled vectors tile by tile. A minimum cosine of
COSINE_THRESHOLD or more passes. Below it, the layers at fault are looked for
(`embedders.layer_precision`), kept in float32 while the rest of the model stays reduced,
and the cosine measured again; if it still falls short, or no layer is at fault, the
model is refused with a PrecisionError that says to use fp32.

Why: oneDNN (torch 2.13.0, Intel Xeon with AMX) returns garbage for a bf16 16x16,
stride-16 convolution, the patch embedding of every ViT/16, on 4, 6, 12 or 16 input
channels (relative error ~1.2), which gives ViT-B/16 embeddings a cosine of 0.78 to
float32 and DOFA base 0.88, while they look like any other embedding.

Keeping a layer in float32 changes the model in place, for every reduced precision it
runs in afterwards. The guard runs once per (model object, device, precision) in a
process, under one lock; the first call's probe settings are the ones that count.
"""

import json
import logging
import math
import threading
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch import nn

from embedders import layer_precision
from embedders.batching import device_of, precision_context
from embedders.naming import given
from embedders.spec import Embedder, Precision

log = logging.getLogger(__name__)

# A reduced-precision embedding passes when every probe tile's pooled vector has at least
# this cosine to its float32 vector. bf16 rounding (8-bit mantissa) gives 0.9999+ on the
# registry's models and the benchmark's ViT-B/16; the oneDNN fault gives 0.56-0.88.
COSINE_THRESHOLD = 0.999
# A layer is at fault when its own relative error ||y - y'|| / ||y||, run alone on its
# float32 input, exceeds the whole model's budget: an error e across the output costs a
# cosine of about 1 - e**2 / 2, so sqrt(2 (1 - COSINE_THRESHOLD)) ~ 0.045 spends all of
# it alone. Honest bf16 layers measure 0.003-0.006 (bf16's epsilon is 2**-7 ~ 0.008);
# the faulty patch embedding 1.06-1.17.
LAYER_ERROR_LIMIT = math.sqrt(2 * (1 - COSINE_THRESHOLD))


@dataclass(frozen=True)
class PrecisionReport:
    """What the guard measured for one model, device and precision.

    `cosine_before` is the minimum cosine of the unchanged model, `cosine` the one it runs
    with, after keeping `fp32_layers` (qualified names under the embedder's `module`) in
    float32. A probe tile whose vector is not finite counts as cosine -1.
    """

    precision: Precision
    device: str
    cosine: float
    cosine_before: float
    fp32_layers: tuple[str, ...] = ()
    threshold: float = COSINE_THRESHOLD

    def as_dict(self) -> dict[str, object]:
        """JSON-able: for the store's attributes and the run summary."""
        return {**asdict(self), "fp32_layers": list(self.fp32_layers)}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)


class PrecisionError(ValueError):
    """A model whose reduced-precision embeddings are wrong and cannot be fixed here.
    `report` holds what was measured (`cosine` after the fix tried, if one was)."""

    def __init__(self, message: str, report: PrecisionReport | None = None) -> None:
        super().__init__(message, report)  # both in args, so the error pickles (Dask)
        self.report = report

    def __str__(self) -> str:
        return str(self.args[0])


def probe_batch(embedder: Embedder, n: int, seed: int) -> torch.Tensor:
    """(n, C, T, T) seeded standard-normal tiles (or (n, steps, width) pixel series): the
    inputs the model gets are normalised."""
    shape = (n, *embedder.spec.sample_shape())
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def pooled(
    embedder: Embedder, tiles: torch.Tensor, precision: Precision, device: torch.device
) -> np.ndarray:
    """The pooled vectors of `tiles` in `precision`, as (n, D) float64 on the host."""
    with torch.inference_mode(), precision_context(precision, device):
        vectors, _ = embedder.forward(tiles.to(device))
    return vectors.float().cpu().numpy().astype(np.float64)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The smallest row-wise cosine of two (n, D) arrays; a non-finite row counts as -1."""
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(np.where(np.isfinite(cos), cos, -1.0).min())


@dataclass(frozen=True)
class _Probe:
    """One model's probe tiles in one precision, and their float32 vectors."""

    embedder: Embedder
    tiles: torch.Tensor
    precision: Precision
    device: torch.device
    reference: np.ndarray  # (n, D) float64

    def cosine(self) -> float:
        reduced = pooled(self.embedder, self.tiles, self.precision, self.device)
        return min_cosine(self.reference, reduced)

    def layer_errors(self, module: nn.Module) -> dict[str, float]:
        def run_fp32() -> object:
            return pooled(self.embedder, self.tiles, "fp32", self.device)

        return layer_precision.layer_errors(module, run_fp32, self.precision, self.device)

    def refusal(self, report: PrecisionReport, why: str) -> PrecisionError:
        return PrecisionError(
            f"model {self.embedder.spec.name} on {report.device} in {report.precision}: the "
            f"pooled embeddings of {len(self.tiles)} seeded probe tiles reach a minimum cosine "
            f"of {report.cosine_before:.5f} to fp32, below the threshold {report.threshold}; "
            f"{why}. Its {report.precision} embeddings would be wrong: run it with "
            f"{given(precision='fp32')} (InferenceOptions precision='fp32')",
            report,
        )


def _fix(probe: _Probe, report: PrecisionReport) -> PrecisionReport:
    """Keep the layers at fault in float32 and measure again; refuse if that falls short
    (the model is then left as it was)."""
    module = getattr(probe.embedder, "module", None)
    if not isinstance(module, nn.Module):
        why = "the embedder has no nn.Module `module` to search for the layers at fault"
        raise probe.refusal(report, why)
    errors = probe.layer_errors(module)
    layers = layer_precision.layers_at_fault(errors, limit=LAYER_ERROR_LIMIT)
    if not layers:
        worst = max(errors.values(), default=0.0)
        why = f"no layer alone is at fault (worst relative error {worst:.3g}, limit "
        raise probe.refusal(report, f"{why}{LAYER_ERROR_LIMIT:.3g})")
    undo = layer_precision.keep_in_fp32(module, layers, probe.device.type)
    fixed = replace(report, cosine=probe.cosine(), fp32_layers=layers)
    if not fixed.cosine >= COSINE_THRESHOLD:
        undo()
        why = f"keeping {', '.join(layers)} in fp32 brings it to {fixed.cosine:.5f} only"
        raise probe.refusal(fixed, why)
    log.warning(
        "model %s on %s in %s: %s kept in fp32 (at fault); minimum cosine to fp32 %.5f -> %.5f",
        *(probe.embedder.spec.name, report.device, report.precision, ", ".join(layers)),
        *(report.cosine_before, fixed.cosine),
    )
    return fixed


def measure(
    embedder: Embedder, precision: Precision, device: torch.device, tiles: torch.Tensor
) -> PrecisionReport:
    """The guard itself, uncached: measure, fix what it can, or raise PrecisionError."""
    reference = pooled(embedder, tiles, "fp32", device)
    probe = _Probe(embedder, tiles, precision, device, reference)
    before = probe.cosine()
    report = PrecisionReport(precision, str(device), before, before)
    return report if before >= COSINE_THRESHOLD else _fix(probe, report)


@dataclass(frozen=True)
class _Checked:
    owner: Callable[[], object | None]  # what the key's id is the id of; None once it is gone
    outcome: PrecisionReport | PrecisionError


_checked: dict[tuple[int, str, str, Precision], _Checked] = {}
_lock = threading.Lock()


def _pin(owner: object) -> Callable[[], object | None]:
    try:
        return weakref.ref(owner)
    except TypeError:  # not weakly referable (__slots__): kept alive, so its id stays its own
        return lambda: owner


def _outcome(
    embedder: Embedder, precision: Precision, device: torch.device, tiles: torch.Tensor
) -> PrecisionReport | PrecisionError:
    try:
        return measure(embedder, precision, device, tiles)
    except PrecisionError as e:  # kept, so every later call is refused alike
        return e


def check_precision(
    embedder: Embedder,
    precision: Precision,
    device: torch.device,
    *,
    probe_tiles: int = 4,
    seed: int = 0,
) -> PrecisionReport:
    """The guard for `embedder` in `precision` on `device`, measured once per (model
    object, device, precision) in this process; raises PrecisionError when refused.

    fp32 returns a trivial report without running anything; fp16 off CUDA raises the
    ValueError of `batching.precision_context`.
    """
    if precision == "fp32":
        return PrecisionReport("fp32", str(device), 1.0, 1.0)
    device = device_of(device)
    precision_context(precision, device)  # refuses fp16 off CUDA before anything runs
    module = getattr(embedder, "module", None)
    owner = module if isinstance(module, nn.Module) else embedder
    key = (id(owner), embedder.spec.name, str(device), precision)
    with _lock:
        entry = _checked.get(key)
        if entry is None or entry.owner() is not owner:
            tiles = probe_batch(embedder, probe_tiles, seed)
            outcome = _outcome(embedder, precision, device, tiles)
            entry = _checked[key] = _Checked(_pin(owner), outcome)
    if isinstance(entry.outcome, PrecisionError):
        raise entry.outcome
    return entry.outcome


def forget_reports() -> None:
    """Drop every cached outcome: the next check measures again (layers already kept in
    float32 stay so)."""
    with _lock:
        _checked.clear()
