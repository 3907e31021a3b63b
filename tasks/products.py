"""Products: what each name in `--models` is, and the one seam the export flow uses.

A product turns a chunk of points into a `ChunkResult` (embeddings, status, reason, valid
fraction). Two kinds stand behind the same Protocol, and the flow knows neither:
- model-backed (tasks/infer.py): imagery is prefetched into the inputs store, then a model
  runs on it through the tile-flattened engine;
- precomputed (e.g. tasks/tessera.py): embeddings that already exist are read, no forward.

Every product declares its identity: the fields its values depend on, with a version
number that is bumped on purpose. The store's layout fingerprint comes from it alone, so
rewording a description, or adding a product to the registry, never makes an existing
store unresumable. The Prefect cache and the results store are keyed by `key()`: the
identity plus the window and the data source.

Importing this module imports no model library and no data-access library: listing the
products (`--list-models`, the Prefect UI's dropdown) stays fast.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any, Protocol

from embedders import registry
from embedders.spec import InferenceOptions, ModelSpec, WeightsChoice
from tasks.sensors import SATELLITE_EMBEDDING

if TYPE_CHECKING:
    from tasks.chunks import Chunk
    from tasks.options import Options
    from tasks.results import ChunkResult, ModelOutput
    from tasks.sources import SensorConfig


@dataclass(frozen=True)
class Fetch:
    """Imagery a product needs in the inputs store first: one sensor configuration, its bands."""

    config: SensorConfig
    bands: tuple[str, ...]


@dataclass(frozen=True)
class ProductRequest:
    """The run's settings, checked, from which each product of the run is resolved."""

    start: date
    end: date  # inclusive
    patch_px: int
    source: str  # a name of tasks.sources.SOURCES
    catalog: str  # stac-catalog: the catalog, resolved (the demo catalog is built by then);
    # stac-api: the API URL; earthengine: ""
    collection: str | None  # None: each sensor's own collection for the source
    max_cloud_cover: float
    source_options: dict[str, Options]  # each source's own settings, by its name
    tessera_store: str
    options: InferenceOptions
    weights: WeightsChoice  # as asked: auto, pretrained or random
    device: str  # resolved: "cpu" or "cuda"


class ProductError(ValueError):
    """A product cannot run with these settings; the message names the fix (exit 2)."""


class Product(Protocol):
    """One name of `--models`, resolved for a run."""

    name: str

    @property
    def fetches(self) -> tuple[Fetch, ...]:
        """Imagery to prefetch before `produce`; empty for precomputed products."""
        ...

    @property
    def uses_device(self) -> bool:
        """Whether `produce` runs a model on the run's device (a GPU: one at a time)."""
        ...

    def identity(self) -> dict[str, Any]:
        """What the values depend on, JSON-able, with a version; no paths, no window."""
        ...

    def key(self) -> str:
        """Names this product's results for one window: identity + window + data source."""
        ...

    def output(self) -> ModelOutput:
        """The product's variables in the store, its identity and provenance."""
        ...

    def describe(self) -> str:
        """Where the values come from, in one line (weights, dataset, year)."""
        ...

    def warning(self) -> str | None:
        """Something a user must not miss about these values (random weights), or None."""
        ...

    def produce(self, chunk: Chunk, inputs_path: str) -> ChunkResult:
        """The chunk's results; imagery, if any, is read from the inputs store."""
        ...


@dataclass(frozen=True)
class Card:
    """What `--list-models` shows of a product, without importing anything heavy."""

    kind: str  # "model" or "precomputed"
    sensor: str
    bands: tuple[str, ...]
    resolution_m: float
    tile_px: int | None  # None: no tiles (precomputed)
    dim: int
    weights: str  # the weights or dataset the values come from
    licence: str
    description: str
    source: str | None = None  # where its imagery comes from; None: the run's --source
    checkpoint: str = ""  # the weights' file name in the torch hub cache; "" for none


@dataclass(frozen=True)
class ProductEntry:
    card: Card
    resolve: str  # "module:function", called as function(name, request) -> Product


def model_card(spec: ModelSpec) -> Card:
    return Card(
        "model",
        spec.sensor,
        spec.bands,
        spec.resolution_m,
        spec.tile_px,
        spec.embed_dim,
        spec.pretrained_weights,
        spec.licence,
        spec.description,
        checkpoint=spec.checkpoint,
    )


TESSERA_CARD = Card(
    kind="precomputed",
    sensor="sentinel-1 + sentinel-2 (annual)",
    bands=(),
    resolution_m=10,
    tile_px=None,
    dim=128,
    weights="Tessera v1.1 (geotessera's public Zarr store; --tessera-store picks another)",
    licence="CC-BY-4.0",
    description="Tessera annual embeddings, int8 with per-pixel scales, read through geotessera",
)

GSE_CARD = Card(
    kind="precomputed",
    sensor="satellite-embedding",
    bands=tuple(SATELLITE_EMBEDDING.bands),
    resolution_m=10,
    tile_px=None,
    dim=64,
    weights="Google Satellite Embedding V1 annual (Earth Engine)",
    licence="CC-BY-4.0",
    description="Google's annual 64-d unit-length embeddings (AlphaEarth Foundations), "
    "through Earth Engine",
    source="earthengine",
)

# Every product, by name: each model of the model registry, then the precomputed products.
PRODUCTS: dict[str, ProductEntry] = {
    **{
        name: ProductEntry(model_card(entry.spec), "tasks.infer:resolve_model")
        for name, entry in registry.MODELS.items()
    },
    "tessera": ProductEntry(TESSERA_CARD, "tasks.tessera:resolve"),
    "gse": ProductEntry(GSE_CARD, "tasks.gse:resolve"),
}


def resolve(name: str, request: ProductRequest) -> Product:
    """The product `name` for this run. Raises ProductError (bad settings) or KeyError."""
    entry = PRODUCTS.get(name)
    if entry is None:
        known = ", ".join(PRODUCTS)
        raise ProductError(f"unknown model '{name}'; known models: {known} (see --list-models)")
    module, _, function = entry.resolve.partition(":")
    product: Product = getattr(importlib.import_module(module), function)(name, request)
    return product


def identity_key(name: str, *parts: Any) -> str:
    """A short stable key: the name and a hash of the JSON-able parts."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return f"{name}-{hashlib.sha256(blob).hexdigest()[:12]}"
