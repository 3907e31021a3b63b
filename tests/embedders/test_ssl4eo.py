import numpy as np
import pytest
import torch
from torchgeo.models.resnet import _ssl4eo_s12_transforms_s2_10k
from torchvision.transforms.v2 import Normalize

from embedders import registry
from embedders.spec import Embedder, ModelSpec
from embedders.ssl4eo import RESNET18_SPEC, RESNET50_SPEC, ResNetEmbedder
from tasks.sources import sensors


def _tiles(seed: int, n: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(0, 1, (n, 3, 224, 224))).float()


def test_resnet18__pooled_matches_the_library_forward(resnet18: Embedder) -> None:
    assert isinstance(resnet18, ResNetEmbedder)
    tiles = _tiles(0, 2)
    pooled, grid = resnet18.forward(tiles)
    with torch.inference_mode():
        expected = resnet18.module(tiles)
    assert pooled.shape == (2, 512) and grid.shape == (2, 512, 7, 7)
    torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grid.mean(dim=(2, 3)), expected, rtol=1e-5, atol=1e-6)


def test_resnet50__pooled_matches_the_library_forward() -> None:
    embedder = registry.build("ssl4eo_resnet50_rgb", "random", torch.device("cpu"))
    assert isinstance(embedder, ResNetEmbedder)
    tiles = _tiles(1, 1)
    pooled, grid = embedder.forward(tiles)
    with torch.inference_mode():
        expected = embedder.module(tiles)
    assert pooled.shape == (1, 2048) and grid.shape == (1, 2048, 7, 7)
    torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec", [RESNET18_SPEC, RESNET50_SPEC])
def test_ssl4eo__normalisation_is_torchgeos_divide_by_10000(spec: ModelSpec) -> None:
    normalize = _ssl4eo_s12_transforms_s2_10k[-1]
    assert isinstance(normalize, Normalize)
    assert (normalize.mean, normalize.std) == ([0], [10000])
    assert spec.norm_mean == (0.0,) * 3 and spec.norm_std == (10000.0,) * 3
    assert spec.bands == ("B04", "B03", "B02")
    assert all(b in sensors.BANDS for b in spec.bands)
