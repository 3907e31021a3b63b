"""Every model swath can run, by name. Adding a model: its file, one line here, a test.

Importing this module imports no model library: an entry holds the model's spec and the
path of its builder, which is imported when the model is built.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from embedders import dofa, ssl4eo
from embedders.spec import Embedder, ModelSpec, WeightsChoice

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ModelEntry:
    spec: ModelSpec
    builder: str  # "module:function", called as function(spec, weights, device)


MODELS: dict[str, ModelEntry] = {
    "dofa_base": ModelEntry(dofa.SPEC, "embedders.dofa:build"),
    "ssl4eo_resnet18_rgb": ModelEntry(ssl4eo.RESNET18_SPEC, "embedders.ssl4eo:build_resnet18"),
    "ssl4eo_resnet50_rgb": ModelEntry(ssl4eo.RESNET50_SPEC, "embedders.ssl4eo:build_resnet50"),
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
