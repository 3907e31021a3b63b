"""Presto: torchgeo's Presto encoder on monthly Sentinel-2 and Sentinel-1 pixel series, 128-d
per pixel, pooled over the patch or as a per-pixel grid (embedders/pixels.py).

Tseng et al., "Lightweight, Pre-trained Transformers for Remote Sensing Timeseries"
(https://arxiv.org/abs/2304.14065); weights torchgeo `Presto_Weights.PRESTO` (github
nasaharvest/presto, MIT).

Input (torchgeo `presto.Encoder.forward`): x (B, steps, 17) in Presto's band order VV, VH,
B2, B3, B4, B5, B6, B7, B8, B8A, B11, B12, ERA5 temperature and precipitation, SRTM elevation
and slope, NDVI, grouped into tokens by `BANDS_GROUPS_IDX`; a mask of the same shape (1 =
missing); Dynamic World classes (B, steps); each step's month 0..11; and (lat, lon) in degrees.
What swath feeds:
- Sentinel-2 and Sentinel-1: 12 monthly composites of a calendar-year window, from the
  engine's series (bands, then each sensor's day of year, then lat/lon; `series_latlon`).
- NDVI: (B8 - B4) / (B8 + B4) of the step's normalised Sentinel-2, 0 where B8 + B4 <= 0,
  as upstream's `S1_S2_ERA5_SRTM.calculate_ndvi` (s1_s2_era5_srtm.py).
- Month of a step: the month holding its Sentinel-2 day of year (non-leap month starts; the
  steps' days are their months' middle days, far from any edge). A step the engine filled
  from another month (embedders/pixels.py) carries that month; Sentinel-1 follows the same
  step position, which may have been filled from another of its own months.
- lat/lon: the point's (tasks/infer.py), the same for every pixel of its patch: Presto
  embeds it as one token, and a patch spans well under a kilometre.
- ERA5, SRTM, Dynamic World: swath has none. They are masked as Presto's own code marks a
  missing group: mask 1 on the group's channels (value 0), and Dynamic World set to its
  "missing" class `NUM_DYNAMIC_WORLD_CLASSES` (9); the encoder drops masked tokens
  (`Encoder.mask_tokens`). It requires the same number of masked tokens in every row of a
  batch, so a pixel cannot mask Sentinel-1 alone: a pixel with no valid Sentinel-1 month is
  invalid, as for tessera_otf (the engine's rule), and invalid steps are filled, not masked.
Output: upstream's eval embedding (presto.py `Encoder.forward(eval_task=True)`): the mean of
the encoder's kept tokens (lat/lon token included) before its final LayerNorm, then that
norm. torchgeo's Encoder returns the norm of every token instead; a hook set by `build`
(`_mean_tokens`) makes its norm take the mean.

Units (upstream presto/dataops/pipelines/s1_s2_era5_srtm.py: S1_SHIFT_VALUES =
S1_DIV_VALUES = 25, S2_SHIFT_VALUES = 0, S2_DIV_VALUES = 1e4): Sentinel-1 in dB,
normalised (dB + 25) / 25; swath's Sentinel-1 is dB already. Sentinel-2 divided by 10000;
swath's is L2A digital numbers with the baseline offset removed (reflectance x 10000), so the
scale matches. Upstream's Earth Engine export (openmapflow's `create_ee_image`, not read
here) is, as we understand it, Sentinel-2 L1C top of atmosphere, not L2A: if so, a domain
gap swath does not correct (no per-band L1C/L2A mapping is published with the weights).
NDVI is scale-free and is not normalised.
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
    from torchgeo.models import Presto

# Presto's Sentinel-2 bands (torchgeo presto.BANDS_GROUPS_IDX, channels 2..11), swath's names.
S2_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
S2_SCALE = 10000.0  # upstream S2 divisor
S1_SHIFT, S1_DIV = -25.0, 25.0  # upstream (dB + 25) / 25, as mean -25, std 25
# Presto's 17 channels: S1 0..1, S2 2..11, ERA5 12..13, SRTM 14..15, NDVI 16.
N_CHANNELS, ABSENT, NDVI = 17, slice(12, 16), 16
B4, B8 = S2_BANDS.index("B04"), S2_BANDS.index("B08")
# Day of year on which each month starts, in a non-leap year.
MONTH_STARTS = (1, 32, 60, 91, 121, 152, 182, 213, 244, 274, 305, 335)

SPEC = ModelSpec(
    name="presto",
    family="presto",
    description="Presto pixel time-series encoder on 12 monthly Sentinel-2 + Sentinel-1 "
    "composites (torchgeo)",
    sensor="sentinel-2-l2a",
    bands=S2_BANDS,
    more_sensors=(("sentinel-1", S1_BANDS),),
    takes="pixel-series",
    series_latlon=True,
    steps=TimeSteps("monthly", 12),
    resolution_m=10,
    tile_px=1,
    embed_dim=128,
    grid_stride_px=1,
    norm_mean=(0.0,) * len(S2_BANDS) + (S1_SHIFT,) * 2,
    norm_std=(S2_SCALE,) * len(S2_BANDS) + (S1_DIV,) * 2,
    pretrained_weights="Presto_Weights.PRESTO",
    licence="MIT (github nasaharvest/presto)",
    weights_url="https://hf.co/torchgeo/presto/resolve/43f8d500a930772d226b309a06ec32be6dc077dd/model-e5e57c68.pth",
)


@dataclass(frozen=True)
class PrestoInput:
    """The arguments of torchgeo's `Encoder.forward`, from one batch of swath's series."""

    x: torch.Tensor  # (B, steps, 17)
    mask: torch.Tensor  # (B, steps, 17), 1 = missing
    dynamic_world: torch.Tensor  # (B, steps) long, all "missing"
    latlons: torch.Tensor  # (B, 2) degrees
    month: torch.Tensor  # (B, steps) long, 0..11


def presto_input(series: torch.Tensor) -> PrestoInput:
    """Swath's normalised series (B, steps, 16: S2 x10, its day, S1 x2, its day, lat, lon)
    in Presto's layout (see the module's note)."""
    import torch
    from torchgeo.models.presto import NUM_DYNAMIC_WORLD_CLASSES

    s2, s1 = series[:, :, :10].float(), series[:, :, 11:13].float()
    b, steps, _ = series.shape
    x = series.new_zeros((b, steps, N_CHANNELS), dtype=torch.float32)
    x[:, :, 0:2], x[:, :, 2:12] = s1, s2
    red, nir = s2[:, :, B4], s2[:, :, B8]
    total = nir + red
    x[:, :, NDVI] = torch.where(total > 0, (nir - red) / total.where(total > 0, 1.0), 0.0)
    mask = torch.zeros_like(x)
    mask[:, :, ABSENT] = 1.0
    starts = torch.tensor(MONTH_STARTS, dtype=torch.float32, device=series.device)
    month = (series[:, :, 10, None].float() >= starts).sum(dim=2) - 1
    world = torch.full((b, steps), NUM_DYNAMIC_WORLD_CLASSES, device=series.device)
    return PrestoInput(x, mask, world.long(), series[:, 0, 14:16].float(), month.clamp(0, 11))


def _mean_tokens(_norm: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor] | None:
    """A forward pre-hook: the norm takes the mean of its (B, tokens, D) input over tokens;
    a (B, D) input, already the mean (the precision guard reruns a layer on its saved input,
    embedders/layer_precision.py), is left as it is."""
    return (args[0].mean(dim=1),) if args[0].dim() == 3 else None


@dataclass
class PrestoEmbedder:
    """torchgeo's Presto encoder: (B, steps, 16) swath series to (B, 128); the grid of one
    pixel is its vector, (B, 128, 1, 1). `module` is the whole Presto, as its checkpoint,
    its encoder's final norm taking the mean of the tokens (`_mean_tokens`, set by `build`:
    a hook, so the state dict stays the checkpoint's)."""

    spec: ModelSpec
    weights: WeightsInfo
    module: Presto

    def forward(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        i = presto_input(tiles)
        encoder = self.module.encoder
        pooled, _, _ = encoder(i.x, i.dynamic_world, i.latlons, mask=i.mask, month=i.month)
        return pooled, pooled[:, :, None, None]


def build(spec: ModelSpec, choice: WeightsChoice, device: torch.device) -> PrestoEmbedder:
    from torchgeo.models import Presto

    from embedders import weights

    member = weights.member(spec.pretrained_weights)
    architecture = weights.torchgeo_builder("presto", "Presto_Weights")
    module, info = weights.load(spec, member, architecture, choice, device)
    if not isinstance(module, Presto):
        raise TypeError(f"torchgeo.models.presto returned {type(module).__name__}, not Presto")
    module.encoder.norm.register_forward_pre_hook(_mean_tokens)
    return PrestoEmbedder(spec, info, module)
