"""Panopticon ViT-Base/14 (torchgeo), any set of optical bands named by their wavelengths.

Waldmann et al., "Panopticon: Advancing Any-Sensor Foundation Models for Earth
Observation" (https://arxiv.org/abs/2503.10845); weights Panopticon_Weights.VIT_BASE14.
A DINOv2 ViT-B/14 whose patch embedding attends across channels, each channel told by its
centre wavelength in nm (embedders/bands.py). 224 px tiles, as pretrained.

Normalisation: torchgeo's transforms for these weights are `nn.Identity()`; Panopticon
standardises each band with dataset statistics, so swath uses the SSL4EO-S12 Sentinel-2
statistics torchgeo declares (`_mean_s2`, `_std_s2`), as for DOFA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from embedders import bands
from embedders.spec import ModelSpec, WeightsChoice, WeightsInfo

if TYPE_CHECKING:  # the model libraries are imported when a model is built, not listed
    import torch
    from torchgeo.models import Panopticon

_BANDS = ("B02", "B03", "B04", "B07", "B11", "B12")  # as dofa_base: the offline sample's

SPEC = ModelSpec(
    name="panopticon_base",
    family="panopticon",
    description="Panopticon ViT-Base/14, DINOv2 with spectral channel attention (torchgeo)",
    sensor="sentinel-2-l2a",
    bands=_BANDS,
    resolution_m=10,
    tile_px=224,
    embed_dim=768,
    grid_stride_px=14,
    norm_mean=bands.s2_means(_BANDS),
    norm_std=bands.s2_stds(_BANDS),
    pretrained_weights="Panopticon_Weights.VIT_BASE14",
    licence="not verified here; see https://github.com/Panopticon-FM/panopticon",
    weights_url="https://hf.co/lewaldm/panopticon/resolve/c8c2bb9555819e8b2bcedf5b3b00e3bf531554e7/panopticon_vitb14_teacher.pth",
)


@dataclass
class PanopticonEmbedder:
    """pooled = the class token after the final norm (the model's own output, its head is
    empty); grid = the 16 x 16 patch tokens after the same norm."""

    spec: ModelSpec
    weights: WeightsInfo
    module: Panopticon
    wavelengths_nm: tuple[float, ...]

    def inputs(self, tiles: torch.Tensor) -> dict[str, torch.Tensor]:
        import torch

        ids = torch.tensor(self.wavelengths_nm, device=tiles.device, dtype=tiles.dtype)
        return {"imgs": tiles, "chn_ids": ids.repeat(len(tiles), 1)}

    def forward(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from timm.models import VisionTransformer

        vit = self.module.model
        if not isinstance(vit, VisionTransformer):
            raise TypeError(f"Panopticon's backbone is {type(vit).__name__}, not a timm ViT")
        # Panopticon's patch embedding takes the dict; timm's signature says a tensor.
        tokens = vit.forward_features(self.inputs(tiles))  # type: ignore[arg-type]
        pooled = vit.forward_head(tokens, pre_logits=True)
        side = tiles.shape[-1] // self.spec.grid_stride_px
        patches = tokens[:, vit.num_prefix_tokens :]
        return pooled, patches.transpose(1, 2).reshape(len(tiles), -1, side, side)


def build(spec: ModelSpec, choice: WeightsChoice, device: torch.device) -> PanopticonEmbedder:
    from torchgeo.models import Panopticon

    from embedders import weights

    member = weights.member(spec.pretrained_weights)
    architecture = weights.torchgeo_builder(
        "panopticon_vitb14", "Panopticon_Weights", img_size=spec.tile_px
    )
    module, info = weights.load(spec, member, architecture, choice, device)
    if not isinstance(module, Panopticon):
        raise TypeError(f"panopticon_vitb14 returned {type(module).__name__}, not Panopticon")
    waves = tuple(round(1000 * w, 3) for w in bands.wavelengths_um(spec.bands))
    return PanopticonEmbedder(spec, info, module, waves)
