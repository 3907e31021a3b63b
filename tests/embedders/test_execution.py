"""How a forward runs: channels_last and torch.compile give the eager model's embeddings."""

from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch
from torch import nn

from embedders import execution
from embedders.engine import embed_images
from embedders.execution import CompileMismatch
from embedders.spec import Embedder, InferenceOptions, ModelSpec, WeightsInfo
from embedders.ssl4eo import RESNET18_SPEC

CPU = torch.device("cpu")
SMALL = replace(
    RESNET18_SPEC, name="tiny_cnn", tile_px=32, embed_dim=8, grid_stride_px=4, checkpoint=""
)


@dataclass
class TinyCnn:
    """A two-layer CNN: cheap to compile on the CPU."""

    spec: ModelSpec
    weights: WeightsInfo
    module: nn.Module

    def forward(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grid = self.module(tiles)
        return grid.mean((2, 3)), grid


def _tiny() -> TinyCnn:
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 2, 2)
    )
    return TinyCnn(SMALL, WeightsInfo("random", "seed=0"), module.eval())


@pytest.fixture(autouse=True)
def fresh() -> None:
    execution.forget_compiled()


def _images(make_image: object, n: int = 5) -> list[np.ndarray]:
    return [make_image(s, 40, 50) for s in range(n)]  # type: ignore[operator]


def test_channels_last__auto_only_for_convolutional_models_on_cuda() -> None:
    auto = InferenceOptions()
    vit = replace(RESNET18_SPEC, convolutional=False)
    cuda = torch.device("cuda")
    assert execution.uses_channels_last(RESNET18_SPEC, auto, cuda)
    assert not execution.uses_channels_last(RESNET18_SPEC, auto, CPU)
    assert not execution.uses_channels_last(vit, auto, cuda)
    assert execution.uses_channels_last(vit, replace(auto, channels_last="on"), CPU)
    assert not execution.uses_channels_last(RESNET18_SPEC, replace(auto, channels_last="off"), cuda)


def test_channels_last__gives_the_contiguous_embeddings(make_image: object) -> None:
    options = InferenceOptions(input_prep="tile", output="grid", batch_size=4)
    plain = embed_images(_tiny(), _images(make_image), options, CPU)
    last = embed_images(_tiny(), _images(make_image), replace(options, channels_last="on"), CPU)
    np.testing.assert_allclose(last.pooled, plain.pooled, rtol=1e-5, atol=1e-6)
    assert last.grid is not None and plain.grid is not None
    np.testing.assert_allclose(last.grid, plain.grid, rtol=1e-5, atol=1e-6)


def test_compile__once_per_model_gives_the_eager_embeddings(make_image: object) -> None:
    model = _tiny()
    options = InferenceOptions(input_prep="tile", batch_size=4)
    eager = embed_images(model, _images(make_image), options, CPU)
    first = embed_images(model, _images(make_image), replace(options, compile=True), CPU)
    again = embed_images(model, _images(make_image), replace(options, compile=True), CPU)
    assert first.compile_s > 0 and again.compile_s == 0  # compiled once, then reused
    np.testing.assert_allclose(first.pooled, eager.pooled, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(again.pooled, first.pooled)


def test_compile__a_compiled_forward_that_differs_from_eager_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def miscompile(forward: object) -> object:
        def wrong(tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            pooled, grid = forward(tiles)  # type: ignore[operator]
            return -pooled, grid

        return wrong

    monkeypatch.setattr(torch, "compile", miscompile)
    model: Embedder = _tiny()
    with pytest.raises(
        CompileMismatch, match=r"tiny_cnn compiled on cpu in fp32.*without inference › Compile"
    ):
        execution.prepare(model, InferenceOptions(compile=True), CPU, 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_execution__cuda_channels_last_and_compile_match_eager(make_image: object) -> None:
    from embedders import registry

    cuda = torch.device("cuda")
    model = registry.build("ssl4eo_resnet18_rgb", "random", cuda)
    images = [make_image(s, 230, 230) for s in range(6)]  # type: ignore[operator]
    eager = InferenceOptions(input_prep="tile", batch_size=8, channels_last="off")
    a = embed_images(model, images, eager, cuda)
    b = embed_images(model, images, replace(eager, channels_last="auto"), cuda)
    c = embed_images(model, images, replace(eager, compile=True), cuda)
    np.testing.assert_allclose(b.pooled, a.pooled, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(c.pooled, a.pooled, rtol=1e-4, atol=1e-5)
    assert c.compile_s > 0
