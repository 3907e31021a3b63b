"""OlmoEarth v1 (Nano, Base): torchgeo's `olmoearth_v1` on tiles of a Sentinel-2 L2A time
series (with Sentinel-1 as a second modality in `olmoearth_nano_s2s1`), 12 monthly
composites, pooled over the patch or as a grid of 8 px patches.

Herzog et al., "OlmoEarth: Stable Latent Image Modeling for Multimodal Earth Observation"
(https://arxiv.org/abs/2511.13655); weights torchgeo `OlmoEarthV1_Weights.NANO` / `.BASE`
(OlmoEarth Artifact License), architecture from the package `olmoearth_pretrain_minimal`
(0.1.5), which torchgeo imports when the model is built.

Input (`olmoearth_pretrain_minimal`, `MaskedOlmoEarthSample`): per modality an array
(B, H, W, T, C), here `sentinel2_l2a` with its 12 bands in the modality's order
(`Modality.SENTINEL2_L2A.band_order`, `S2_BANDS` below) and `sentinel1` (vv, vh); per
modality a mask (B, H, W, T, band sets) of `MaskValue.ONLINE_ENCODER` (0); and `timestamps`
(B, T, 3) = (day, month counted from 0, year) per step; v1 reads only the month (its month
embedding, `CompositeEncodings`). The encoder (`model.encoder(sample, patch_size,
fast_pass=True)`) returns tokens (B, H/p, W/p, T, band sets, D) per modality; upstream's
spatial embedding (`TokensAndMasks.pool_unmasked_tokens(MEAN, spatial_pooling=True)`) is
their mean over time and band sets, then over modalities, (B, H/p, W/p, D): swath's grid;
pooled is its mean over the tile.

swath's engine (embedders/tile_series.py) hands the forward (B, T * (C + 1), tile, tile)
tiles, step-major: each step's bands normalised with the spec's statistics, then its day of
year, from which the step's month and day are taken.

Units and normalisation. The package's normaliser (`data/normalize.py`, `Normalizer`,
std_multiplier 2) maps x to (x - (mean - 2 std)) / (4 std) with per-band statistics of its
training data (`data/norm_configs/computed.json`, copied below): Sentinel-2 L2A in digital
numbers (B02 mean 1189, B08 2755: reflectance x 10000, as swath's sources deliver L2A with
the baseline 04.00 offset removed), Sentinel-1 in dB (vv mean -11.6, vh -17.7). So the spec's
`norm_mean` is mean - 2 std and `norm_std` is 4 std in swath's own units, no conversion.

Steps: 12 monthly composites of the window (any 12 months), each at its month's middle day
(`tasks.series.Series.day_of_year` of Sentinel-2); the year is not read by v1. A step
without data of a sensor at a pixel is filled in `tile_series` (the mean of that sensor's
valid steps at the pixel), not masked: a token mask covers a whole 8 x 8 patch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from embedders.bands import S1_BANDS
from embedders.spec import ModelSpec, WeightsChoice, WeightsInfo
from embedders.steps import TimeSteps

if TYPE_CHECKING:  # the model libraries are imported when a model is built, not listed
    import torch
    from torch import nn

# Modality.SENTINEL2_L2A.band_order (olmoearth_pretrain_minimal 0.1.5, utils/constants.py).
S2_BANDS = ("B02", "B03", "B04", "B08", "B05", "B06", "B07", "B8A", "B11", "B12", "B01", "B09")
# computed.json "sentinel2_l2a" mean / std, in S2_BANDS order (rounded to 0.01 DN).
_S2_MEAN = (1188.94, 1407.77, 1513.06, 2755.48, 1890.99, 2483.78,
            2722.73, 2885.57, 2562.85, 1914.14, 1115.85, 3269.81)  # fmt: skip
_S2_STD = (1859.19, 1727.74, 1740.78, 1612.26, 1754.73, 1622.12,
           1621.82, 1611.36, 1441.55, 1328.89, 1955.70, 2651.09)  # fmt: skip
# computed.json "sentinel1" mean / std of vv, vh in dB (swath's S1_BANDS VV, VH).
_S1_MEAN = (-11.65, -17.75)
_S1_STD = (10.84, 10.22)
STD_MULTIPLIER = 2.0  # the Normalizer's default
STEPS = 12
PATCH_PX = 8  # the encoder's patch size here (its max_patch_size is 8)
# swath's sensor -> OlmoEarth's modality and its band sets in v1 (Modality.*.band_sets).
MODALITIES = {"sentinel-2-l2a": ("sentinel2_l2a", 3), "sentinel-1": ("sentinel1", 1)}


def normaliser(
    mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The Normalizer's (x - (m - 2 s)) / (4 s) as a (mean, std) pair for the engine."""
    low = tuple(m - STD_MULTIPLIER * s for m, s in zip(mean, std, strict=True))
    return low, tuple(2 * STD_MULTIPLIER * s for s in std)


_HF = "https://huggingface.co/allenai"


def _spec(size: str, dim: int, url: str, *, s1: bool = False) -> ModelSpec:
    mean, std = normaliser(_S2_MEAN + _S1_MEAN * s1, _S2_STD + _S1_STD * s1)
    return ModelSpec(
        name=f"olmoearth_{size.lower()}{'_s2s1' * s1}",
        family="olmoearth",
        description=f"OlmoEarth v1 {size} on tiles of 12 monthly Sentinel-2 L2A composites"
        f"{' and Sentinel-1 composites' * s1} (torchgeo)",
        sensor="sentinel-2-l2a",
        bands=S2_BANDS,
        more_sensors=(("sentinel-1", S1_BANDS),) if s1 else (),
        takes="tile-series",
        steps=TimeSteps("monthly", STEPS),
        resolution_m=10,
        tile_px=64,
        embed_dim=dim,
        grid_stride_px=PATCH_PX,
        norm_mean=mean,
        norm_std=std,
        pretrained_weights=f"OlmoEarthV1_Weights.{size.upper()}",
        licence="OlmoEarth Artifact License",
        weights_url=url,
    )


