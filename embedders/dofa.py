"""DOFA ViT-Base/16 and ViT-Large/16 (torchgeo), wavelength-aware models that take any
set of bands: Sentinel-2's, and Sentinel-1's VV and VH.

Xiong et al., "Neural Plasticity-Inspired Multimodal Foundation Model for Earth
Observation" (https://arxiv.org/abs/2403.15356); weights DOFABase16_Weights.DOFA_MAE and
DOFALarge16_Weights.DOFA_MAE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from embedders import bands
from embedders.spec import ModelSpec, WeightsChoice, WeightsInfo

if TYPE_CHECKING:  # the model libraries are imported when a model is built, not listed
    import torch
    from torchgeo.models import DOFA

# The bands of the Sentinel-2 sample behind the offline demo.
_BANDS = ("B02", "B03", "B04", "B07", "B11", "B12")


def _spec(name: str, size: str, dim: int, member: str, weights_url: str) -> ModelSpec:
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
        # DOFA leaves normalisation to the sensor (torchgeo's `_dofa_transforms` only
        # crops): the SSL4EO-S12 Sentinel-2 band statistics (embedders/bands.py).
        norm_mean=bands.s2_means(_BANDS),
        norm_std=bands.s2_stds(_BANDS),
        pretrained_weights=member,
        licence="CC-BY-4.0 (weights)",
        weights_url=weights_url,
    )


# Weights enum members of torchgeo.models, resolved when a model is built.
SPEC = _spec(
    "dofa_base",
    "Base",
    768,
    "DOFABase16_Weights.DOFA_MAE",
    "https://hf.co/torchgeo/dofa/resolve/b8db318b64a90b9e085ec04ba8851233c5893666/dofa_base_patch16_224-a0275954.pth",
)
LARGE_SPEC = _spec(
    "dofa_large",
    "Large",
    1024,
    "DOFALarge16_Weights.DOFA_MAE",
    "https://hf.co/torchgeo/dofa/resolve/b8db318b64a90b9e085ec04ba8851233c5893666/dofa_large_patch16_224-0ff904d3.pth",
)


# DOFA on Sentinel-1: VV and VH in dB, at DOFA's placeholder wavelengths for radar
# (embedders/bands.py), normalised with the SSL4EO-S12 Sentinel-1 statistics, in dB.
S1_SPEC = ModelSpec(
    name="dofa_base_s1",
    family="dofa",
    description="DOFA ViT-Base/16 on Sentinel-1 VV and VH backscatter in dB (torchgeo)",
    sensor="sentinel-1",
    bands=bands.S1_BANDS,
    resolution_m=10,
    tile_px=224,
    embed_dim=768,
    grid_stride_px=16,
    norm_mean=bands.s1_means(bands.S1_BANDS),
    norm_std=bands.s1_stds(bands.S1_BANDS),
    pretrained_weights=SPEC.pretrained_weights,
    licence=SPEC.licence,
    weights_url=SPEC.weights_url,
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
    return DofaEmbedder(spec, info, module, bands.dofa_wavelengths_um(spec.bands))


def build(spec: ModelSpec, choice: WeightsChoice, device: torch.device) -> DofaEmbedder:
    return _build(spec, ("dofa_base_patch16_224", "DOFABase16_Weights"), choice, device)


def build_large(spec: ModelSpec, choice: WeightsChoice, device: torch.device) -> DofaEmbedder:
    return _build(spec, ("dofa_large_patch16_224", "DOFALarge16_Weights"), choice, device)
