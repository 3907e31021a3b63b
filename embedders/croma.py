"""CROMA ViT-Base/8 (torchgeo): optical branch on 12 Sentinel-2 bands at 120 px, radar
branch on Sentinel-1 VV and VH, and both through CROMA's joint radar-optical encoder.

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

Radar: CROMA pretrained on SSL4EO-S12's Sentinel-1 GRD, which holds backscatter in dB (Earth
Engine's COPERNICUS/S1_GRD, log-scaled), VV then VH, stacked after the 12 optical bands
(upstream pretrain_croma.py: `optical_imgs = imgs[:, :12]`, `radar_imgs = imgs[:, 12:]`) and
mapped to [0, 1] by the same 2-sigma map as the optical bands (CROMA's README normalises
`sentinel_1` with the same `normalize`). swath delivers dB, so the radar channels take the
SSL4EO-S12 Sentinel-1 statistics in dB (embedders/bands.py `S1_MEAN_STD_DB`, as
`dofa_base_s1`) with no conversion, and the same ((z + 2) / 4) clip.

`croma_base_s1s2` reads Sentinel-2 (its fetch shared with `croma_base`) and Sentinel-1 on the
same grid, channels = the 12 optical bands then VV, VH (the pretraining's order); pooled =
`joint_GAP`, grid = `joint_encodings`, CROMA's multimodal representation. `croma_base_s1`
is the radar branch alone: pooled = `sar_GAP`, grid = `sar_encodings`.
`croma_large_s1s2` is `croma_base_s1s2` on ViT-Large/8 (torchgeo CROMALarge_Weights.CROMA_VIT).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
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

S1S2_SPEC = replace(
    SPEC,
    name="croma_base_s1s2",
    description="CROMA ViT-Base/8 joint radar-optical encoder on Sentinel-2 + Sentinel-1 "
    "VV, VH in dB, pretrained on SSL4EO-S12 (torchgeo)",
    more_sensors=(("sentinel-1", bands.S1_BANDS),),
    norm_mean=SPEC.norm_mean + bands.s1_means(bands.S1_BANDS),
    norm_std=SPEC.norm_std + bands.s1_stds(bands.S1_BANDS),
)

S1_SPEC = replace(
    SPEC,
    name="croma_base_s1",
    description="CROMA ViT-Base/8 radar encoder on Sentinel-1 VV, VH in dB, pretrained on "
    "SSL4EO-S12 (torchgeo)",
    sensor="sentinel-1",
    bands=bands.S1_BANDS,
    norm_mean=bands.s1_means(bands.S1_BANDS),
    norm_std=bands.s1_stds(bands.S1_BANDS),
)

LARGE_S1S2_SPEC = replace(
    S1S2_SPEC,
    name="croma_large_s1s2",
    description="CROMA ViT-Large/8 joint radar-optical encoder on Sentinel-2 + Sentinel-1 "
    "VV, VH in dB, pretrained on SSL4EO-S12 (torchgeo)",
    embed_dim=1024,
    pretrained_weights="CROMALarge_Weights.CROMA_VIT",
    checkpoint="",  # the file name of its own URL, not the base model's
    weights_url="https://huggingface.co/torchgeo/croma/resolve/92cb1a0f4e34c6c01558baf070197c01255382f6/CROMA_large-921e69ad.pt",
)

# CROMA's name for the branch that reads each sensor
_MODALITY = {"sentinel-1": "sar", SPEC.sensor: "optical"}


def modalities(spec: ModelSpec) -> list[str]:
    """CROMA's modalities a spec reads, in CROMA's order: 'sar' (Sentinel-1), 'optical'."""
    found = {_MODALITY[sensor] for sensor, _ in spec.sensor_bands()}
    return [m for m in ("sar", "optical") if m in found]


# torchgeo's builder of each weights enum
_BUILDERS = {"CROMABase_Weights": "croma_base", "CROMALarge_Weights": "croma_large"}
_OUTPUTS = {("optical",): "optical", ("sar",): "sar", ("sar", "optical"): "joint"}


def croma_input(tiles: torch.Tensor) -> torch.Tensor:
    """z-scored tiles -> CROMA's [0, 1] input: (x - (mean - 2 std)) / (4 std), clipped."""
    return ((tiles + 2.0) / 4.0).clamp(0.0, 1.0)


@dataclass
class CromaEmbedder:
    """pooled = CROMA's `<branch>_GAP` (optical and radar: the GAP-FFN head over the mean patch
    encoding; joint: the mean joint encoding, as CROMA pools); grid = `<branch>_encodings`,
    the 15 x 15 patch encodings before that head. Tiles are (B, C, T, T) in the spec's channel
    order: Sentinel-2's bands first, then VV, VH."""

    spec: ModelSpec
    weights: WeightsInfo
    module: CROMA

    def forward(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = croma_input(tiles)
        kinds = tuple(self.module.modalities)
        if kinds == ("optical",):
            out = self.module(x_optical=x)
        elif kinds == ("sar",):
            out = self.module(x_sar=x)
        else:
            optical = len(self.spec.bands)
            out = self.module(x_sar=x[:, optical:], x_optical=x[:, :optical])
        branch = _OUTPUTS[kinds]
        side = tiles.shape[-1] // self.spec.grid_stride_px
        encodings = out[f"{branch}_encodings"]
        grid = encodings.transpose(1, 2).reshape(len(tiles), -1, side, side)
        return out[f"{branch}_GAP"], grid


def build(spec: ModelSpec, choice: WeightsChoice, device: torch.device) -> CromaEmbedder:
    from torchgeo.models import CROMA

    from embedders import weights

    member = weights.member(spec.pretrained_weights)
    enum = spec.pretrained_weights.split(".")[0]
    function = _BUILDERS[enum]
    architecture = weights.torchgeo_builder(
        function, enum, modalities=modalities(spec), image_size=spec.tile_px
    )
    module, info = weights.load(spec, member, architecture, choice, device)
    if not isinstance(module, CROMA):
        raise TypeError(f"{function} returned {type(module).__name__}, not CROMA")
    return CromaEmbedder(spec, info, module)
