"""The libraries' own forwards, per embedder class: what test_catalog compares each
model's pooled output with, on the same normalised input. A model of swath's own with a
library behind it adds its reference here; a model with none is checked by its own test."""

import torch
from torchgeo.models.resnet import _mean_s2

from embedders.bands import dofa_wavelengths_um
from embedders.copernicusfm import CopernicusFMEmbedder
from embedders.croma import CromaEmbedder
from embedders.dofa import DofaEmbedder
from embedders.panopticon import PanopticonEmbedder
from embedders.scalemae import ScaleMAEEmbedder
from embedders.spec import Embedder
from embedders.ssl4eo import ResNetEmbedder
from embedders.ssl4eo_ms import FilledResNetEmbedder, VitEmbedder
from tasks.sources import sensors


def _b10_inserted(tiles: torch.Tensor) -> torch.Tensor:
    """The 13 L1C bands in ESA order: B10 = its SSL4EO-S12 mean, normalised like the rest."""
    fill = torch.full_like(tiles[:, :1], _mean_s2[sensors.ALL_BANDS.index("B10")] / 10000)
    return torch.cat((tiles[:, :10], fill, tiles[:, 10:]), dim=1)


def _croma(m: torch.nn.Module, tiles: torch.Tensor, optical: int) -> torch.Tensor:
    """CROMA's README map, (x - (mean - 2 std)) / (4 std) clipped to [0, 1], then its
    forward: optical bands first, then VV, VH (as pretrain_croma.py stacks them); the joint
    encoder's pooled output where both are read."""
    x = ((tiles * 1.0 + 2.0) / 4.0).clamp(0, 1)
    if not optical:
        return m(x_sar=x)["sar_GAP"]
    if "sar" not in m.modalities:
        return m(x_optical=x)["optical_GAP"]
    return m(x_sar=x[:, optical:], x_optical=x[:, :optical])["joint_GAP"]


def _reference(embedder: Embedder, tiles: torch.Tensor) -> torch.Tensor:
    """The library's own forward on `tiles`, normalised as the spec says."""
    m = embedder.module  # type: ignore[attr-defined]
    if isinstance(embedder, ResNetEmbedder):
        return m(tiles)
    if isinstance(embedder, FilledResNetEmbedder | VitEmbedder):
        return m(_b10_inserted(tiles))
    if isinstance(embedder, DofaEmbedder):
        return m.forward_features(tiles, list(dofa_wavelengths_um(embedder.spec.bands)))
    if isinstance(embedder, CromaEmbedder):
        return _croma(m, tiles, len(embedder.spec.bands) if "optical" in m.modalities else 0)
    if isinstance(embedder, PanopticonEmbedder):
        nm = torch.tensor([1000 * w for w in sensors.wavelengths_um(embedder.spec.bands)])
        return m({"imgs": tiles, "chn_ids": nm.repeat(len(tiles), 1)})
    if isinstance(embedder, CopernicusFMEmbedder):
        bands = embedder.spec.bands
        meta = torch.full((len(tiles), 4), float("nan"))
        nm = [1000 * w for w in sensors.wavelengths_um(bands)]
        return m(tiles, meta, nm, [sensors.S2_BANDWIDTH_NM[b] for b in bands])
    if isinstance(embedder, ScaleMAEEmbedder):
        return m(tiles)
    raise AssertionError(f"no library reference for {type(embedder).__name__}: add one")


# Every embedder class that has a library reference above.
REFERENCES: tuple[type, ...] = (
    ResNetEmbedder,
    FilledResNetEmbedder,
    VitEmbedder,
    DofaEmbedder,
    CromaEmbedder,
    PanopticonEmbedder,
    CopernicusFMEmbedder,
    ScaleMAEEmbedder,
)


def library_pooled(embedder: Embedder, tiles: torch.Tensor) -> torch.Tensor:
    """The library's own forward on `tiles`, normalised as the spec says."""
    return _reference(embedder, tiles)
