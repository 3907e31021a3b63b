"""A product: what each name in `--models` is, its declared facts, and the one seam the
export flow uses (the registry of products is tasks/products/registry.py).

A product turns a chunk of points into a `ChunkResult` (embeddings, status, reason, valid
fraction). Two kinds stand behind the same Protocol, and the flow knows neither:
- model-backed (tasks/infer.py): imagery is prefetched into the inputs store, then a model
  runs on it through the tile-flattened engine;
- precomputed (e.g. tasks/products/tessera.py): embeddings that already exist are read, no forward.

Every product declares its identity: the fields its values depend on, with a version
number that is bumped on purpose. The store's layout fingerprint comes from it alone, so
rewording a description, or adding a product to the registry, never makes an existing
store unresumable. The Prefect cache and the results store are keyed by `key()`: the
identity plus the window and the data source.

Every product declares its facts (`ProductFacts`) in its own import-light module; its
fetches follow from them and the run's settings (`fetches_of`), and `share` is the one rule
by which the products of a run share fetches, for the run and `--dry-run` alike.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any, Literal, Protocol

from embedders.naming import given
from embedders.spec import InferenceOptions, WeightsChoice
from embedders.steps import TimeSteps
from tasks.options import Options
from tasks.sources import sensors
from tasks.sources.registry import SensorConfig, sensor_config

if TYPE_CHECKING:
    from tasks.plan.chunks import Chunk
    from tasks.results import ChunkResult, ModelOutput


@dataclass(frozen=True)
class Fetch:
    """Imagery a product needs in the inputs store first: one sensor configuration, its bands."""

    config: SensorConfig
    bands: tuple[str, ...]

    def point_bytes(self) -> int:
        """Bytes of float32 patches one point carries through this fetch: each band of each
        step (a time series of T steps carries T times a composite's bytes)."""
        return len(self.config.spans()) * len(self.bands) * self.config.patch_px**2 * 4


@dataclass(frozen=True)
class ProductRequest:
    """The run's settings, checked, from which each product of the run is resolved."""

    start: date
    end: date  # inclusive
    patch_px: int
    source: str  # a name of tasks.sources.registry.SOURCES
    catalog: str  # stac-catalog: the catalog, resolved (the demo catalog is built by then);
    # stac-api: the API URL; earthengine: ""
    collection: str | None  # None: each sensor's own collection for the source
    max_cloud_cover: float
    source_options: dict[str, Options]  # each source's own settings, by its name
    options: InferenceOptions
    weights: WeightsChoice  # as asked: auto, pretrained or random
    device: str  # resolved: "cpu" or "cuda"
    # each product's own settings, by its name (ProductEntry.options)
    product_options: dict[str, Options] = field(default_factory=dict)

    def own[T: Options](self, name: str, kind: type[T]) -> T:
        """Product `name`'s own settings; their defaults when none were given."""
        found = self.product_options.get(name)
        return found if isinstance(found, kind) else kind()


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
class ProductFacts:
    """What a product is, declared once in its own import-light module: what `--list-models`
    shows, what the STAC Item and the `geoemb:` attributes say, and what it fetches (with
    the run's settings: `fetches_of`), all without resolving it or loading a model.

    `check()` says what is unset or malformed: every registered product's test calls it, so
    a missing fact fails there, never as an empty field in a user's catalog.
    """

    kind: Literal["model", "precomputed"]
    sensor: str  # the sensor it fetches (tasks/sources/sensors.py); else what its values come from
    source_data: tuple[str, ...]  # URLs of the missions behind its values
    resolution_m: float  # ground sample distance of its input pixels
    tile_px: int | None  # the model's tile; None: no tiles (precomputed)
    stride_px: int  # input pixels per cell of its output grid (1: a vector per pixel)
    dim: int
    url: str  # where the model's weights or the dataset are published
    weights: str  # the weights or dataset the values come from, in words
    licence: str
    description: str
    bands: tuple[str, ...] = ()  # the bands it fetches; () when it fetches nothing
    source: str | None = None  # the source it fetches from; None: the run's --source
    composite: str = "median"  # how a fetch reduces the window's scenes to one patch
    annual: bool = False  # fetches the whole calendar year of the window, cloud filter off
    checkpoint: str = ""  # the weights' file name in the torch hub cache; "" for none
    steps: TimeSteps | None = None  # a time series: how the window becomes steps (None: one)
    # other sensors it fetches, each with its bands, each its own sensor configuration
    more_sensors: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def sensor_bands(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """Each sensor it fetches with its bands, `sensor` first; () when it fetches nothing."""
        return ((self.sensor, self.bands), *self.more_sensors) if self.bands else ()

    def check(self) -> list[str]:
        """Each fact that is unset or malformed, in words; [] when every fact is sound."""
        problems = [
            f"{name} is empty"
            for name in ("sensor", "url", "weights", "licence", "description")
            if not getattr(self, name)
        ]
        if not self.source_data or not all(u.startswith("https://") for u in self.source_data):
            problems.append(f"source_data {self.source_data} must be https:// URLs")
        if not (self.url.startswith("https://") or self.url.startswith("urn:")):
            problems.append(f"url {self.url!r} is not an https:// URL")
        if not self.resolution_m > 0 or self.dim < 1 or self.stride_px < 1:
            problems.append("resolution_m, dim and stride_px must be positive")
        if (self.tile_px is None) != (self.kind == "precomputed"):
            problems.append("a model has a tile_px, a precomputed product none")
        if self.tile_px is not None and self.tile_px % self.stride_px:
            problems.append(f"tile_px {self.tile_px} is not a multiple of stride {self.stride_px}")
        for sensor, bands in self.sensor_bands():
            if bands and sensor not in sensors.SENSORS:
                problems.append(f"it fetches the unknown sensor {sensor!r}")
            elif unknown := [b for b in bands if b not in sensors.SENSORS[sensor].bands]:
                problems.append(f"bands {unknown} are not bands of {sensor}")
        return problems


@dataclass(frozen=True)
class ProductEntry:
    """One line of the registry: the product's facts, and where its resolver is."""

    facts: ProductFacts
    resolve: str  # "module:function", called as function(name, request) -> Product
    options: type[Options] = Options  # its own settings, which reach it alone

    @property
    def card(self) -> ProductFacts:
        """What `--list-models` shows: the facts."""
        return self.facts


def identity_key(name: str, *parts: Any) -> str:
    """A short stable key: the name and a hash of the JSON-able parts."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return f"{name}-{hashlib.sha256(blob).hexdigest()[:12]}"


def one_calendar_year(name: str, request: ProductRequest) -> int:
    """The window's year, for an annual product; ProductError when it spans several."""
    if request.start.year != request.end.year:
        raise ProductError(
            f"{name} is annual, and the window {request.start}..{request.end} spans "
            f"{request.end.year - request.start.year + 1} years; export one calendar year per "
            f"run, e.g. {given(start=f'{request.end.year}-01-01', end=f'{request.end.year}-12-31')}"
        )
    return request.start.year


def fetches_of(name: str, facts: ProductFacts, request: ProductRequest) -> tuple[Fetch, ...]:
    """What product `name` fetches in this run, from its facts alone (nothing is loaded):
    the run and `--dry-run` both take a product's fetches from here. One fetch per sensor
    it reads, in `facts.sensor_bands()` order."""
    return tuple(
        _fetch(name, facts, request, sensor, bands) for sensor, bands in facts.sensor_bands()
    )


def _fetch(
    name: str, facts: ProductFacts, request: ProductRequest, sensor: str, bands: tuple[str, ...]
) -> Fetch:
    try:
        config = sensor_config(
            request,
            sensor,
            facts.resolution_m,
            source=facts.source,
            composite=facts.composite,
        )
    except ValueError as e:
        raise ProductError(f"{name}: {e}") from e
    if facts.annual:
        # Each year's image starts on 1 January: the date filter spans the whole year. An
        # annual product has no clouds: --max-cloud-cover is not its (and must not refetch it).
        year = request.start.year
        config = dataclasses.replace(
            config, start=f"{year}-01-01", end=f"{year}-12-31", max_cloud_cover=100.0
        )
    if facts.steps is not None:
        config = dataclasses.replace(config, steps=facts.steps)
        try:
            config.spans()
        except ValueError as e:
            raise ProductError(f"{name}: {e}") from e
    return Fetch(config, bands)


def share(fetches: Iterable[Fetch]) -> tuple[Fetch, ...]:
    """The one rule of shared fetches: one per sensor configuration (its canonical key),
    with the union of the bands its products read, in order of first appearance."""
    configs: dict[str, SensorConfig] = {}
    bands: dict[str, set[str]] = {}
    for fetch in fetches:
        key = fetch.config.key()
        configs.setdefault(key, fetch.config)
        bands.setdefault(key, set()).update(fetch.bands)
    return tuple(Fetch(configs[k], tuple(sorted(bands[k]))) for k in configs)
