"""Imagery sources: the typed sensor configuration, the Protocol every source implements, the
registry of sources, and what a source failure means (transient: retry; permanent: fail
with the reason).

Every source delivers the same thing for the same point: an N x N patch on the point's UTM
grid, north-up, centred to the pixel, bands in the requested order, float32, on the
sensor's harmonised scale (tasks/sources/sensors.py), NaN where masked (nodata, cloud, shadow).

Importing this module imports no source library: the registry names each source's class,
imported when a source is first used.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import date
from typing import TYPE_CHECKING, Annotated, Literal, Protocol

import numpy as np
from pydantic import Field

from embedders.naming import given, setting
from embedders.plugins import merged
from embedders.steps import TimeSteps
from tasks.options import Flag, Options
from tasks.sources import sensors

if TYPE_CHECKING:
    from tasks.plan.points import Point
    from tasks.products.registry import ProductRequest

SOURCE_FLAGS = "imagery source"  # the --help section of the sources' flags
DEMO_CATALOG = "demo"  # --catalog's default: the offline Sentinel-2 sample (tasks/sources/demo.py)


class RadarOptions(Options):
    """What every source that serves Sentinel-1 takes: which orbit pass its scenes are of.
    Part of the values (SensorConfig.orbit_pass), unlike a source's access settings."""

    orbit_pass: Annotated[
        Literal["ascending", "descending"] | None,
        Flag("--orbit-pass", None, "Sentinel-1: one orbit pass only", group=SOURCE_FLAGS),
    ] = Field(
        None,
        title="Orbit pass (Sentinel-1)",
        description="Sentinel-1: read only scenes of this orbit pass (ascending or descending; "
        "STAC sat:orbit_state, Earth Engine orbitProperties_pass); default: both",
    )


class StacCatalogOptions(RadarOptions):
    """stac-catalog's own settings."""

    catalog: Annotated[
        str, Flag("--catalog", None, "stac-catalog: catalog.json path or URL", group=SOURCE_FLAGS)
    ] = Field(
        DEMO_CATALOG,
        title="STAC catalog (stac-catalog)",
        description="stac-catalog: path or URL of a static STAC catalog.json; 'demo' builds the "
        "offline Sentinel-2 sample catalog in the work directory",
    )

    def contradiction(self, owner: str, source: str) -> str | None:
        if source != owner and self.catalog != DEMO_CATALOG:
            return (
                f"{setting('catalog')} is for {given(source=owner)}, and the source is "
                f"{source}; leave {setting('catalog')} out"
            )
        return None

    def where(self) -> str:
        return self.catalog


class StacApiOptions(RadarOptions):
    """stac-api's own settings."""

    stac_url: Annotated[
        str | None,
        Flag(
            "--stac-url",
            "URL",
            "stac-api: root URL, planetary-computer or earth-search",
            group=SOURCE_FLAGS,
        ),
    ] = Field(
        None,
        title="STAC API URL (stac-api)",
        description="stac-api: the API's root URL, or planetary-computer or earth-search",
    )
    stac_signing: Annotated[
        Literal["auto", "planetary-computer", "none"], Flag("--stac-signing", group=SOURCE_FLAGS)
    ] = Field(
        "auto",
        title="Asset URL signing (stac-api)",
        description="stac-api: how asset URLs are signed; auto: Planetary Computer's tokens "
        "for its API, none elsewhere",
    )

    def contradiction(self, owner: str, source: str) -> str | None:
        if source == owner and not self.stac_url:
            return (
                f"{given(source=owner)} needs {setting('stac_url')}: the API's root URL, or "
                "planetary-computer or earth-search"
            )
        if source != owner and self.stac_url:
            return (
                f"{setting('stac_url')} is for {given(source=owner)}, and the source is "
                f"{source}; give {given(source=owner)} or leave {setting('stac_url')} out"
            )
        return None

    def where(self) -> str:
        return self.stac_url or ""


