"""Shared fixtures: one seeded random ResNet-18 and small seeded Sentinel-2-like images."""

from collections.abc import Callable
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch

from embedders import autobatch, registry
from embedders.spec import Embedder


@pytest.fixture(autouse=True)
def fresh_auto_batch_sizes() -> None:
    """Every test probes "auto" afresh: no batch size cached by an earlier test."""
    autobatch.forget_batch_sizes()


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub under tmp_path; downloads fail as they do offline."""

    def no_network(url: str, *args: object, **kwargs: object) -> None:
        raise URLError("offline in tests")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    assert Path(torch.hub.get_dir()) == tmp_path / "hub"
    return tmp_path / "hub"


@pytest.fixture(scope="session")
def resnet18() -> Embedder:
    return registry.build("ssl4eo_resnet18_rgb", "random", torch.device("cpu"))


def _image(seed: int, height: int, width: int, bands: int = 3) -> np.ndarray:
    """Smooth, distinct fields in Sentinel-2 digital numbers (0..~4000), float32."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((bands, height, width), dtype=np.float32)
    for b in range(bands):
        fy, fx = rng.uniform(0.01, 0.08, 2)
        wave = np.sin(fy * yy + rng.uniform(0, 6.28)) * np.cos(fx * xx)
        out[b] = 1500 + 1000 * wave + rng.normal(0, 150, (height, width))
    return out


@pytest.fixture
def make_image() -> Callable[..., np.ndarray]:
    """make_image(seed, height, width, bands=3) -> (C, H, W) float32 image."""
    return _image
