"""Tessera computed on the fly: torchgeo's Tessera pixel time-series encoder on Sentinel-2 and
Sentinel-1 series, 128-d per pixel, pooled over the patch or as a per-pixel grid, beside the
published `tessera` product (tasks/products/tessera.py) for regions and years it lacks.

Feng et al., "TESSERA: Temporal Embeddings of Surface Spectra for Earth Representation and
Analysis" (https://arxiv.org/abs/2506.20380); weights torchgeo `Tessera_Weights.TESSERA`.

Input (torchgeo `Tessera.forward`): (B, steps, 14) = Sentinel-2 in Tessera's band order
B4, B2, B3, B8, B8A, B5, B6, B7, B11, B12 and the step's day of year, then Sentinel-1 VV, VH
and its day of year, normalised with the weights' statistics (day of year left as it is:
mean 0, std 1). swath's engine (embedders/pixels.py) builds it from the time series.

Steps: 12 monthly composites of a calendar-year window (the median of each month, the window
clipped to its months), each at the day of year of its month's middle day. Upstream Tessera
samples individual acquisitions instead: the valid ones of a pixel, drawn at random with
replacement to 40 per sensor (github ucam-eo/tessera, tessera_infer/src/multi_tile_infer.py,
`sample_s2_batch`; configs: `sample_size_s2` = `sample_size_s1` = 40). Monthly composites are
swath's choice here: they read 12 composites a sensor instead of 40 single scenes, and a
month's median is rarely all cloud. The steps kind `TimeSteps("acquisitions", 40)` expresses
upstream's sampling per point (embedders/steps.py), and the engine takes each point's own
days of year; a spec declaring it is not registered, as it was not tested end to end here.
A pixel's invalid steps are filled from its valid ones, repeated in time order
(embedders/pixels.py), as upstream's sampling with replacement fills a short series.

Units. Sentinel-2: L2A digital numbers with the baseline 04.00 offset removed, as swath's
sources deliver them and as upstream's preprocessing harmonises them (tessera_preprocessing/
s2_fast_processor.py `harmonize_arr`). Sentinel-1: upstream stores `(20 log10(v) + 50) * 200`
clipped to 0..32767, where v is Planetary Computer's `sentinel-1-rtc` gamma naught in linear
power (s1_fast_processor.py `amplitude_to_db`, which calls v an amplitude); swath delivers
dB = 10 log10(v), so upstream's value is u = 400 dB + 10000, and its statistics
(mean 5484.04 / 3003.78, std 1871.23 / 1726.07, tessera_infer/src/datasets/ssl_dataset.py,
as torchgeo declares them) become, in dB, mean (m - 10000) / 400 and std s / 400:
VV -11.29 +- 4.68 dB, VH -17.49 +- 4.32 dB, the usual backscatter of land, which confirms
the reading. Not reproduced: upstream's clip (below -25 dB it stores 0, which its validity
test reads as no observation; swath keeps such values).
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

# Tessera's Sentinel-2 order (torchgeo Tessera_Weights.TESSERA meta "bands"), swath's names.
S2_BANDS = ("B04", "B02", "B03", "B08", "B8A", "B05", "B06", "B07", "B11", "B12")
# torchgeo's _S2_BAND_MEAN / _S2_BAND_STD (torchgeo/models/tessera.py, 0.10.1), from upstream.
S2_MEAN = (1711.0938, 1308.8511, 1546.4543, 3010.1293, 3106.5083,
           2068.3044, 2685.0845, 2931.5889, 2514.6928, 1899.4922)  # fmt: skip
S2_STD = (1926.1026, 1862.9751, 1803.1792, 1741.7837, 1677.4543,
          1888.7862, 1736.3090, 1715.8104, 1514.5199, 1398.4779)  # fmt: skip
# torchgeo's _S1_BAND_MEAN / _S1_BAND_STD, in upstream's units u = 400 dB + 10000 (above).
S1_MEAN_UPSTREAM = (5484.0407, 3003.7812)
S1_STD_UPSTREAM = (1871.2334, 1726.0670)
S1_DB_SCALE, S1_DB_OFFSET = 400.0, 10000.0


def s1_db_stats() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Upstream's Sentinel-1 statistics in dB: (u - 10000) / 400 is dB for u = 400 dB + 10000."""
    mean = tuple((m - S1_DB_OFFSET) / S1_DB_SCALE for m in S1_MEAN_UPSTREAM)
    return mean, tuple(s / S1_DB_SCALE for s in S1_STD_UPSTREAM)


_S1_MEAN_DB, _S1_STD_DB = s1_db_stats()

SPEC = ModelSpec(
    name="tessera_otf",
    family="tessera",
    description="Tessera pixel time-series encoder on 12 monthly Sentinel-2 + Sentinel-1 "
    "composites, computed by swath (torchgeo)",
    sensor="sentinel-2-l2a",
    bands=S2_BANDS,
    more_sensors=(("sentinel-1", S1_BANDS),),
    takes="pixel-series",
    steps=TimeSteps("monthly", 12),
    resolution_m=10,
    tile_px=1,
    embed_dim=128,
    grid_stride_px=1,
    norm_mean=S2_MEAN + _S1_MEAN_DB,
    norm_std=S2_STD + _S1_STD_DB,
    pretrained_weights="Tessera_Weights.TESSERA",
    licence="MIT (github ucam-eo/tessera)",
    weights_url="https://hf.co/isaaccorley/tessera/resolve/a8afffd0f48ccce1dab060a7c532d3fde05ae580/model-44f8d7fe.pth",
)


@dataclass
class TesseraEmbedder:
    """torchgeo's Tessera: (B, steps, 14) normalised pixel series to (B, 128); the grid of
    one pixel is its vector, (B, 128, 1, 1)."""

    spec: ModelSpec
    weights: WeightsInfo
    module: nn.Module

    def forward(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.module(tiles)
        return pooled, pooled[:, :, None, None]


def build(spec: ModelSpec, choice: WeightsChoice, device: torch.device) -> TesseraEmbedder:
    from torchgeo.models import Tessera

    from embedders import weights

    member = weights.member(spec.pretrained_weights)
    architecture = weights.torchgeo_builder("tessera", "Tessera_Weights")
    module, info = weights.load(spec, member, architecture, choice, device)
    if not isinstance(module, Tessera):
        raise TypeError(f"torchgeo.models.tessera returned {type(module).__name__}, not Tessera")
    return TesseraEmbedder(spec, info, module)
