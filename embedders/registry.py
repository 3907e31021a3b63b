"""Every model swath can run, by name. Adding a model: its file, one line here, a test.

Importing this module imports no model library: an entry holds the model's spec and the
path of its builder, which is imported when the model is built. Installed packages add
models through the `swath.models` entry points (embedders/plugins.py), each naming an
`embedders.spec.ModelEntry`; they are read once, with this module.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from embedders import (
    copernicusfm,
    croma,
    dofa,
    olmoearth,
    panopticon,
    plugins,
    presto,
    scalemae,
    ssl4eo,
    ssl4eo_ms,
    tessera_otf,
)
from embedders.spec import Embedder, ModelSpec, WeightsChoice
from embedders.spec import ModelEntry as ModelEntry

if TYPE_CHECKING:
    import torch


_MS = "embedders.ssl4eo_ms"

OWN: dict[str, ModelEntry] = {
    "dofa_base": ModelEntry(dofa.SPEC, "embedders.dofa:build"),
    "dofa_base_s1": ModelEntry(dofa.S1_SPEC, "embedders.dofa:build"),
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
    "croma_base_s1s2": ModelEntry(croma.S1S2_SPEC, "embedders.croma:build"),
    "croma_base_s1": ModelEntry(croma.S1_SPEC, "embedders.croma:build"),
    "croma_large_s1s2": ModelEntry(croma.LARGE_S1S2_SPEC, "embedders.croma:build"),
    "panopticon_base": ModelEntry(panopticon.SPEC, "embedders.panopticon:build"),
    "copernicusfm_base": ModelEntry(copernicusfm.SPEC, "embedders.copernicusfm:build"),
    "scalemae_large": ModelEntry(scalemae.SPEC, "embedders.scalemae:build"),
    "tessera_otf": ModelEntry(tessera_otf.SPEC, "embedders.tessera_otf:build"),
    "presto": ModelEntry(presto.SPEC, "embedders.presto:build"),
    "olmoearth_nano": ModelEntry(olmoearth.NANO_SPEC, "embedders.olmoearth:build"),
    "olmoearth_base": ModelEntry(olmoearth.BASE_SPEC, "embedders.olmoearth:build"),
    "olmoearth_nano_s2s1": ModelEntry(olmoearth.NANO_S2S1_SPEC, "embedders.olmoearth:build"),
}


def _with_plugins(own: dict[str, ModelEntry]) -> dict[str, ModelEntry]:
    """`own` and the installed `swath.models` plugins, each checked to be a ModelEntry under
    its spec's own name."""
    found = plugins.merged("swath.models", dict(own))
    for name, entry in found.items():
        if not isinstance(entry, ModelEntry) or entry.spec.name != name:
            raise plugins.PluginError(
                f"the swath.models plugin {name!r} is not an embedders.spec.ModelEntry "
                f"whose spec is named {name!r}; fix the package that declares it"
            )
    return {name: entry for name, entry in found.items() if isinstance(entry, ModelEntry)}


MODELS: dict[str, ModelEntry] = _with_plugins(OWN)


def unknown_model(name: str, known: Iterable[str]) -> str:
    """What every refusal of a model name says: the name and the names there are."""
    return f"unknown model '{name}'; known models: {', '.join(known)} (see --list-models)"


class UnknownModel(KeyError):
    """A model name that is not in the registry; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0])


def _entry(name: str) -> ModelEntry:
    try:
        return MODELS[name]
    except KeyError as e:
        raise UnknownModel(unknown_model(name, sorted(MODELS))) from e


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
