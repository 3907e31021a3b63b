"""SSL4EO-S12 MoCo ResNet-18 and ResNet-50 on Sentinel-2 RGB (torchgeo, timm).

Wang et al., "SSL4EO-S12: A Large-Scale Multi-Modal, Multi-Temporal Dataset for
Self-Supervised Learning in Earth Observation" (https://arxiv.org/abs/2211.07044);
weights ResNet18_Weights.SENTINEL2_RGB_MOCO and ResNet50_Weights.SENTINEL2_RGB_MOCO.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from embedders.spec import ModelSpec, WeightsChoice, WeightsInfo

if TYPE_CHECKING:  # the model libraries are imported when a model is built, not listed
    import torch
    from timm.models import ResNet
    from torch import nn
    from torchvision.models._api import WeightsEnum

# SSL4EO-S12's RGB weights take B4, B3, B2. torchgeo's transform for them
# (`_ssl4eo_s12_transforms_s2_10k` in torchgeo/models/resnet.py) divides by 10000.
_BANDS = ("B04", "B03", "B02")


def _spec(name: str, depth: int, dim: int, member: str, weights_url: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        family="ssl4eo",
        description=f"ResNet-{depth}, MoCo-pretrained on SSL4EO-S12 Sentinel-2 RGB (torchgeo)",
        sensor="sentinel-2-l2a",
        bands=_BANDS,
        resolution_m=10,
        tile_px=224,
        embed_dim=dim,
        grid_stride_px=32,
        norm_mean=(0.0, 0.0, 0.0),
        norm_std=(10000.0, 10000.0, 10000.0),
        pretrained_weights=member,
        licence="CC-BY-4.0 (weights)",
        weights_url=weights_url,
        convolutional=True,
    )


# Weights enum members of torchgeo.models, resolved when a model is built.
RESNET18_SPEC = _spec(
    "ssl4eo_resnet18_rgb",
    18,
    512,
    "ResNet18_Weights.SENTINEL2_RGB_MOCO",
    "https://hf.co/torchgeo/resnet18_sentinel2_rgb_moco/resolve/e1c032e7785fd0625224cdb6699aa138bb304eec/resnet18_sentinel2_rgb_moco-e3a335e3.pth",
)
RESNET50_SPEC = _spec(
    "ssl4eo_resnet50_rgb",
    50,
    2048,
    "ResNet50_Weights.SENTINEL2_RGB_MOCO",
    "https://hf.co/torchgeo/resnet50_sentinel2_rgb_moco/resolve/efd9723b59a88e9dc1420dc1e96afb25b0630a3c/resnet50_sentinel2_rgb_moco-2b57ba8b.pth",
)


@dataclass
class ResNetEmbedder:
    """grid = the last stage's feature map (B, D, 7, 7); pooled = its global average,
    timm's `forward_head(pre_logits=True)`, which is what the model returns with no head."""

    spec: ModelSpec
    weights: WeightsInfo
    module: ResNet

    def forward(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        if tiles.is_cuda:
            tiles = tiles.contiguous(memory_format=torch.channels_last)
        grid = self.module.forward_features(tiles)
        return self.module.forward_head(grid, pre_logits=True), grid


def _architecture(
    builder: Callable[..., nn.Module], kind: type[WeightsEnum], member: WeightsEnum | None
) -> nn.Module:
    if member is not None and not isinstance(member, kind):
        raise TypeError(f"{builder.__name__} takes {kind.__name__}, got {member!r}")
    return builder(weights=member, in_chans=len(_BANDS), num_classes=0)


def _build(
    spec: ModelSpec, builder_name: str, choice: WeightsChoice, device: torch.device
) -> ResNetEmbedder:
    import torch
    import torchgeo.models
    from timm.models import ResNet

    from embedders import weights

    member = weights.member(spec.pretrained_weights)
    builder = getattr(torchgeo.models, builder_name)
    architecture = partial(_architecture, builder, type(member))
    module, info = weights.load(spec, member, architecture, choice, device)
    if not isinstance(module, ResNet):
        raise TypeError(f"{builder.__name__} returned {type(module).__name__}, not a timm ResNet")
    if device.type == "cuda":
        # Module.to accepts memory_format at runtime; torch's stubs leave it out.
        module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return ResNetEmbedder(spec, info, module)


def build_resnet18(spec: ModelSpec, choice: WeightsChoice, device: torch.device) -> ResNetEmbedder:
    return _build(spec, "resnet18", choice, device)


def build_resnet50(spec: ModelSpec, choice: WeightsChoice, device: torch.device) -> ResNetEmbedder:
    return _build(spec, "resnet50", choice, device)
