"""Per family: normalisation sourced from torchgeo, and a fake checkpoint in the hub cache
that is loaded (safely) and changes the output."""

import pathlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchgeo.models.resnet import _mean_s2, _std_s2
from torchvision.transforms.v2 import Normalize

from embedders import registry, scalemae
from embedders.croma import croma_input
from embedders.spec import Embedder, ModelSpec
from embedders.weights import WeightsUnavailable, checkpoint_path, member
from tasks.sources import sensors
from tests.embedders.host_reference import normalise

CPU = torch.device("cpu")
Checkpoint = Callable[[Embedder], object]


def _s2_stats(spec: ModelSpec) -> tuple[tuple[float, ...], tuple[float, ...]]:
    index = [sensors.ALL_BANDS.index(b) for b in spec.bands]
    return tuple(_mean_s2[i] for i in index), tuple(_std_s2[i] for i in index)


@pytest.mark.parametrize(
    "name", ["dofa_large", "croma_base", "panopticon_base", "copernicusfm_base"]
)
def test_normalisation__is_torchgeos_ssl4eo_s2_statistics_where_the_weights_leave_it_open(
    name: str,
) -> None:
    spec = registry.get_spec(name)
    transforms = member(spec.pretrained_weights).transforms
    assert isinstance(transforms, nn.Module)
    assert not [t for t in transforms.modules() if isinstance(t, Normalize)]  # none to take
    assert (spec.norm_mean, spec.norm_std) == _s2_stats(spec)


def test_croma__input_is_cromas_two_sigma_map_to_unit_range() -> None:
    spec = registry.get_spec("croma_base")
    mean, std = (np.array(v, dtype=np.float32)[:, None, None] for v in _s2_stats(spec))
    image = np.random.default_rng(0).uniform(0, 6000, (12, 8, 8)).astype(np.float32)
    expected = np.clip((image - (mean - 2 * std)) / (4 * std), 0, 1)
    got = croma_input(torch.from_numpy(normalise(image, spec)[0]))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert 0 < got.mean() < 1 and got.min() == 0 and got.max() == 1


def test_scalemae__normalisation_is_torchgeos_transform_after_the_true_colour_stretch() -> None:
    spec = registry.get_spec("scalemae_large")
    image = np.random.default_rng(1).uniform(0, 5000, (3, 6, 6)).astype(np.float32)
    eight_bit = torch.from_numpy(image * 255 / scalemae.DN_AT_255)
    expected = member(spec.pretrained_weights).transforms(eight_bit.clone())
    np.testing.assert_allclose(normalise(image, spec)[0], expected.numpy(), rtol=1e-5, atol=1e-5)


def test_sensors__bandwidths_follow_the_bands_asked_for() -> None:
    assert sensors.bandwidths_nm(("B02", "B12", "B08")) == (65, 180, 115)
    assert list(sensors.S2_BANDWIDTH_NM) == list(sensors.ALL_BANDS)


# --- fake checkpoints -------------------------------------------------------------------


@pytest.fixture
def checkpoints(hub: Path) -> Path:
    """Where torch hub keeps checkpoints (the offline hub of conftest.py)."""
    return hub / "checkpoints"


def _shifted(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every float tensor plus seeded noise: weights unlike the seed-0 random ones."""
    g = torch.Generator().manual_seed(42)
    return {
        k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
        for k, v in state.items()
    }


def _whole(e: Embedder) -> object:
    return _shifted(e.module.state_dict())  # type: ignore[attr-defined]


def _croma(e: Embedder) -> object:
    """As published: one state dict per part; torchgeo loads the parts of the branches the
    model reads (every key of each required)."""
    m = e.module  # type: ignore[attr-defined]
    parts = ["s2_encoder", "s2_GAP_FFN", "s1_encoder", "s1_GAP_FFN", "joint_encoder"]
    return {p: _shifted(getattr(m, p).state_dict()) for p in parts if hasattr(m, p)}


def _panopticon(e: Embedder) -> object:
    """As published: DINOv2's 518 px position grid (37 x 37) and a mask token."""
    state = _shifted(e.module.model.state_dict())  # type: ignore[attr-defined]
    state["pos_embed"] = torch.randn(1, 1 + 37 * 37, 768)
    state["mask_token"] = torch.zeros(1, 768)
    return state


FAMILIES: dict[str, Checkpoint] = {
    "ssl4eo_resnet18_s2_moco": _whole,
    "ssl4eo_vits16_s2_moco": _whole,
    "dofa_large": _whole,
    "croma_base": _croma,
    "croma_base_s1s2": _croma,
    "croma_base_s1": _croma,
    "croma_large_s1s2": _croma,
    "panopticon_base": _panopticon,
    "copernicusfm_base": _whole,
    "scalemae_large": _whole,
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_pretrained__a_checkpoint_in_the_hub_cache_is_loaded_and_changes_the_output(
    name: str, checkpoints: Path
) -> None:
    random = registry.build(name, "random", CPU)
    path = checkpoint_path(member(random.spec.pretrained_weights))
    path.parent.mkdir(parents=True)
    torch.save(FAMILIES[name](random), path)
    assert path.name == random.spec.checkpoint
    loaded = registry.build(name, "pretrained", CPU)
    assert loaded.weights.kind == "pretrained" and loaded.weights.file == str(path)
    spec = random.spec
    tile = torch.randn(1, len(spec.channels()), spec.tile_px, spec.tile_px)
    with torch.inference_mode():
        before, after = random.forward(tile)[0], loaded.forward(tile)[0]
    assert torch.isfinite(after).all()
    assert not torch.allclose(before, after, rtol=1e-3, atol=1e-3)


def test_pretrained__a_checkpoint_that_would_run_code_is_refused(
    checkpoints: Path, tmp_path: Path
) -> None:
    name = "ssl4eo_resnet18_s2_moco"
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[object, ...]]:
            return (pathlib.Path.touch, (marker,))

    path = checkpoint_path(member(registry.get_spec(name).pretrained_weights))
    path.parent.mkdir(parents=True)
    torch.save({"conv1.weight": Payload()}, path)
    with pytest.raises(WeightsUnavailable, match=f"the checkpoint at {path} could not be loaded"):
        registry.build(name, "auto", CPU)
    assert not marker.exists()


def test_scalemae__a_checkpoint_lacking_weights_is_refused_not_half_loaded(
    checkpoints: Path,
) -> None:
    spec = registry.get_spec("scalemae_large")
    path = checkpoint_path(member(spec.pretrained_weights))
    path.parent.mkdir(parents=True)
    torch.save({"cls_token": torch.zeros(1, 1, 1024)}, path)
    with pytest.raises(WeightsUnavailable, match=r"lacks \d+ weight\(s\) of Scale-MAE"):
        registry.build("scalemae_large", "auto", CPU)
