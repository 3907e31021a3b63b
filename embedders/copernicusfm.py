"""Copernicus-FM ViT-Base/16 (torchgeo), spectral mode: bands told by wavelength and width.

Wang et al., "Towards a Unified Copernicus Foundation Model for Earth Vision"
(https://arxiv.org/abs/2503.11849); weights CopernicusFM_Base_Weights.CopernicusFM_ViT.
Its dynamic patch embedding takes each band's centre wavelength and bandwidth in nm
(embedders/bands.py). It also takes each tile's longitude, latitude, time and area; an
embedder sees tiles only, so all four are NaN, for which the model uses its learned
"unknown" tokens.

Normalisation: torchgeo's transforms for these weights are `nn.Identity()`; swath uses the
SSL4EO-S12 Sentinel-2 statistics torchgeo declares (`_mean_s2`, `_std_s2`), as for DOFA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from embedders import bands
from embedders.spec import ModelSpec, WeightsChoice, WeightsInfo

if TYPE_CHECKING:  # the model libraries are imported when a model is built, not listed
    import torch
    from torchgeo.models import CopernicusFM

_BANDS = ("B02", "B03", "B04", "B07", "B11", "B12")  # as dofa_base: the offline sample's

SPEC = ModelSpec(
    name="copernicusfm_base",
    family="copernicusfm",
    description="Copernicus-FM ViT-Base/16, spectral patch embedding, no metadata (torchgeo)",
    sensor="sentinel-2-l2a",
    bands=_BANDS,
    resolution_m=10,
    tile_px=224,
    embed_dim=768,
    grid_stride_px=16,
    norm_mean=bands.s2_means(_BANDS),
    norm_std=bands.s2_stds(_BANDS),
    pretrained_weights="CopernicusFM_Base_Weights.CopernicusFM_ViT",
    licence="not verified here; see https://github.com/zhu-xlab/Copernicus-FM",
    weights_url="https://huggingface.co/torchgeo/copernicus-fm/resolve/f395812cc990ba25a451dbb9c9e6d95c8482947e/CopernicusFM_ViT_base_varlang-085350e4.pth",
)


@dataclass
class CopernicusFMEmbedder:
    """pooled = the model's own `forward_features` (fc_norm of the mean patch token);
    grid = fc_norm of each patch token, read from the last block's output by a hook, so
    that nothing of the model is re-implemented here."""

    spec: ModelSpec
    weights: WeightsInfo
    module: CopernicusFM
    wavelengths_nm: tuple[float, ...]
    bandwidths_nm: tuple[float, ...]

    def pooled_features(self, tiles: torch.Tensor) -> torch.Tensor:
        """The library's forward_features on these tiles, with no metadata (NaN)."""
        import torch

        metadata = torch.full((len(tiles), 4), float("nan"), device=tiles.device)
        return self.module.forward_features(
            tiles, metadata, list(self.wavelengths_nm), list(self.bandwidths_nm)
        )

    def forward(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:

        seen: list[torch.Tensor] = []
        last = self.module.blocks[-1]
        hook = last.register_forward_hook(lambda _m, _i, out: seen.append(out))
        try:
            pooled = self.pooled_features(tiles)
        finally:
            hook.remove()
        side = tiles.shape[-1] // self.spec.grid_stride_px
        cells = self.module.fc_norm(seen[-1][:, 1:])
        return pooled, cells.transpose(1, 2).reshape(len(tiles), -1, side, side)


def build(spec: ModelSpec, choice: WeightsChoice, device: torch.device) -> CopernicusFMEmbedder:
    from torchgeo.models import CopernicusFM

    from embedders import weights

    member = weights.member(spec.pretrained_weights)
    architecture = weights.torchgeo_builder(
        "copernicusfm_base", "CopernicusFM_Base_Weights", img_size=spec.tile_px
    )
    module, info = weights.load(spec, member, architecture, choice, device)
    if not isinstance(module, CopernicusFM):
        raise TypeError(f"copernicusfm_base returned {type(module).__name__}, not CopernicusFM")
    waves = tuple(round(1000 * w, 3) for w in bands.wavelengths_um(spec.bands))
    return CopernicusFMEmbedder(spec, info, module, waves, bands.bandwidths_nm(spec.bands))