class EarthEngineOptions(RadarOptions):
    """earthengine's own settings: how to reach Earth Engine (never part of what values
    depend on), beside RadarOptions' orbit pass (which is). Holds no secret: a worker reads
    credentials itself (application default credentials, or the key file named here), so
    nothing secret travels in task parameters."""

    ee_project: Annotated[
        str | None,
        Flag("--ee-project", "ID", "earthengine: Google Cloud project", group=SOURCE_FLAGS),
    ] = Field(
        None,
        title="Google Cloud project (earthengine)",
        description="earthengine: the Google Cloud project registered for Earth Engine "
        "(default: the credentials' own project)",
    )
    ee_key_file: Annotated[
        str | None,
        Flag("--ee-key-file", "KEY.json", "earthengine: service account key", group=SOURCE_FLAGS),
    ] = Field(
        None,
        title="Service account key file (earthengine)",
        description="earthengine: a service account's JSON key file; default: application "
        "default credentials (earthengine authenticate, or gcloud auth application-default "
        "login)",
    )
    ee_url: Annotated[
        str | None,
        Flag("--ee-url", "URL", "earthengine: API endpoint (high-volume)", group=SOURCE_FLAGS),
    ] = Field(
        None,
        title="Earth Engine API URL (earthengine)",
        description="earthengine: the API endpoint; default: the high-volume endpoint",
    )
    ee_concurrency: Annotated[
        int,
        Field(ge=1, le=100),
        Flag("--ee-concurrency", "N", "earthengine: requests in flight", group=SOURCE_FLAGS),
    ] = Field(
        8,
        title="Requests in flight (earthengine)",
        description="earthengine: requests in flight at once across the whole run, 1 to 100",
    )


@dataclass(frozen=True)
class SourceEntry:
    """A source in the registry: its class ("module:Class", imported when first used) and
    its own settings, which reach it alone (as `SensorConfig.options`)."""

    impl: str
    options: type[Options] = Options
    # sensor -> the collection id it is served under by this source, beside what
    # tasks/sources/sensors.py declares for swath's own sources
    collections: dict[str, str] = field(default_factory=dict)


# Every imagery source, by the name `--source` takes. Adding a source is its module, one
# line here (or an entry point `swath.sources` of another package: embedders/plugins.py)
# and its tests.
SOURCES: dict[str, SourceEntry] = {
    "stac-catalog": SourceEntry("tasks.sources.stac_catalog:StacCatalogSource", StacCatalogOptions),
    "stac-api": SourceEntry("tasks.sources.stac_api:StacApiSource", StacApiOptions),
    "earthengine": SourceEntry("tasks.sources.earthengine:EarthEngineSource", EarthEngineOptions),
}


@functools.cache
def sources() -> dict[str, SourceEntry]:
    """Every source: swath's own and those installed packages add."""
    found = merged("swath.sources", dict(SOURCES))
    for name, entry in found.items():
        if not isinstance(entry, SourceEntry):
            raise TypeError(f"the swath.sources plugin {name!r} is not a SourceEntry")
    return found  # type: ignore[return-value]


def own_options[T: Options](config: SensorConfig, kind: type[T]) -> T:
    """The source's own settings that came with `config`; their defaults when none did."""
    return config.options if isinstance(config.options, kind) else kind()


