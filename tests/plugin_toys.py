"""A toy model and a toy precomputed product, as another package would ship them: the
source of their modules, which a test writes into an installed distribution (a module
and a dist-info with entry points) and runs `python -m flows.export` on."""

# A model with no weights enum: a 16 px convolution whose checkpoint the test writes into
# the hub cache (embedders.weights.load_local), pooled as the mean of its grid.
TOY_MODEL = """
from dataclasses import dataclass

from embedders.spec import ModelEntry, ModelSpec, WeightsInfo

SPEC = ModelSpec(
    name="toy_model",
    family="toy",
    description="a 16 px convolution, a plugin's model",
    sensor="sentinel-2-l2a",
    bands=("B04", "B03", "B02"),
    resolution_m=10,
    tile_px=32,
    embed_dim=4,
    grid_stride_px=16,
    norm_mean=(0.0, 0.0, 0.0),
    norm_std=(10000.0, 10000.0, 10000.0),
    pretrained_weights="toy_model v1",
    licence="CC0-1.0",
    weights_url="https://example.org/toy/toy_model-v1.pt",
)
ENTRY = ModelEntry(SPEC, "toy_swath_model:build")


@dataclass
class ToyEmbedder:
    spec: ModelSpec
    weights: WeightsInfo
    module: object

    def forward(self, tiles):
        grid = self.module(tiles)
        return grid.mean(dim=(2, 3)), grid


def build(spec, choice, device):
    import torch

    from embedders import weights

    def architecture():
        return torch.nn.Conv2d(3, spec.embed_dim, spec.grid_stride_px, spec.grid_stride_px)

    module, info = weights.load_local(spec, architecture, choice, device)
    return ToyEmbedder(spec, info, module)
"""

# A precomputed product: each point's lon, lat and 1, from no imagery.
TOY_PRODUCT = """
from dataclasses import dataclass

import numpy as np

from tasks.products.product import ProductEntry, ProductFacts, identity_key

FACTS = ProductFacts(
    kind="precomputed",
    sensor="toy dataset",
    source_data=("https://example.org/toy/missions",),
    resolution_m=10.0,
    tile_px=None,
    stride_px=1,
    dim=3,
    url="https://example.org/toy/dataset",
    weights="the toy dataset",
    licence="CC0-1.0",
    description="each point's lon, lat and 1, a plugin's precomputed product",
)
ENTRY = ProductEntry(FACTS, "toy_swath_product:resolve")


@dataclass(frozen=True)
class ToyProduct:
    name: str
    patch_px: int
    fetches: tuple = ()
    uses_device: bool = False

    def identity(self):
        return {"product": "toy", "version": 1, "dim": 3}

    def key(self):
        return identity_key(self.name, self.identity())

    def output(self):
        from tasks.results import ModelOutput

        return ModelOutput(self.name, 3, None, self.identity(), {}, FACTS, self.patch_px)

    def describe(self):
        return "the toy dataset"

    def warning(self):
        return None

    def produce(self, chunk, inputs_path):
        from tasks.results import ChunkResult

        n = len(chunk.points)
        values = np.array([[p.lon, p.lat, 1.0] for p in chunk.points], np.float32)
        return ChunkResult(values, np.ones(n, np.int8), [""] * n, np.ones(n, np.float32))


def resolve(name, request):
    return ToyProduct(name, request.patch_px)
"""
