"""Weight resolution, with fake checkpoints in a temporary torch hub and no network."""

from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from torchgeo.models import ResNet18_Weights, resnet18

from embedders import registry
from embedders.spec import ModelSpec, WeightsChoice, WeightsInfo
from embedders.ssl4eo import ResNetEmbedder
from embedders.weights import WeightsUnavailable, checkpoint_path, load_local

CPU = torch.device("cpu")
MEMBER = ResNet18_Weights.SENTINEL2_RGB_MOCO
NAME = "ssl4eo_resnet18_rgb"


@pytest.fixture
def checkpoint(hub: Path) -> dict[str, torch.Tensor]:
    """A random ResNet-18 state dict (seeded apart from the models' seed) in the hub."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        state = resnet18(weights=None, in_chans=3).state_dict()
    path = hub / "checkpoints" / Path(MEMBER.url).name
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return state


def _conv1(embedder: object) -> torch.Tensor:
    assert isinstance(embedder, ResNetEmbedder)
    weight = embedder.module.conv1.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def test_checkpoint_path__is_the_hub_file_named_after_the_url(hub: Path) -> None:
    assert (
        checkpoint_path(MEMBER) == hub / "checkpoints" / "resnet18_sentinel2_rgb_moco-e3a335e3.pth"
    )


def test_pretrained__reads_the_checkpoint_in_the_hub_cache(
    hub: Path, checkpoint: dict[str, torch.Tensor]
) -> None:
    embedder = registry.build(NAME, "pretrained", CPU)
    torch.testing.assert_close(_conv1(embedder), checkpoint["conv1.weight"], rtol=0, atol=0)
    assert embedder.weights.kind == "pretrained"
    assert embedder.weights.identity == "ResNet18_Weights.SENTINEL2_RGB_MOCO"
    assert embedder.weights.file == str(checkpoint_path(MEMBER))
    assert embedder.weights.note == ""


def test_auto__uses_the_checkpoint_when_it_is_there(
    hub: Path, checkpoint: dict[str, torch.Tensor]
) -> None:
    embedder = registry.build(NAME, "auto", CPU)
    assert embedder.weights.kind == "pretrained"
    torch.testing.assert_close(_conv1(embedder), checkpoint["conv1.weight"], rtol=0, atol=0)


def test_pretrained__without_checkpoint_says_where_to_put_it(hub: Path) -> None:
    path = checkpoint_path(MEMBER)
    with pytest.raises(WeightsUnavailable) as info:
        registry.build(NAME, "pretrained", CPU)
    message = str(info.value)
    assert f"the checkpoint is not at {path}" in message
    assert "ResNet18_Weights.SENTINEL2_RGB_MOCO" in message and NAME in message
    assert "inference › Weights: random" in message
    assert isinstance(info.value.__cause__, URLError)


def test_auto__without_checkpoint_builds_random_and_says_why(hub: Path) -> None:
    auto = registry.build(NAME, "auto", CPU)
    random = registry.build(NAME, "random", CPU)
    assert auto.weights.kind == "random" and auto.weights.identity == "seed=0"
    assert auto.weights.note.startswith(
        f"pretrained checkpoint not in {checkpoint_path(MEMBER)} and download failed: "
    )
    assert "offline in tests" in auto.weights.note
    torch.testing.assert_close(_conv1(auto), _conv1(random), rtol=0, atol=0)


def test_pretrained__corrupt_checkpoint_is_an_error_even_for_auto(hub: Path) -> None:
    path = checkpoint_path(MEMBER)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    choices: list[WeightsChoice] = ["pretrained", "auto"]
    for choice in choices:
        with pytest.raises(
            WeightsUnavailable, match=f"the checkpoint at {path} could not be loaded"
        ):
            registry.build(NAME, choice, CPU)


def test_random__is_seeded_and_leaves_the_global_generator_alone() -> None:
    torch.manual_seed(99)
    before = torch.rand(1)
    torch.manual_seed(99)
    a = registry.build(NAME, "random", CPU)
    after = torch.rand(1)
    b = registry.build(NAME, "random", CPU)
    assert a.weights.kind == "random" and a.weights.identity == "seed=0"
    assert a.weights.file == "" and a.weights.note == ""
    torch.testing.assert_close(_conv1(a), _conv1(b), rtol=0, atol=0)
    assert before.item() == after.item()


# A model with no weights enum: its spec names the URL its checkpoint is published at.
LOCAL = ModelSpec(
    name="tiny_local",
    family="test",
    description="a 1x1 convolution with no weights enum",
    sensor="sentinel-2-l2a",
    bands=("B02", "B03"),
    resolution_m=10,
    tile_px=16,
    embed_dim=3,
    grid_stride_px=16,
    norm_mean=(0.0, 0.0),
    norm_std=(1.0, 1.0),
    pretrained_weights="tiny_local v1",
    weights_url="https://example.org/weights/tiny_local-v1.pt",
)


def _conv() -> torch.nn.Module:
    return torch.nn.Conv2d(2, 3, 1)


def test_load_local__reads_the_hub_checkpoint_named_by_the_url_every_key_checked(
    hub: Path,
) -> None:
    state = {"weight": torch.full((3, 2, 1, 1), 0.5), "bias": torch.tensor([1.0, 2.0, 3.0])}
    path = hub / "checkpoints" / "tiny_local-v1.pt"
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    module, info = load_local(LOCAL, _conv, "auto", CPU)
    assert info == WeightsInfo("pretrained", "tiny_local v1", file=str(path))
    assert torch.equal(module.state_dict()["bias"], state["bias"])
    assert not module.training and not any(p.requires_grad for p in module.parameters())


def test_load_local__auto_without_the_file_is_seeded_random_and_says_why(hub: Path) -> None:
    a, info = load_local(LOCAL, _conv, "auto", CPU)
    b, _ = load_local(LOCAL, _conv, "random", CPU)
    assert info.kind == "random" and "tiny_local-v1.pt" in info.note
    assert torch.equal(a.state_dict()["weight"], b.state_dict()["weight"])


def test_load_local__pretrained_without_the_file_says_where_to_put_it(hub: Path) -> None:
    with pytest.raises(WeightsUnavailable, match=r"tiny_local-v1\.pt is not there: download https"):
        load_local(LOCAL, _conv, "pretrained", CPU)


def test_load_local__a_checkpoint_of_another_architecture_is_refused(hub: Path) -> None:
    path = hub / "checkpoints" / "tiny_local-v1.pt"
    path.parent.mkdir(parents=True)
    torch.save({"weight": torch.zeros(3, 2, 1, 1)}, path)  # no bias: not half loaded
    with pytest.raises(
        WeightsUnavailable, match=r"does not load .*\"bias\".*replace it with the file at https"
    ):
        load_local(LOCAL, _conv, "auto", CPU)
