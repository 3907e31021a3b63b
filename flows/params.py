"""The export's parameters: pydantic models that the CLI fills and the Prefect UI renders as a form.

Defaults are the embedded demo: a small region over the real Sentinel-2 sample that the
xarray-spatial wheel ships, read through a local STAC catalog, so `python -m flows.export`
runs with no arguments and no network.
"""

import math
from datetime import date, timedelta
from typing import TYPE_CHECKING, Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tasks.products import PRODUCTS
from tasks.sources import SOURCES, SourceAccess

# The product and source names, from their registries, as Literals so that the UI offers
# them as dropdowns.
if TYPE_CHECKING:
    ModelName = str
    SourceName = str
else:
    ModelName = Literal[tuple(PRODUCTS)]
    SourceName = Literal[tuple(SOURCES)]

# The demo sample's 10 m bands cover x 600000-603000, y 4698020-4700020 in EPSG:32719
# (Patagonia). This lon/lat box lies 200 m inside that footprint, so every point's centre
# has imagery: 59 points at 250 m.
DEMO_BBOX = (-67.660, -47.861, -67.626, -47.848)
DEMO_CATALOG = "demo"
DEFAULT_MODELS: tuple[ModelName, ...] = ("dofa_base", "ssl4eo_resnet18_rgb")


class Region(BaseModel):
    """Where to embed: a lon/lat box or a GeoJSON polygon (EPSG:4326), sampled on a grid."""

    model_config = ConfigDict(frozen=True)

    bbox: tuple[float, float, float, float] | None = Field(
        DEMO_BBOX, description="west, south, east, north in degrees (ignored when geojson is set)"
    )
    geojson: str | None = Field(
        None,
        description="GeoJSON text of a Polygon or MultiPolygon (a Feature or FeatureCollection "
        "of them works too); holes are respected",
    )
    spacing_m: Annotated[float, Field(gt=0, le=1_000_000)] = Field(
        250.0, description="grid spacing in metres on each point's UTM grid"
    )

    @field_validator("spacing_m", mode="before")
    @classmethod
    def _finite(cls, value: object) -> object:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("not a finite number of metres; give e.g. --spacing 250")
        return value


# The store keeps each window's days as datetime64[ns] (xarray's time encoding), which holds
# 1677-09-21 to 2262-04-11; `time_bounds` holds the day after the last.
FIRST_DAY = date(1678, 1, 1)
LAST_DAY = date(2262, 4, 10)


class Window(BaseModel):
    """When: the export window. Imagery in it is composited per pixel (median)."""

    model_config = ConfigDict(frozen=True)

    start: date = Field(date(2024, 1, 1), description="first day, inclusive")
    end: date = Field(date(2024, 12, 31), description="last day, inclusive")
    previous_month: bool = Field(
        False,
        description="ignore start/end and export the calendar month before the run's scheduled "
        "time: for recurring exports, each run adds that month to the store",
    )

    @field_validator("start", "end")
    @classmethod
    def _held_by_the_store(cls, day: date) -> date:
        if not FIRST_DAY <= day <= LAST_DAY:
            raise ValueError(
                f"{day} is outside the days the store's time axis holds ({FIRST_DAY} to "
                f"{LAST_DAY}, nanoseconds since 1970); give a window of the imagery's years, "
                "e.g. --start 2024-01-01 --end 2024-12-31"
            )
        return day

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.end < self.start:
            raise ValueError(
                f"end date {self.end} is before start date {self.start}; give --start before --end"
            )
        return self

    def resolve(self, today: date) -> tuple[date, date]:
        """The window's first and last day; `today` anchors `previous_month`."""
        if not self.previous_month:
            return self.start, self.end
        last = today.replace(day=1) - timedelta(days=1)
        return last.replace(day=1), last


class Imagery(BaseModel):
    """Which imagery: the source (a static STAC catalog, a STAC search API or Earth Engine),
    the collection, scene pre-selection and patch size, how to reach the source, and where
    precomputed products (Tessera) are read from."""

    model_config = ConfigDict(frozen=True)

    source: SourceName = Field(
        "stac-catalog",
        description="stac-catalog: a static STAC catalog of COGs; stac-api: a STAC search API "
        "(Planetary Computer, Earth Search, ...); earthengine: Google Earth Engine",
    )
    catalog: str = Field(
        DEMO_CATALOG,
        description="stac-catalog: path or URL of a static STAC catalog.json; 'demo' builds the "
        "offline Sentinel-2 sample catalog in the work directory",
    )
    stac_url: str | None = Field(
        None,
        description="stac-api: the API's root URL, or planetary-computer or earth-search",
    )
    collection: str | None = Field(
        None,
        description="the collection id; default: the sensor's own for the source "
        "(sentinel-2-l2a on STAC, COPERNICUS/S2_SR_HARMONIZED on Earth Engine)",
    )
    max_cloud_cover: Annotated[float, Field(ge=0, le=100)] = Field(
        80.0,
        description="scenes whose cloud cover (percent, from their metadata) is above this are "
        "not read; cloud and shadow pixels of the others are masked per pixel",
    )
    patch_px: Annotated[int, Field(ge=8, le=4096)] = Field(
        64, description="patch side in pixels, centred on each point, at the model's resolution"
    )
    stac_signing: Literal["auto", "planetary-computer", "none"] = Field(
        "auto",
        description="stac-api: how asset URLs are signed; auto: Planetary Computer's tokens "
        "for its API, none elsewhere",
    )
    ee_project: str | None = Field(
        None,
        description="earthengine: the Google Cloud project registered for Earth Engine "
        "(default: the credentials' own project)",
    )
    ee_key_file: str | None = Field(
        None,
        description="earthengine: a service account's JSON key file; default: application "
        "default credentials (earthengine authenticate, or gcloud auth application-default "
        "login)",
    )
    ee_url: str | None = Field(
        None,
        description="earthengine: the API endpoint; default: the high-volume endpoint",
    )
    ee_concurrency: Annotated[int, Field(ge=1, le=100)] = Field(
        8, description="earthengine: requests in flight at once across the whole run"
    )
    tessera_store: str = Field(
        "v1.1",
        description="where the tessera product reads: a dataset version of geotessera's public "
        "Zarr store (v1.1, v2) or the URL or path of a Tessera Zarr store",
    )

    @model_validator(mode="after")
    def _source_settings(self) -> Self:
        if self.source == "stac-api" and not self.stac_url:
            raise ValueError(
                "--source stac-api needs --stac-url: the API's root URL, or "
                "planetary-computer or earth-search"
            )
        if self.source != "stac-api" and self.stac_url:
            raise ValueError(
                f"--stac-url is for --source stac-api, and the source is {self.source}; "
                "give --source stac-api or leave --stac-url out"
            )
        if self.source != "stac-catalog" and self.catalog != DEMO_CATALOG:
            raise ValueError(
                f"--catalog is for --source stac-catalog, and the source is {self.source}; "
                "leave --catalog out"
            )
        return self

    def access(self) -> SourceAccess:
        """How the run reaches its sources (never part of what values depend on)."""
        return SourceAccess(
            stac_signing=self.stac_signing,
            ee_project=self.ee_project,
            ee_key_file=self.ee_key_file,
            ee_url=self.ee_url,
            ee_concurrency=self.ee_concurrency,
        )


