"""Every model swath can run, by name. Adding a model: its file, one line here, a test."""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from embedders import dofa, ssl4eo
from embedders.spec import Embedder, ModelSpec, WeightsChoice


@dataclass(frozen=True)
class ModelEntry:
    spec: ModelSpec
    build: Callable[[WeightsChoice, torch.device], Embedder]


MODELS: dict[str, ModelEntry] = {
    "dofa_base": ModelEntry(dofa.SPEC, dofa.build),
    "ssl4eo_resnet18_rgb": ModelEntry(ssl4eo.RESNET18_SPEC, ssl4eo.build_resnet18),
    "ssl4eo_resnet50_rgb": ModelEntry(ssl4eo.RESNET50_SPEC, ssl4eo.build_resnet50),
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
    return _entry(name).build(weights, device)
