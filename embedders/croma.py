"""CROMA ViT-Base/8, optical branch (torchgeo), on 12 Sentinel-2 bands at 120 px.

Fuller et al., "CROMA: Remote Sensing Representations with Contrastive Radar-Optical
Masked Autoencoders" (https://arxiv.org/abs/2311.00566); weights CROMABase_Weights.CROMA_VIT.
The optical encoder takes 12 bands, Sentinel-2 without the cirrus band B10 (CROMA's README:
"Sentinel-2 must be 12 channels (remove the cirrus band if necessary)"), so it runs on
Level-2A's 12 bands as they are.

Normalisation: torchgeo's transforms for these weights are `nn.Identity()`; CROMA's README
maps each band to [0, 1] by (x - (mean - 2 std)) / (4 std), clipped, with mean and std over
the data at hand. swath takes mean and std from the SSL4EO-S12 Sentinel-2 statistics
torchgeo declares (`_mean_s2`, `_std_s2`: CROMA pretrained on SSL4EO-S12), so a tile's
embedding does not depend on which other tiles share its batch: the spec z-scores with
them, and the forward does the rest of CROMA's map, ((z + 2) / 4) clipped to [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from embedders import bands
from embedders.spec import ModelSpec, WeightsChoice, WeightsInfo

if TYPE_CHECKING:  # the model libraries are imported when a model is built, not listed
    import torch
    from torchgeo.models import CROMA

_BANDS = bands.L2A_BANDS

SPEC = ModelSpec(
    name="croma_base",
    family="croma",
    description="CROMA ViT-Base/8 optical encoder, pretrained on SSL4EO-S12 S1+S2 (torchgeo)",
    sensor="sentinel-2-l2a",
    bands=_BANDS,
    resolution_m=10,
    tile_px=120,  # CROMA's pretraining size; its ALiBi attention bias is built for it
    embed_dim=768,
    grid_stride_px=8,
    norm_mean=bands.s2_means(_BANDS),
    norm_std=bands.s2_stds(_BANDS),
    pretrained_weights="CROMABase_Weights.CROMA_VIT",
    licence="not verified here; see https://github.com/antofuller/CROMA",
    weights_url="https://hf.co/torchgeo/croma/resolve/387883f08af79d777167519c57cd826eda89a16f/CROMA_base-0238d814.pt",
)


def croma_input(tiles: torch.Tensor) -> torch.Tensor:
    """z-scored tiles -> CROMA's [0, 1] input: (x - (mean - 2 std)) / (4 std), clipped."""
    return ((tiles + 2.0) / 4.0).clamp(0.0, 1.0)


@dataclass
class CromaEmbedder:
    """pooled = `optical_GAP` (the GAP-FFN head over the mean patch encoding, as CROMA
    pools); grid = `optical_encodings`, the 15 x 15 patch encodings before that head."""

    spec: ModelSpec
    weights: WeightsInfo
    module: CROMA

    def forward(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.module(x_optical=croma_input(tiles))
        side = tiles.shape[-1] // self.spec.grid_stride_px
        grid = out["optical_encodings"].transpose(1, 2).reshape(len(tiles), -1, side, side)
        return out["optical_GAP"], grid


def build(spec: ModelSpec, choice: WeightsChoice, device: torch.device) -> CromaEmbedder:
    from torchgeo.models import CROMA

    from embedders import weights

    member = weights.member(spec.pretrained_weights)
    architecture = weights.torchgeo_builder(
        "croma_base", "CROMABase_Weights", modalities=["optical"], image_size=spec.tile_px
    )
    module, info = weights.load(spec, member, architecture, choice, device)
    if not isinstance(module, CROMA):
        raise TypeError(f"croma_base returned {type(module).__name__}, not CROMA")
    return CromaEmbedder(spec, info, module)