_NANO_URL = (
    f"{_HF}/OlmoEarth-v1-Nano/resolve/529248a4dc3c54014c56b7504641cec98de31d1c/"
    "weights-795c68419a658fd22ccf8f2e020607675f963e9ef3b93d8e368bb17646765347.pth"
)
NANO_SPEC = _spec("Nano", 128, _NANO_URL)
NANO_S2S1_SPEC = _spec("Nano", 128, _NANO_URL, s1=True)
BASE_SPEC = _spec(
    "Base",
    768,
    f"{_HF}/OlmoEarth-v1-Base/resolve/4bd1392a4539404d2c74276c39f3cb4cfff466cc/"
    "weights-551c1cc53337c6faaddead88071d7ebd2bd53ec271600fa6f0ee0a518c8b6e11.pth",
)


# The first day of each month in a year of 365 days; leap years move a month's middle by one
# day at most, far from the months' edges.
_MONTH_STARTS = (1, 32, 60, 91, 121, 152, 182, 213, 244, 274, 305, 335)


def timestamps(day_of_year: torch.Tensor) -> torch.Tensor:
    """(B, steps) days of year -> (B, steps, 3) of (day of month, month from 0, year); the
    year, which v1 does not read, is fixed."""
    import torch

    starts = torch.tensor(_MONTH_STARTS, dtype=day_of_year.dtype, device=day_of_year.device)
    doy = day_of_year.clamp(1, 365)
    month = (torch.bucketize(doy, starts, right=True) - 1).clamp(0, 11)
    day = (doy - starts[month] + 1).long()
    return torch.stack([day, month, torch.full_like(month, 2024)], -1)


def encode(encoder: nn.Module, data: dict[str, torch.Tensor], stamps: torch.Tensor) -> torch.Tensor:
    """Upstream's spatial embedding of normalised (B, H, W, T, C) arrays by modality name
    ("sentinel2_l2a", "sentinel1"): tokens pooled over time, band sets and modalities,
    (B, H/p, W/p, D)."""
    import torch
    from olmoearth_pretrain_minimal.olmoearth_pretrain_v1.nn.flexi_vit import PoolingType
    from olmoearth_pretrain_minimal.olmoearth_pretrain_v1.utils.datatypes import (
        MaskedOlmoEarthSample,
    )

    band_sets = dict(MODALITIES.values())
    fields: dict[str, torch.Tensor] = {}
    for name, x in data.items():
        fields[name] = x
        shape = (*x.shape[:4], band_sets[name])
        fields[f"{name}_mask"] = torch.zeros(shape, dtype=torch.long, device=x.device)
    sample = MaskedOlmoEarthSample(timestamps=stamps, **fields)
    tokens = encoder(sample, patch_size=PATCH_PX, fast_pass=True)["tokens_and_masks"]
    pooled: torch.Tensor = tokens.pool_unmasked_tokens(PoolingType.MEAN, spatial_pooling=True)
    return pooled


@dataclass
class OlmoEarthEmbedder:
    """OlmoEarth v1's encoder: (B, T * (C + 1), tile, tile) normalised tiles, per step its
    bands then its day of year (embedders/tile_series.py), to pooled (B, D) and the grid
    (B, D, tile / 8, tile / 8)."""

    spec: ModelSpec
    weights: WeightsInfo
    module: nn.Module  # torchgeo's OlmoEarthPretrain_v1: the pretraining model
    encoder: nn.Module  # its encoder, all of it that runs

    def forward(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, width, h, w = tiles.shape
        c = len(self.spec.channels())
        steps = tiles.reshape(b, width // (c + 1), c + 1, h, w)
        x = steps[:, :, :c].permute(0, 3, 4, 1, 2)  # (B, H, W, T, C)
        data, start = {}, 0
        for sensor, bands in self.spec.sensor_bands():
            data[MODALITIES[sensor][0]] = x[..., start : start + len(bands)]
            start += len(bands)
        doy = steps[:, :, c].amax((2, 3)).float()  # invalid pixels are 0 (tile_series)
        grid = encode(self.encoder, data, timestamps(doy))
        grid = grid.permute(0, 3, 1, 2)
        return grid.mean((2, 3)), grid


def build(spec: ModelSpec, choice: WeightsChoice, device: torch.device) -> OlmoEarthEmbedder:
    import torch

    from embedders import weights

    member = weights.member(spec.pretrained_weights)
    size = str(member.meta["model_size"])
    architecture = weights.torchgeo_builder("olmoearth_v1", "OlmoEarthV1_Weights", model_size=size)
    module, info = weights.load(spec, member, architecture, choice, device)
    if type(module).__name__ != "OlmoEarthPretrain_v1":
        raise TypeError(f"torchgeo.models.olmoearth_v1 returned {type(module).__name__}")
    encoder = getattr(module.model, "encoder", None)
    if not isinstance(encoder, torch.nn.Module):
        raise TypeError(f"OlmoEarthPretrain_v1.model.encoder is {type(encoder).__name__}")
    return OlmoEarthEmbedder(spec, info, module, encoder)
