"""DOFA ViT-Base/16 and ViT-Large/16 (torchgeo), wavelength-aware models that take any
set of bands.

Xiong et al., "Neural Plasticity-Inspired Multimodal Foundation Model for Earth
Observation" (https://arxiv.org/abs/2403.15356); weights DOFABase16_Weights.DOFA_MAE and
DOFALarge16_Weights.DOFA_MAE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from embedders.spec import ModelSpec, WeightsChoice, WeightsInfo
from tasks import sensors

if TYPE_CHECKING:  # the model libraries are imported when a model is built, not listed
    import torch
    from torchgeo.models import DOFA

# DOFA leaves normalisation to the sensor (torchgeo's `_dofa_transforms` only crops), so
# we use the SSL4EO-S12 Sentinel-2 band statistics torchgeo declares for its Sentinel-2
# models: `_mean_s2` / `_std_s2` in torchgeo/models/resnet.py (torchgeo 0.10.1), 13
# Level-1C bands in ESA order B01..B12 with B8A and B10, digital numbers; (mean, std).
S2_MEAN_STD: dict[str, tuple[float, float]] = {
    "B01": (1612.9, 791.0),
    "B02": (1397.6, 854.3),
    "B03": (1322.3, 878.7),
    "B04": (1373.1, 1144.9),
    "B05": (1561.0, 1127.5),
    "B06": (2108.4, 1164.2),
    "B07": (2390.7, 1276.0),
    "B08": (2318.7, 1249.5),
    "B8A": (2581.0, 1345.9),
    "B09": (837.7, 577.5),
    "B10": (22.0, 47.5),
    "B11": (2195.2, 1340.0),
    "B12": (1537.4, 1142.9),
}

# The bands of the Sentinel-2 sample behind the offline demo.
_BANDS = ("B02", "B03", "B04", "B07", "B11", "B12")


def _spec(name: str, size: str, dim: int, member: str, checkpoint: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        family="dofa",
        description=f"DOFA ViT-{size}/16, MAE-pretrained on multi-sensor imagery (torchgeo)",
        sensor="sentinel-2-l2a",
        bands=_BANDS,
        resolution_m=10,
        tile_px=224,
        embed_dim=dim,
        grid_stride_px=16,
        norm_mean=tuple(S2_MEAN_STD[b][0] for b in _BANDS),
        norm_std=tuple(S2_MEAN_STD[b][1] for b in _BANDS),
        pretrained_weights=member,
        licence="CC-BY-4.0 (weights)",
        checkpoint=checkpoint,
    )


# Weights enum members of torchgeo.models, resolved when a model is built.
SPEC = _spec(
    "dofa_base", "Base", 768, "DOFABase16_Weights.DOFA_MAE", "dofa_base_patch16_224-a0275954.pth"
)
LARGE_SPEC = _spec(
    "dofa_large",
    "Large",
    1024,
    "DOFALarge16_Weights.DOFA_MAE",
    "dofa_large_patch16_224-0ff904d3.pth",
)


@dataclass
class DofaEmbedder:
    """DOFA's forward_features taken apart to keep the patch tokens.

    pooled = fc_norm(mean of patch tokens), exactly `DOFA.forward_features`;
    grid = fc_norm applied to each patch token, so a cell lives in the same normalised
    space as the pooled vector, as (B, 768, 14, 14).
    """

    spec: ModelSpec
    weights: WeightsInfo
    module: DOFA
    wavelengths_um: tuple[float, ...]

    def forward(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        m = self.module
        waves = torch.tensor(self.wavelengths_um, device=tiles.device, dtype=tiles.dtype)
        x, _ = m.patch_embed(tiles, waves)
        x = x + m.pos_embed[:, 1:, :]
        cls_token = m.cls_token + m.pos_embed[:, :1, :]
        x = torch.cat((cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        for block in m.blocks:
            x = block(x)
        tokens = x[:, 1:, :]
        pooled = m.fc_norm(tokens.mean(dim=1))
        side = tiles.shape[-1] // self.spec.grid_stride_px
        grid = m.fc_norm(tokens).transpose(1, 2).reshape(x.shape[0], -1, side, side)
        return pooled, grid


def _build(
    spec: ModelSpec, builder: tuple[str, str], choice: WeightsChoice, device: torch.device
) -> DofaEmbedder:
    """`builder`: the torchgeo function and the weights enum it takes."""
    from torchgeo.models import DOFA

    from embedders import weights

    member = weights.member(spec.pretrained_weights)
    architecture = weights.torchgeo_builder(*builder)
    module, info = weights.load(spec, member, architecture, choice, device)
    if not isinstance(module, DOFA):
        raise TypeError(f"{builder[0]} returned {type(module).__name__}, not DOFA")
    return DofaEmbedder(spec, info, module, sensors.wavelengths_um(spec.bands))


def build(spec: ModelSpec, choice: WeightsChoice, device: torch.device) -> DofaEmbedder:
    return _build(spec, ("dofa_base_patch16_224", "DOFABase16_Weights"), choice, device)


def build_large(spec: ModelSpec, choice: WeightsChoice, device: torch.device) -> DofaEmbedder:
    return _build(spec, ("dofa_large_patch16_224", "DOFALarge16_Weights"), choice, device)