@dataclass(frozen=True)
class SensorConfig:
    """What to fetch for every point: the hash of this names the inputs group.

    Bands are not part of it: a group holds one array per band, so models that read the
    same sensor from the same source over the same window and patch share one fetch, each
    taking its bands.
    """

    sensor: str  # e.g. "sentinel-2-l2a" (tasks/sources/sensors.py)
    catalog: str  # stac-catalog: catalog.json path or URL; stac-api: the API URL; else ""
    collection: str
    resolution_m: float
    patch_px: int
    start: str  # ISO date, inclusive
    end: str  # ISO date, inclusive
    composite: str = "median"
    source: str = "stac-catalog"  # a name of SOURCES
    max_cloud_cover: float = 100.0  # scenes cloudier than this (percent) are not read
    # Sentinel-1: only scenes of this orbit pass ("ascending" or "descending"); "": both
    orbit_pass: str = ""
    # A time series (embedders/steps.py): the window split into steps, one composite each,
    # or acquisitions drawn from it; None: one composite of the whole window
    steps: TimeSteps | None = None
    # The source's own settings (how to reach it): never part of what values depend on.
    options: Options | None = field(default=None, compare=False)

    def record(self) -> dict[str, object]:
        """Every field but the options, each number in its canonical spelling: what the inputs
        group records of its configuration."""
        fields = asdict(self)
        del fields["options"]
        if not self.orbit_pass:  # absent unless set: the keys of earlier groups stay theirs
            del fields["orbit_pass"]
        if self.steps is None:  # absent unless set, as the orbit pass
            del fields["steps"]
        else:
            fields["steps"] = self.steps.record()
        fields.update(
            resolution_m=canonical_number(self.resolution_m),
            patch_px=int(self.patch_px),
            max_cloud_cover=float(self.max_cloud_cover),
        )
        return fields

    def key(self) -> str:
        """Names the inputs group: every field but the access, catalog and window included,
        so that equal configurations share one key however their numbers are spelt."""
        blob = json.dumps(self.record(), sort_keys=True).encode()
        return f"{self.sensor}-{hashlib.sha256(blob).hexdigest()[:12]}"

    def identity(self) -> dict[str, object]:
        """What a store's values depend on across its time entries: neither the window (each
        is its own entry) nor where the catalog lies (a moved or monthly catalog is the same
        sensor configuration)."""
        return (
            {
                "sensor": self.sensor,
                "source": self.source,
                "collection": self.collection,
                "resolution_m": self.resolution_m,
                "patch_px": self.patch_px,
                "composite": self.composite,
                "max_cloud_cover": self.max_cloud_cover,
            }
            | ({"orbit_pass": self.orbit_pass} if self.orbit_pass else {})
            | ({"steps": self.steps.record()} if self.steps else {})
        )

    def spans(self) -> tuple[tuple[date, date], ...]:
        """Each step's first and last day: the window itself when it has no steps. Raises
        ValueError when the window does not hold the steps (TimeSteps.spans)."""
        start, end = date.fromisoformat(self.start), date.fromisoformat(self.end)
        return self.steps.spans(start, end) if self.steps else ((start, end),)

    def step(self, index: int) -> SensorConfig:
        """The configuration of one step: the same fetch, over the step's days only, with no
        steps of its own; every source fetches it as it fetches any window."""
        first, last = self.spans()[index]
        return replace(self, start=first.isoformat(), end=last.isoformat(), steps=None)


def canonical_number(x: float) -> float | int:
    """A number as a key spells it: a whole number as an int (10.0 -> 10), as the models'
    specs have always spelt their resolutions (so the keys of inputs groups on users' disks
    stay theirs), any other as a float."""
    return int(x) if float(x).is_integer() else float(x)


def sensor_config(
    request: ProductRequest,
    sensor: str,
    resolution_m: float,
    *,
    source: str | None = None,
    composite: str = "median",
) -> SensorConfig:
    """The configuration a product of this run fetches `sensor` with: from the run's source
    (or `source`, for a product that lives in one place), in the collection the user named
    for that source or else the sensor's own collection there (tasks/sources/sensors.py).

    Raises ValueError naming what is known when the sensor does not come from the source."""
    source = source or request.source
    mine = source == request.source
    if mine and request.collection:
        collection = request.collection
    elif sensor in sources()[source].collections:
        collection = sources()[source].collections[sensor]
    else:
        try:
            collection = sensors.default_collection(sensor, source)
        except KeyError as e:
            raise ValueError(
                f"{e.args[0]}: pick a source ({setting('source')}) that serves it"
            ) from e
    # radar sees through clouds: a cloud-cover limit would only split its inputs groups
    radar = sensor == sensors.SENTINEL_1_SENSOR
    options = request.source_options.get(source)
    orbit = options.orbit_pass if radar and isinstance(options, RadarOptions) else None
    return SensorConfig(
        sensor=sensor,
        catalog=request.catalog if mine else "",
        collection=collection,
        resolution_m=resolution_m,
        patch_px=request.patch_px,
        start=request.start.isoformat(),
        end=request.end.isoformat(),
        composite=composite,
        source=source,
        max_cloud_cover=100.0 if radar else request.max_cloud_cover,
        orbit_pass=orbit or "",
        options=options,
    )


