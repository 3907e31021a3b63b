"""Scale-MAE ViT-Large/16 (torchgeo) on Sentinel-2 RGB, told the ground resolution.

Reed et al., "Scale-MAE: A Scale-Aware Masked Autoencoder for Multiscale Geospatial
Representation Learning" (https://arxiv.org/abs/2212.14532); weights
ScaleMAELarge16_Weights.FMOW_RGB. Pretrained on fMoW RGB (8-bit, sub-metre to metres);
its positional embedding is scaled by the input's resolution in metres (`res`), 10 here.

Normalisation: torchgeo's transform for these weights (`_scale_mae_transforms`) divides
8-bit values by 255, then standardises with the ImageNet mean and std. Sentinel-2 L2A
comes as reflectance x 10000, not 8 bit: swath maps it to 8 bit as Sentinel Hub's
true-colour script does (reflectance x 2.5, so 4000 DN -> 255), without clipping. The spec
holds the composition: mean_dn = 4000 x imagenet_mean, std_dn = 4000 x imagenet_std
(a test checks it against torchgeo's transform).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from embedders.spec import ModelSpec, WeightsChoice, WeightsInfo

if TYPE_CHECKING:  # the model libraries are imported when a model is built, not listed
    import torch
    from torchgeo.models import ScaleMAE

_BANDS = ("B04", "B03", "B02")
# Sentinel Hub's true-colour visualisation: 2.5 x reflectance = 1, reflectance 0.4.
DN_AT_255 = 4000.0
# torchgeo/models/scale_mae.py `_mean`, `_std` (ImageNet), in [0, 1] units.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# Checkpoint keys the forward uses whose absence torchgeo does not check (it loads with
# strict=False): every key but these must come from the checkpoint.
NOT_FROM_CHECKPOINT = frozenset({"pos_embed"})  # recomputed from `res` on every call

SPEC = ModelSpec(
    name="scalemae_large",
    family="scalemae",
    description="Scale-MAE ViT-Large/16, pretrained on fMoW RGB, GSD-aware (torchgeo)",
    sensor="sentinel-2-l2a",
    bands=_BANDS,
    resolution_m=10,
    tile_px=224,
    embed_dim=1024,
    grid_stride_px=16,
    norm_mean=tuple(DN_AT_255 * m for m in _IMAGENET_MEAN),
    norm_std=tuple(DN_AT_255 * s for s in _IMAGENET_STD),
    pretrained_weights="ScaleMAELarge16_Weights.FMOW_RGB",
    licence="not verified here; see https://github.com/bair-climate-initiative/scale-mae",
    weights_url="https://hf.co/isaaccorley/vit_large_patch16_224_fmow_rgb_scalemae/resolve/75650aaca720ef9c6638d16f5b4375f0022c56c9/vit_large_patch16_224_fmow_rgb_scalemae-386989c9.pth",
)


@dataclass
class ScaleMAEEmbedder:
    """pooled = the class token after the final norm (the model's own output with no
    head); grid = the 14 x 14 patch tokens after the same norm."""

    spec: ModelSpec
    weights: WeightsInfo
    module: ScaleMAE

    def forward(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.module.forward_features(tiles)
        pooled = self.module.forward_head(tokens, pre_logits=True)
        side = tiles.shape[-1] // self.spec.grid_stride_px
        patches = tokens[:, self.module.num_prefix_tokens :]
        return pooled, patches.transpose(1, 2).reshape(len(tiles), -1, side, side)


def missing_keys(module: torch.nn.Module, path: str) -> list[str]:
    """The weights of `module` the checkpoint at `path` does not hold (torchgeo loads it
    with strict=False and checks nothing), read safely (weights_only) and memory-mapped."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return sorted(set(module.state_dict()) - set(state) - NOT_FROM_CHECKPOINT)


def build(spec: ModelSpec, choice: WeightsChoice, device: torch.device) -> ScaleMAEEmbedder:
    from torchgeo.models import ScaleMAE

    from embedders import weights

    member = weights.member(spec.pretrained_weights)
    architecture = weights.torchgeo_builder(
        "scalemae_large_patch16", "ScaleMAELarge16_Weights", res=spec.resolution_m, num_classes=0
    )
    module, info = weights.load(spec, member, architecture, choice, device)
    if not isinstance(module, ScaleMAE):
        raise TypeError(f"scalemae_large_patch16 returned {type(module).__name__}, not ScaleMAE")
    missing = missing_keys(module, info.file) if info.kind == "pretrained" else []
    if missing:
        raise weights.WeightsUnavailable(
            f"model {spec.name}: the checkpoint at {info.file} lacks {len(missing)} weight(s) "
            f"of Scale-MAE ViT-L/16 (e.g. {', '.join(missing[:3])}), so they would stay "
            f"random; replace it with {member.url}",
            file_present=True,
        )
    return ScaleMAEEmbedder(spec, info, module)
