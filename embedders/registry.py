"""Every model swath can run, by name. Adding a model: its file, one line here, a test.

Importing this module imports no model library: an entry holds the model's spec and the
path of its builder, which is imported when the model is built.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from embedders import copernicusfm, croma, dofa, panopticon, scalemae, ssl4eo, ssl4eo_ms
from embedders.spec import Embedder, ModelSpec, WeightsChoice

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ModelEntry:
    spec: ModelSpec
    builder: str  # "module:function", called as function(spec, weights, device)


_MS = "embedders.ssl4eo_ms"

MODELS: dict[str, ModelEntry] = {
    "dofa_base": ModelEntry(dofa.SPEC, "embedders.dofa:build"),
    "ssl4eo_resnet18_rgb": ModelEntry(ssl4eo.RESNET18_SPEC, "embedders.ssl4eo:build_resnet18"),
    "ssl4eo_resnet50_rgb": ModelEntry(ssl4eo.RESNET50_SPEC, "embedders.ssl4eo:build_resnet50"),
    "ssl4eo_resnet18_s2_moco": ModelEntry(ssl4eo_ms.RESNET18_MOCO, f"{_MS}:build_resnet"),
    "ssl4eo_resnet50_s2_moco": ModelEntry(ssl4eo_ms.RESNET50_MOCO, f"{_MS}:build_resnet"),
    "ssl4eo_resnet50_s2_dino": ModelEntry(ssl4eo_ms.RESNET50_DINO, f"{_MS}:build_resnet"),
    "ssl4eo_vits16_s2_moco": ModelEntry(ssl4eo_ms.VITS16_MOCO, f"{_MS}:build_vit"),
    "ssl4eo_vits16_s2_dino": ModelEntry(ssl4eo_ms.VITS16_DINO, f"{_MS}:build_vit"),
    "ssl4eo_vits16_s2_mae": ModelEntry(ssl4eo_ms.VITS16_MAE, f"{_MS}:build_vit"),
    "dofa_large": ModelEntry(dofa.LARGE_SPEC, "embedders.dofa:build_large"),
    "croma_base": ModelEntry(croma.SPEC, "embedders.croma:build"),
    "panopticon_base": ModelEntry(panopticon.SPEC, "embedders.panopticon:build"),
    "copernicusfm_base": ModelEntry(copernicusfm.SPEC, "embedders.copernicusfm:build"),
    "scalemae_large": ModelEntry(scalemae.SPEC, "embedders.scalemae:build"),
}


class UnknownModel(KeyError):
    """A model name that is not in the registry; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0])


def _entry(name: str) -> ModelEntry:
    try:
        return MODELS[name]
    except KeyError as e:
        known = ", ".join(sorted(MODELS))
        raise UnknownModel(f"unknown model {name!r}; known models: {known}") from e


def get_spec(name: str) -> ModelSpec:
    return _entry(name).spec


def list_specs() -> list[ModelSpec]:
    return [entry.spec for entry in MODELS.values()]


def build(name: str, weights: WeightsChoice, device: torch.device) -> Embedder:
    """Build model `name` with its weights resolved, in eval mode on `device`."""
    entry = _entry(name)
    module, _, function = entry.builder.partition(":")
    builder = getattr(importlib.import_module(module), function)
    embedder: Embedder = builder(entry.spec, weights, device)
    return embedder