def patch_corner(x: float, y: float, n: int, resolution_m: float) -> tuple[float, float]:
    """The top-left corner (x0, y0) of the N x N patch of the point (x, y), on its UTM grid.

    The patch is N x N pixels of the grid whose pixel edges lie on whole multiples of the
    resolution (Sentinel-2's and Tessera's grids): its middle pixel (N odd) or middle corner
    (N even) is the one nearest the point. Where four are equally near (a point on a pixel
    corner with N odd, in a pixel's middle with N even) it is the one south-east of the
    point, as a point on a pixel's edge belongs to the pixel east and south of it in GDAL's
    and rasterio's convention. The corner then moves half a pixel east and south, onto the
    grid, so no source's nearest-neighbour reading meets a pixel centre on a pixel edge.
    """
    half = n * resolution_m / 2
    x0, y0 = x - half, y + half
    if round((x0 / resolution_m) % 1.0, 6) == 0.5:
        x0 += resolution_m / 2
    if round((y0 / resolution_m) % 1.0, 6) == 0.5:
        y0 -= resolution_m / 2
    return x0, y0


@dataclass
class Patches:
    """One chunk's patches: band -> (n_points, patch_px, patch_px) float32, NaN where masked."""

    point_ids: tuple[str, ...]
    bands: dict[str, np.ndarray]
    notes: dict[str, str] = field(default_factory=dict)  # point id -> why it has no data
    requests: int = 0  # requests the source made for these patches (searches, reads)
    bytes_read: int = 0  # bytes of pixels it received
    # points whose patch took pixels from another UTM zone's scene, resampled onto its grid
    # (where no scene of its own zone covers them)
    resampled: int = 0
    # item id -> why its pixels were dropped (its values contradict its offset metadata:
    # tasks/sources/plausibility.py)
    flags: dict[str, str] = field(default_factory=dict)


class ImagerySourceError(RuntimeError):
    """A source failed for a reason a retry will not fix (bad band, bad catalog, 4xx)."""


class TransientSourceError(RuntimeError):
    """A source failed for a reason a retry may fix (HTTP 429 or 5xx, timeout, dropped
    connection). Prefect tasks retry on this one and on nothing else from a source."""


class ImagerySource(Protocol):
    """Fetches north-up square patches centred on points, on each point's UTM grid."""

    def fetch(
        self, points: Sequence[Point], bands: Sequence[str], config: SensorConfig
    ) -> Patches: ...

    def check(self, bands: Sequence[str], config: SensorConfig) -> None:
        """Fail now, before anything is written, when `config` cannot work (the collection,
        a band, the credentials); cheap: one small request at most. Raises
        ImagerySourceError or TransientSourceError."""
        ...

    def plain_http(self, config: SensorConfig) -> set[str]:
        """The origins (`http://host:port`) it reads from over plain http, as far as it
        knows them before a run: nothing protects what comes from them in transit."""
        ...


def origin(url: str) -> str:
    """A URL's scheme and host (`http://host:port`)."""
    scheme, _, rest = url.partition("://")
    return f"{scheme.lower()}://{rest.split('/', 1)[0]}"


def plain_http_origins(urls: Sequence[str]) -> set[str]:
    """The origins of those of `urls` that are plain http://."""
    return {origin(u) for u in urls if u.lower().startswith("http://")}


@functools.cache
def get_source(name: str) -> ImagerySource:
    """The source `name`, one per process: sources keep what they learnt (a catalog's items,
    an initialised client) between chunks. A function, not a module global, so that
    pickling a task for a Dask worker never pickles a source."""
    known = sources()
    if name not in known:
        raise ImagerySourceError(
            f"unknown imagery source {name!r}; known sources: {', '.join(known)}"
        )
    module, _, cls = known[name].impl.partition(":")
    source: ImagerySource = getattr(importlib.import_module(module), cls)()
    return source