class Inference(BaseModel):
    """Which models run, and how: tiling, output, batching, device, precision and weights."""

    model_config = ConfigDict(frozen=True)

    models: list[ModelName] = Field(
        default_factory=lambda: list(DEFAULT_MODELS),
        min_length=1,
        description="models (and precomputed products such as tessera) to run; each gets its "
        "own variable in the store",
    )

    @field_validator("models")
    @classmethod
    def _once_each(cls, models: list[str]) -> list[str]:
        twice = sorted({m for m in models if models.count(m) > 1})
        if twice:
            raise ValueError(f"{', '.join(twice)} named more than once; name each model once")
        return models

    input_prep: Literal["resize", "tile"] = Field(
        "resize",
        description="resize: each patch becomes one tile of the model's size; tile: cut the "
        "patch into native-size tiles (padded when smaller)",
    )
    output: Literal["pooled", "grid"] = Field(
        "pooled", description="pooled: one vector per point; grid: one map per point"
    )
    tile_overlap_px: Annotated[int, Field(ge=0, le=1024)] = Field(
        0, description="overlap between neighbouring tiles, in input pixels"
    )
    batch_size: Annotated[int, Field(ge=1, le=4096)] | Literal["auto"] = Field(
        "auto",
        description="tiles per forward pass; auto: the largest batch that fits the device's "
        "free memory, measured by a probe; results do not depend on it",
    )
    compile: bool = Field(
        False,
        description="compile each model's forward with torch.compile, once per model and "
        "process (tens of seconds; pays on long GPU runs); results stay within the "
        "precision guard's bound of the eager forward",
    )
    channels_last: Literal["auto", "on", "off"] = Field(
        "auto",
        description="convolutional models in channels-last memory order, which cuDNN's "
        "fastest kernels use; auto: on CUDA",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda if present")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="bf16/fp16 autocast; fp16 on CUDA only"
    )
    weights: Literal["auto", "pretrained", "random"] = Field(
        "auto",
        description="pretrained: the library's published weights (cached or downloaded), "
        "error if unavailable; random: seeded random weights; auto: pretrained when "
        "available, else random, said loudly and recorded",
    )


# Chunks one flow run carries at most: a larger export fans out into child flow runs
# (`swath-export-part`) of whole write blocks, so that no run holds tens of thousands of task
# runs. `Output.chunks_per_run` overrides it.
CHILD_CHUNKS = 256


class Output(BaseModel):
    """Where results go: the output store, the work directory and the chunk size."""

    model_config = ConfigDict(frozen=True)

    store: str = Field("swath-demo.zarr", description="path of the output Zarr store")
    work_dir: str | None = Field(
        None,
        description="prefetched inputs, intermediate results and the demo catalog; "
        "default: the user cache directory (~/.cache/swath)",
    )
    refresh: bool = Field(
        False, description="redo every chunk of this window on purpose: refetch, rerun, rewrite"
    )
    wait: bool = Field(
        False,
        description="when another export is writing the store, wait for it instead of refusing",
    )
    dtype: Literal["float32", "float16", "int8"] = Field(
        "float32",
        description="how embeddings are stored: float32; float16 (half the size); int8 with "
        "a float32 scale per vector (about a quarter; tasks.store.open_store decodes it)",
    )
    chunk_size: Annotated[int, Field(ge=1, le=100_000)] | None = Field(
        None,
        description="points per chunk: the unit of work, retry and resume; default: sized by "
        "the work a task carries (at most 512 MiB of input patches and 2048 points), "
        "whatever the region's size",
    )
    chunks_per_run: Annotated[int, Field(ge=1)] | None = Field(
        None,
        description="advanced: chunks one flow run carries at most; a larger export fans out "
        "into child flow runs of whole write blocks; default: 256",
    )
