import pytest
import torch

from embedders import registry
from embedders.spec import Embedder
from tasks.sources import sensors


def test_registry__names_are_the_specs_names() -> None:
    assert {name: e.spec.name for name, e in registry.MODELS.items()} == {
        name: name for name in registry.MODELS
    }
    assert [s.name for s in registry.list_specs()] == list(registry.MODELS)


@pytest.mark.parametrize("name", list(registry.MODELS))
def test_registry__specs_use_their_sensors_bands_and_fit_their_grid(name: str) -> None:
    spec = registry.get_spec(name)
    assert spec.sensor in ("sentinel-2-l2a", "sentinel-1")
    assert all(b in sensors.SENSORS[spec.sensor].bands for b in spec.bands)
    assert spec.tile_px % spec.grid_stride_px == 0 and spec.embed_dim > 0
    assert all(s > 0 for s in spec.norm_std)


def test_registry__unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(
        registry.UnknownModel,
        match="unknown model 'prithvi'; known models: copernicusfm_base, croma_base, ",
    ):
        registry.get_spec("prithvi")
    with pytest.raises(KeyError):
        registry.build("prithvi", "random", torch.device("cpu"))


def test_registry__build_gives_an_eval_mode_frozen_embedder(resnet18: Embedder) -> None:
    assert resnet18.spec is registry.get_spec("ssl4eo_resnet18_rgb")
    module = resnet18.module  # type: ignore[attr-defined]
    assert not module.training
    assert not any(p.requires_grad for p in module.parameters())


def test_embedders__import_nothing_from_tasks() -> None:
    """The arrow runs one way: tasks/ may import embedders/, never the reverse."""
    import ast
    from pathlib import Path

    package = Path(registry.__file__).parent
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not [n for n in names if n.split(".")[0] == "tasks"], path.name
