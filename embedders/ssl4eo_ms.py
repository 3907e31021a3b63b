"""SSL4EO-S12 on all Sentinel-2 bands: ResNet-18/50 and ViT-S/16, MoCo, DINO and MAE (torchgeo).

Wang et al., "SSL4EO-S12: A Large-Scale Multi-Modal, Multi-Temporal Dataset for
Self-Supervised Learning in Earth Observation" (https://arxiv.org/abs/2211.07044); weights
ResNet18_Weights.SENTINEL2_ALL_MOCO, ResNet50_Weights.SENTINEL2_ALL_{MOCO,DINO},
ViTSmall16_Weights.SENTINEL2_ALL_{MOCO,DINO,MAE}.

These weights were trained on Level-1C top-of-atmosphere imagery, 13 bands with the cirrus
band B10 (their `meta["bands"]`); torchgeo has no Level-2A-trained SSL4EO-S12 weights. swath
delivers Level-2A, which has no B10. So a model takes the 12 L2A bands and its forward
inserts B10 as a constant: the SSL4EO-S12 mean of B10 (22 DN, torchgeo's `_mean_s2`),
normalised like every band (/ 10000). The other bands are L2A surface reflectance where
the model saw L1C top-of-atmosphere reflectance: a shift the model was not trained for
(smallest over dark-free land, largest in the blue and coastal bands).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from embedders import bands
from embedders.spec import ModelSpec, WeightsChoice, WeightsInfo
from embedders.ssl4eo import ResNetEmbedder

if TYPE_CHECKING:  # the model libraries are imported when a model is built, not listed
    import torch
    from timm.models import VisionTransformer

# SSL4EO-S12's Sentinel-2 transform for these weights (`_ssl4eo_s12_transforms_s2_10k` in
# torchgeo/models/resnet.py, `_zhu_xlab_transforms` in vit.py) divides every band by 10000.
NORM_STD = 10000.0
# B10's SSL4EO-S12 mean in digital numbers: torchgeo/models/resnet.py `_mean_s2[10]`.
B10_FILL_DN = 22.0
B10_INDEX = bands.ALL_BANDS.index("B10")  # where the 13-band models take it
_BANDS = bands.L2A_BANDS


def _spec(
    name: str, arch: str, method: str, geometry: tuple[int, int], member: str, weights_url: str
) -> ModelSpec:
    dim, stride = geometry
    return ModelSpec(
        name=name,
        family="ssl4eo",
        description=(
            f"{arch}, {method}-pretrained on SSL4EO-S12 Sentinel-2 L1C, 13 bands (torchgeo); "
            f"fed the 12 L2A bands with B10 filled by its SSL4EO-S12 mean ({B10_FILL_DN:g} DN)"
        ),
        sensor="sentinel-2-l2a",
        bands=_BANDS,
        resolution_m=10,
        tile_px=224,
        embed_dim=dim,
        grid_stride_px=stride,
        norm_mean=(0.0,) * len(_BANDS),
        norm_std=(NORM_STD,) * len(_BANDS),
        pretrained_weights=member,
        licence="CC-BY-4.0 (weights)",
        weights_url=weights_url,
        convolutional=arch.startswith("ResNet"),
    )


RESNET18_MOCO = _spec(
    "ssl4eo_resnet18_s2_moco", "ResNet-18", "MoCo", (512, 32),
    "ResNet18_Weights.SENTINEL2_ALL_MOCO", "https://hf.co/torchgeo/resnet18_sentinel2_all_moco/resolve/5b8cddc9a14f3844350b7f40b85bcd32aed75918/resnet18_sentinel2_all_moco-59bfdff9.pth",
)  # fmt: skip
RESNET50_MOCO = _spec(
    "ssl4eo_resnet50_s2_moco", "ResNet-50", "MoCo", (2048, 32),
    "ResNet50_Weights.SENTINEL2_ALL_MOCO", "https://hf.co/torchgeo/resnet50_sentinel2_all_moco/resolve/da4f3c9dbe09272eb902f3b37f46635fa4726879/resnet50_sentinel2_all_moco-df8b932e.pth",
)  # fmt: skip
RESNET50_DINO = _spec(
    "ssl4eo_resnet50_s2_dino", "ResNet-50", "DINO", (2048, 32),
    "ResNet50_Weights.SENTINEL2_ALL_DINO", "https://hf.co/torchgeo/resnet50_sentinel2_all_dino/resolve/d7f14bf5530d70ac69d763e58e77e44dbecfec7c/resnet50_sentinel2_all_dino-d6c330e9.pth",
)  # fmt: skip
VITS16_MOCO = _spec(
    "ssl4eo_vits16_s2_moco", "ViT-S/16", "MoCo", (384, 16),
    "ViTSmall16_Weights.SENTINEL2_ALL_MOCO",
    "https://hf.co/torchgeo/vit_small_patch16_224_sentinel2_all_moco/resolve/1cb683f6c14739634cdfaaceb076529adf898c74/vit_small_patch16_224_sentinel2_all_moco-67c9032d.pth",
)  # fmt: skip
VITS16_DINO = _spec(
    "ssl4eo_vits16_s2_dino", "ViT-S/16", "DINO", (384, 16),
    "ViTSmall16_Weights.SENTINEL2_ALL_DINO",
    "https://hf.co/torchgeo/vit_small_patch16_224_sentinel2_all_dino/resolve/5b41dd418a79de47ac9f5be3e035405a83818a62/vit_small_patch16_224_sentinel2_all_dino-36bcc127.pth",
)  # fmt: skip
VITS16_MAE = _spec(
    "ssl4eo_vits16_s2_mae", "ViT-S/16", "MAE", (384, 16),
    "ViTSmall16_Weights.SENTINEL2_ALL_MAE", "https://huggingface.co/wangyi111/SSL4EO-S12/resolve/75c72195d35201dc1fb210818993518c25da566b/B13_vits16_mae_ep99_enc.pth",
)  # fmt: skip


def with_b10(tiles: torch.Tensor) -> torch.Tensor:
    """(B, 12, T, T) normalised L2A tiles -> (B, 13, T, T) with B10 at its L1C place."""
    import torch

    b, _, h, w = tiles.shape
    fill = tiles.new_full((b, 1, h, w), B10_FILL_DN / NORM_STD)
    return torch.cat((tiles[:, :B10_INDEX], fill, tiles[:, B10_INDEX:]), dim=1)


@dataclass
class FilledResNetEmbedder:
    """A 13-band ResNet fed 12 bands: B10 inserted, then `ResNetEmbedder`'s outputs."""

    spec: ModelSpec
    weights: WeightsInfo
    inner: ResNetEmbedder

    @property
    def module(self) -> torch.nn.Module:
        return self.inner.module

    def forward(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner.forward(with_b10(tiles))


@dataclass
class VitEmbedder:
    """timm's ViT-S/16 fed 12 bands (B10 inserted): pooled = the class token after the final
    norm (the model's own output with no head, `forward_head(pre_logits=True)`); grid = the
    patch tokens after the same norm, as (B, 384, 14, 14)."""

    spec: ModelSpec
    weights: WeightsInfo
    module: VisionTransformer

    def forward(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.module.forward_features(with_b10(tiles))
        pooled = self.module.forward_head(tokens, pre_logits=True)
        side = tiles.shape[-1] // self.spec.grid_stride_px
        patches = tokens[:, self.module.num_prefix_tokens :]
        return pooled, patches.transpose(1, 2).reshape(len(tiles), -1, side, side)


def _resolve(
    spec: ModelSpec, function: str, choice: WeightsChoice, device: torch.device
) -> tuple[torch.nn.Module, WeightsInfo]:
    from embedders import weights

    member = weights.member(spec.pretrained_weights)
    kind = spec.pretrained_weights.partition(".")[0]
    # in_chans for random weights; pretrained ones take it from `meta["in_chans"]` (13).
    architecture = weights.torchgeo_builder(
        function, kind, in_chans=len(bands.ALL_BANDS), num_classes=0
    )
    return weights.load(spec, member, architecture, choice, device)


def build_resnet(
    spec: ModelSpec, choice: WeightsChoice, device: torch.device
) -> FilledResNetEmbedder:
    from timm.models import ResNet

    function = {2048: "resnet50", 512: "resnet18"}[spec.embed_dim]
    module, info = _resolve(spec, function, choice, device)
    if not isinstance(module, ResNet):
        raise TypeError(f"{function} returned {type(module).__name__}, not a timm ResNet")
    return FilledResNetEmbedder(spec, info, ResNetEmbedder(spec, info, module))


def build_vit(spec: ModelSpec, choice: WeightsChoice, device: torch.device) -> VitEmbedder:
    from timm.models import VisionTransformer

    module, info = _resolve(spec, "vit_small_patch16_224", choice, device)
    if not isinstance(module, VisionTransformer):
        raise TypeError(f"vit_small_patch16_224 returned {type(module).__name__}, not a ViT")
    return VitEmbedder(spec, info, module)
