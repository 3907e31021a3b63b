"""Google's Satellite Embedding (AlphaEarth Foundations), annual 64-d embeddings at 10 m,
precomputed, fetched through Earth Engine.

GOOGLE/SATELLITE_EMBEDDING/V1/ANNUAL holds one image per year and UTM zone, 64 bands
A00..A63, each pixel a unit-length vector (tasks/sources/sensors.py). The product declares one fetch
of those bands through the Earth Engine source, as a mosaic of the images of the window's
calendar year on each point's own UTM grid, so the prefetch stage fetches it like any imagery
(retries, resume, request counts); `produce` pools the inputs store's patches with no model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from embedders.spec import OutputKind, Status
from tasks.products.product import (
    Fetch,
    ProductEntry,
    ProductFacts,
    ProductRequest,
    fetches_of,
    identity_key,
    one_calendar_year,
)
from tasks.sources.registry import SensorConfig
from tasks.sources.sensors import SATELLITE_EMBEDDING

if TYPE_CHECKING:  # the inputs and results stores are imported when gse runs, not listed
    from tasks.plan.chunks import Chunk
    from tasks.results import ChunkResult, ModelOutput

DIM = 64
RESOLUTION_M = 10.0
BANDS: tuple[str, ...] = tuple(SATELLITE_EMBEDDING.bands)
CATALOG_URL = "https://developers.google.com/earth-engine/datasets/catalog/GOOGLE_SATELLITE_EMBEDDING_V1_ANNUAL"
# Bump when a change alters the values this product writes (pooling, masking, mosaicking).
VERSION = 1

# One fetch of the 64 bands through Earth Engine, whatever the run's source: a mosaic of
# the images of the window's calendar year on each point's own UTM grid.
FACTS = ProductFacts(
    kind="precomputed",
    sensor=SATELLITE_EMBEDDING.name,
    source_data=SATELLITE_EMBEDDING.source_data,
    resolution_m=RESOLUTION_M,
    tile_px=None,
    stride_px=1,
    dim=DIM,
    url=CATALOG_URL,
    weights="Google Satellite Embedding V1 annual (Earth Engine)",
    licence="CC-BY-4.0",
    description="Google's annual 64-d unit-length embeddings (AlphaEarth Foundations), "
    "through Earth Engine",
    bands=BANDS,
    source="earthengine",
    composite="mosaic",
    annual=True,
)
ENTRY = ProductEntry(FACTS, "tasks.products.gse:resolve")


@dataclass(frozen=True)
class SatelliteEmbeddingProduct:
    name: str
    config: SensorConfig
    year: int
    output_kind: OutputKind
    uses_device: bool = False

    @property
    def fetches(self) -> tuple[Fetch, ...]:
        return (Fetch(self.config, BANDS),)

    def identity(self) -> dict[str, Any]:
        return {
            "product": "gse",
            "version": VERSION,
            "collection": self.config.collection,
            "composite": self.config.composite,
            "dim": DIM,
            "resolution_m": RESOLUTION_M,
            "patch_px": self.config.patch_px,
            "output": self.output_kind,
            "pooling": "mean of the valid pixels of the patch, re-scaled to unit length "
            "(each pixel's embedding is a unit vector)",
        }

    def key(self) -> str:
        return identity_key(self.name, self.identity(), self.year, self.config.key())

    def output(self) -> ModelOutput:
        from tasks.results import ModelOutput

        grid = (self.config.patch_px, self.config.patch_px) if self.output_kind == "grid" else None
        provenance = {
            "source": "earthengine",
            "model_url": CATALOG_URL,
            "collection": self.config.collection,
            "year": "the calendar year of each time entry (the Satellite Embedding is annual)",
            "description": "Google Satellite Embedding V1 (AlphaEarth Foundations) through "
            "Earth Engine",
        }
        patch = self.config.patch_px
        return ModelOutput(self.name, DIM, grid, self.identity(), provenance, FACTS, patch)

    def describe(self) -> str:
        return f"precomputed Google Satellite Embedding {self.config.collection}, year {self.year}"

    def warning(self) -> str | None:
        return None

    def produce(self, chunk: Chunk, inputs_path: str) -> ChunkResult:
        from tasks.inputs import read_patches

        patches = read_patches(inputs_path, self.config, chunk, BANDS)
        values = np.stack([patches.bands[b] for b in BANDS], axis=1)  # (n, 64, N, N)
        reasons = [
            patches.notes.get(p.id, f"no Satellite Embedding pixel in {self.year}")
            for p in chunk.points
        ]
        return summarise(values, reasons, grid=self.output_kind == "grid")


def summarise(values: np.ndarray, reasons: list[str], *, grid: bool) -> ChunkResult:
    """Per point: the mean of its valid pixels re-scaled to unit length (or the map), status,
    and the reason when no pixel is valid. A pixel is valid where all 64 values are."""
    from tasks.results import ChunkResult

    n_points = values.shape[0]
    flat = values.reshape(n_points, DIM, -1)  # (n, 64, N*N)
    valid = np.isfinite(flat).all(axis=1)  # (n, N*N)
    count = valid.sum(axis=1)
    total = np.where(valid[:, None, :], flat.astype(np.float64), 0.0).sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count[:, None]
        pooled = (mean / np.linalg.norm(mean, axis=1, keepdims=True)).astype(np.float32)
    pooled[count == 0] = np.nan
    status = np.where(count > 0, Status.OK, Status.NODATA).astype(np.int8)
    if grid:
        embeddings = np.where(valid.reshape(n_points, 1, *values.shape[2:]), values, np.nan)
    else:
        embeddings = pooled
    return ChunkResult(
        embeddings.astype(np.float32),
        status,
        ["" if count[i] else reasons[i] for i in range(n_points)],
        (count / flat.shape[2]).astype(np.float32),
    )


def resolve(name: str, request: ProductRequest) -> SatelliteEmbeddingProduct:
    """The Satellite Embedding for this run: the window's one calendar year, through Earth
    Engine whatever the run's source (its fetch follows from FACTS)."""
    year = one_calendar_year(name, request)
    (fetch,) = fetches_of(name, FACTS, request)
    return SatelliteEmbeddingProduct(name, fetch.config, year, request.options.output)
