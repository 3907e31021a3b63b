"""Products: every name `--models` takes, by name, and the fetches a run of them shares.

The registry reads each model of embedders/registry.py, the precomputed products'
modules (PRECOMPUTED) and the installed `swath.products` plugins. What a product is and
the seam the export flow uses are in tasks/products/product.py (re-exported here). Importing this
module imports no model library and no data-access library: listing the products
(`--list-models`, the Prefect UI's dropdown) stays fast.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable

from embedders import plugins, registry
from embedders.spec import ModelSpec
from tasks.products.product import Fetch as Fetch
from tasks.products.product import Product as Product
from tasks.products.product import ProductEntry as ProductEntry
from tasks.products.product import ProductError as ProductError
from tasks.products.product import ProductFacts as ProductFacts
from tasks.products.product import ProductRequest as ProductRequest
from tasks.products.product import fetches_of
from tasks.products.product import identity_key as identity_key
from tasks.products.product import share as share
from tasks.sources import sensors


def model_facts(spec: ModelSpec) -> ProductFacts:
    """A model's facts, from its spec."""
    known = [sensors.SENSORS[s] for s, _ in spec.sensor_bands() if s in sensors.SENSORS]
    source_data = tuple(dict.fromkeys(url for s in known for url in s.source_data))
    return ProductFacts(
        kind="model",
        sensor=spec.sensor,
        source_data=source_data,
        resolution_m=spec.resolution_m,
        tile_px=spec.tile_px,
        stride_px=spec.grid_stride_px,
        dim=spec.embed_dim,
        url=spec.weights_url,
        weights=spec.pretrained_weights,
        licence=spec.licence,
        description=spec.description,
        bands=spec.bands,
        checkpoint=spec.checkpoint,
        steps=spec.steps,
        more_sensors=spec.more_sensors,
    )


# The precomputed products, by name: each one's module, which declares ENTRY (its facts and
# resolver) and imports nothing heavy. Adding one: its module, one line here, its test.
PRECOMPUTED: dict[str, str] = {
    "tessera": "tasks.products.tessera",
    "gse": "tasks.products.gse",
}


def _registry() -> dict[str, ProductEntry]:
    """Every product, by name: each model of the model registry, then the precomputed
    products, then those of installed `swath.products` plugins (each a ProductEntry)."""
    own: dict[str, object] = {
        name: ProductEntry(model_facts(entry.spec), "tasks.infer:resolve_model")
        for name, entry in registry.MODELS.items()
    }
    for name, module in PRECOMPUTED.items():
        own[name] = importlib.import_module(module).ENTRY
    found = plugins.merged("swath.products", own)
    if wrong := [n for n, e in found.items() if not isinstance(e, ProductEntry)]:
        raise plugins.PluginError(
            f"swath.products plugin(s) {', '.join(wrong)} are not "
            "tasks.products.product.ProductEntry objects; fix the package that declares them"
        )
    return {n: e for n, e in found.items() if isinstance(e, ProductEntry)}


def resolve(name: str, request: ProductRequest) -> Product:
    """The product `name` for this run. Raises ProductError (bad settings or unknown name)."""
    entry = PRODUCTS.get(name)
    if entry is None:
        raise ProductError(registry.unknown_model(name, PRODUCTS))
    module, _, function = entry.resolve.partition(":")
    product: Product = getattr(importlib.import_module(module), function)(name, request)
    return product


def planned_fetches(names: Iterable[str], request: ProductRequest) -> tuple[Fetch, ...]:
    """The shared fetches of a run of these products, from their facts (`--dry-run`)."""
    return share(f for name in names for f in fetches_of(name, PRODUCTS[name].facts, request))


PRODUCTS: dict[str, ProductEntry] = _registry()
