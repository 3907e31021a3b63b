"""The export's parameters: pydantic models that the Prefect UI renders as a form, the Python
API takes, and the command line's flags are made from (flows/flags.py). Each setting is declared
here once, or with the source or product it belongs to (tasks/options.py).

Defaults are the embedded demo: a small region over the real Sentinel-2 sample that the
xarray-spatial wheel ships, read through a local STAC catalog, so `python -m flows.export`
runs with no arguments and no network.
"""

import argparse
import dataclasses
import math
from datetime import date, timedelta
from typing import TYPE_CHECKING, Annotated, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    create_model,
    field_validator,
    model_validator,
)

from embedders.spec import InferenceOptions
from flows.naming import declare, names_of, setting
from tasks.options import Flag, Options, options_for
from tasks.products.registry import PRODUCTS
from tasks.products.tessera import TesseraOptions
from tasks.sources.registry import (
    SOURCE_FLAGS,
    EarthEngineOptions,
    StacApiOptions,
    StacCatalogOptions,
    sources,
)

# The product and source names, from their registries, as Literals so that the UI offers
# them as dropdowns.
if TYPE_CHECKING:
    ModelName = str
    SourceName = str
else:
    ModelName = Literal[tuple(PRODUCTS)]
    SourceName = Literal[tuple(sources())]

# The demo sample's 10 m bands cover x 600000-603000, y 4698020-4700020 in EPSG:32719
# (Patagonia). This lon/lat box lies 200 m inside that footprint, so every point's centre
# has imagery: 59 points at 250 m.
DEMO_BBOX = (-67.660, -47.861, -67.626, -47.848)
DEFAULT_MODELS: tuple[ModelName, ...] = ("dofa_base", "ssl4eo_resnet18_rgb")


def _bbox(text: str) -> tuple[float, float, float, float]:
    try:
        w, s, e, n = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not four numbers west,south,east,north"
        ) from None
    return w, s, e, n


def _names(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def _batch_size(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number or 'auto'") from None


# Longitude and latitude limits in the form's schema, so that the UI marks a value out of
# range; the values are checked with swath's own messages when planning (tasks/plan/regions.py).
_Lon = Annotated[float, Field(json_schema_extra={"minimum": -180, "maximum": 180})]
_Lat = Annotated[float, Field(json_schema_extra={"minimum": -90, "maximum": 90})]


class Region(BaseModel):
    """Where to embed: a lon/lat box or a GeoJSON polygon (EPSG:4326), sampled on a grid."""

    model_config = ConfigDict(frozen=True)

    bbox: Annotated[
        tuple[_Lon, _Lat, _Lon, _Lat] | None,
        Flag("--bbox", None, "west,south,east,north in degrees", _bbox, exclusive="region"),
    ] = Field(
        DEMO_BBOX,
        title="Bounding box (degrees)",
        description="west, south, east, north in degrees: longitudes -180 to 180, latitudes "
        "-90 to 90, west less than east and south less than north; ignored when a GeoJSON "
        "region is given",
    )
    geojson: Annotated[
        str | None,
        Flag("--region", "FILE", "GeoJSON polygon file (holes respected)", exclusive="region"),
    ] = Field(
        None,
        title="GeoJSON region",
        description="GeoJSON text of a Polygon or MultiPolygon in lon/lat (a Feature or "
        "FeatureCollection of them works too), or the path of such a file where the export "
        "runs; holes are respected; replaces the bounding box",
    )
    spacing_m: Annotated[
        float, Field(gt=0, le=1_000_000), Flag("--spacing", "M", "grid spacing in metres")
    ] = Field(
        250.0,
        title="Grid spacing (m)",
        description="distance between neighbouring points, in metres on each point's UTM "
        "grid: more than 0, at most 1,000,000",
    )

    @field_validator("spacing_m", mode="before")
    @classmethod
    def _finite(cls, value: object) -> object:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"not a finite number of metres; give e.g. {setting('spacing_m')} 250")
        return value


# The store keeps each window's days as datetime64[ns] (xarray's time encoding), which holds
# 1677-09-21 to 2262-04-11; `time_bounds` holds the day after the last.
FIRST_DAY = date(1678, 1, 1)
LAST_DAY = date(2262, 4, 10)


class Window(BaseModel):
    """When: the export window. Imagery in it is composited per pixel (median)."""

    model_config = ConfigDict(frozen=True)

    start: Annotated[date, Flag("--start", None, "first day, YYYY-MM-DD")] = Field(
        date(2024, 1, 1),
        title="First day",
        description=f"first day of the window, inclusive: {FIRST_DAY} to {LAST_DAY}, on or "
        "before the last day",
    )
    end: Annotated[date, Flag("--end", None, "last day, YYYY-MM-DD")] = Field(
        date(2024, 12, 31),
        title="Last day",
        description=f"last day of the window, inclusive: {FIRST_DAY} to {LAST_DAY}, on or "
        "after the first day",
    )
    previous_month: Annotated[
        bool, Flag("--previous-month", None, "export last calendar month")
    ] = Field(
        False,
        title="Previous calendar month",
        description="ignore the first and last day and export the calendar month before the "
        "run's scheduled time: for recurring exports, each run adds that month to the store",
    )

    @field_validator("start", "end")
    @classmethod
    def _held_by_the_store(cls, day: date) -> date:
        if not FIRST_DAY <= day <= LAST_DAY:
            raise ValueError(
                f"{day} is outside the days the store's time axis holds ({FIRST_DAY} to "
                f"{LAST_DAY}, nanoseconds since 1970); give a window of the imagery's years, "
                f"e.g. {setting('start')} 2024-01-01 {setting('end')} 2024-12-31"
            )
        return day

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.end < self.start:
            raise ValueError(
                f"end date {self.end} is before start date {self.start}; give "
                f"{setting('start')} on or before {setting('end')}"
            )
        return self

    def resolve(self, today: date) -> tuple[date, date]:
        """The window's first and last day; `today` anchors `previous_month`."""
        if not self.previous_month:
            return self.start, self.end
        last = today.replace(day=1) - timedelta(days=1)
        return last.replace(day=1), last


class ImagerySettings(BaseModel):
    """Which imagery: the source, the collection, scene pre-selection and patch size, and
    each source's and product's own settings (how to reach a source, where Tessera is
    read from), declared beside their registry entries."""

    model_config = ConfigDict(frozen=True)

    source: Annotated[
        SourceName, Flag("--source", None, "where imagery comes from", group=SOURCE_FLAGS)
    ] = Field(
        "stac-catalog",
        title="Imagery source",
        description="stac-catalog: a static STAC catalog of COGs; stac-api: a STAC search API "
        "(Planetary Computer, Earth Search, ...); earthengine: Google Earth Engine",
    )
    collection: Annotated[
        str | None,
        Flag(
            "--collection",
            None,
            "collection id (the sensor's own for the source)",
            group=SOURCE_FLAGS,
        ),
    ] = Field(
        None,
        title="Collection",
        description="the collection id; default: the sensor's own collection for the source "
        "(sentinel-2-l2a on STAC, COPERNICUS/S2_SR_HARMONIZED on Earth Engine)",
    )
    max_cloud_cover: Annotated[
        float,
        Field(ge=0, le=100),
        Flag("--max-cloud-cover", "PCT", "skip cloudier scenes", group=SOURCE_FLAGS),
    ] = Field(
        80.0,
        title="Max cloud cover (%)",
        description="scenes whose cloud cover (percent, from their metadata; 0 to 100) is "
        "above this are not read; cloud and shadow pixels of the others are masked per pixel",
    )
    patch_px: Annotated[
        int, Field(ge=8, le=4096), Flag("--patch-size", "PX", "patch side in pixels")
    ] = Field(
        64,
        title="Patch size (px)",
        description="side of the square patch centred on each point, in pixels at the model's "
        "resolution: 8 to 4096",
    )

    @model_validator(mode="after")
    def _source_settings(self) -> Self:
        for name, entry in sources().items():
            why = options_for(entry.options, self).contradiction(name, self.source)
            if why:
                raise ValueError(why)
        return self

    def source_options(self) -> dict[str, Options]:
        """Each source's own settings, by its name: what reaches that source alone."""
        return {name: options_for(e.options, self) for name, e in sources().items()}

    def product_options(self) -> dict[str, Options]:
        """Each product's own settings, by its name: what reaches that product alone."""
        return {name: options_for(e.options, self) for name, e in PRODUCTS.items()}


def _imagery() -> type[ImagerySettings]:
    """ImagerySettings with every source's and product's own settings added (plugins' too):
    their fields follow the shared ones, in the registries' order."""
    kinds = [e.options for e in sources().values()] + [e.options for e in PRODUCTS.values()]
    own = [kind for kind in kinds if kind is not Options]
    bases: tuple[type[BaseModel], ...] = (*reversed(list(dict.fromkeys(own))), ImagerySettings)
    model = create_model(
        "Imagery",
        __base__=bases,
        __module__=__name__,
        __doc__=ImagerySettings.__doc__,
    )
    return model  # type: ignore[return-value]


if TYPE_CHECKING:

    class Imagery(
        TesseraOptions, StacCatalogOptions, StacApiOptions, EarthEngineOptions, ImagerySettings
    ):
        pass
else:
    Imagery = _imagery()


# The engine's defaults (embedders.spec.InferenceOptions): the flow's are the same values.
ENGINE = InferenceOptions()


# "auto" as a one-item choice: the UI renders a `const` as "... is a const and cannot be
# changed", an enum as a dropdown.
_Auto = Annotated[
    Literal["auto"], WithJsonSchema({"type": "string", "enum": ["auto"], "title": "auto"})
]


class Inference(BaseModel):
    """Which models run, and how: tiling, output, batching, device, precision and weights."""

    model_config = ConfigDict(frozen=True)

    models: Annotated[
        list[ModelName], Flag("--models", None, "comma-separated model names", _names)
    ] = Field(
        default_factory=lambda: list(DEFAULT_MODELS),
        min_length=1,
        title="Models",
        description="models (and precomputed products such as tessera) to run, at least one, "
        "each once; each gets its own variable in the store",
    )

    @field_validator("models")
    @classmethod
    def _once_each(cls, models: list[str]) -> list[str]:
        twice = sorted({m for m in models if models.count(m) > 1})
        if twice:
            raise ValueError(f"{', '.join(twice)} named more than once; name each model once")
        return models

    input_prep: Annotated[Literal["resize", "tile"], Flag("--input-prep")] = Field(
        ENGINE.input_prep,
        title="Input preparation",
        description="resize: each patch becomes one tile of the model's size; tile: cut the "
        "patch into native-size tiles (padded when smaller)",
    )
    output: Annotated[Literal["pooled", "grid"], Flag("--output")] = Field(
        ENGINE.output,
        title="Output per point",
        description="pooled: one vector per point; grid: one map per point",
    )
    tile_overlap_px: Annotated[int, Field(ge=0, le=1024), Flag("--tile-overlap", "PX")] = Field(
        ENGINE.tile_overlap_px,
        title="Tile overlap (px)",
        description="overlap between neighbouring tiles (input preparation tile), in input "
        "pixels: 0 to 1024",
    )
    batch_size: Annotated[
        Annotated[int, Field(ge=1, le=4096, title="tiles")] | _Auto,
        Flag("--batch-size", "N|auto", "tiles per forward", _batch_size),
    ] = Field(
        ENGINE.batch_size,
        title="Batch size (tiles)",
        description="tiles per forward pass, 1 to 4096; auto: the largest batch that fits the "
        "device's free memory, measured by a probe; results do not depend on it",
    )
    compile: Annotated[
        bool,
        Flag(
            "--compile", None, "compile each model's forward with torch.compile, once per process"
        ),
    ] = Field(
        ENGINE.compile,
        title="Compile models (torch.compile)",
        description="compile each model's forward with torch.compile, once per model and "
        "process (tens of seconds; pays on long GPU runs); results stay within the "
        "precision guard's bound of the eager forward",
    )
    channels_last: Annotated[
        Literal["auto", "on", "off"],
        Flag("--channels-last", None, "convolutional models in channels-last memory order"),
    ] = Field(
        ENGINE.channels_last,
        title="Channels-last memory order",
        description="convolutional models in channels-last memory order, which cuDNN's "
        "fastest kernels use; auto: on CUDA",
    )
    device: Annotated[Literal["auto", "cpu", "cuda"], Flag("--device")] = Field(
        "auto", title="Device", description="auto: cuda if present"
    )
    precision: Annotated[Literal["fp32", "bf16", "fp16"], Flag("--precision")] = Field(
        ENGINE.precision,
        title="Precision",
        description="bf16/fp16 autocast; fp16 on CUDA only (not with device cpu)",
    )
    weights: Annotated[Literal["auto", "pretrained", "random"], Flag("--weights")] = Field(
        "auto",
        title="Weights",
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

    store: Annotated[str, Flag("--out", "PATH", "output Zarr store")] = Field(
        "swath-demo.zarr",
        title="Output store",
        description="path or URL (s3://, gs://) of the output Zarr store; a relative path is "
        "taken from the folder the export runs in",
    )
    work_dir: Annotated[
        str | None,
        Flag("--work-dir", "DIR", "inputs, results, demo catalog (~/.cache/swath)"),
    ] = Field(
        None,
        title="Work directory",
        description="prefetched inputs, intermediate results and the demo catalog; "
        "default: the user cache directory (~/.cache/swath)",
    )
    refresh: Annotated[bool, Flag("--refresh", None, "redo every chunk of this window")] = Field(
        False,
        title="Redo every chunk",
        description="redo every chunk of this window on purpose: refetch, rerun, rewrite",
    )
    wait: Annotated[bool, Flag("--wait", None, "wait for another export of the store")] = Field(
        False,
        title="Wait for another export",
        description="when another export is writing the store, wait for it instead of refusing",
    )
    dtype: Annotated[
        Literal["float32", "float16", "int8"], Flag("--dtype", None, "stored embeddings")
    ] = Field(
        "float32",
        title="Stored number type",
        description="how embeddings are stored: float32; float16 (half the size); int8 with "
        "a float32 scale per vector (about a quarter; tasks.store.layout.open_store decodes it)",
    )
    shards: Annotated[
        Literal["auto", "none"],
        Flag("--shards", None, "none: one file per chunk and array, for GDAL before 3.13"),
    ] = Field(
        "auto",
        title="Store file layout (shards)",
        description="how a new store's files are laid out: auto, each array in shards of up "
        "to 16 chunks; none, one file per chunk and array (plain Zarr v3 chunks, which GDAL "
        "before 3.13 reads; more files)",
    )
    chunk_size: Annotated[
        Annotated[int, Field(ge=1, le=100_000)] | None,
        Flag(
            "--chunk-size", "N", "points per chunk (sized by the work: at most 512 MiB of inputs)"
        ),
    ] = Field(
        None,
        title="Points per chunk",
        description="points per chunk, 1 to 100,000: the unit of work, retry and resume; "
        "default: sized by the work a task carries (at most 512 MiB of input patches and "
        "2048 points), whatever the region's size",
    )
    chunks_per_run: Annotated[
        Annotated[int, Field(ge=1)] | None,
        Flag("--chunks-per-run", "N", "chunks per flow run, beyond: child runs (256)"),
    ] = Field(
        None,
        title="Chunks per flow run (advanced)",
        description="chunks one flow run carries at most, 1 or more; a larger export fans out "
        "into child flow runs of whole write blocks; default: 256",
    )


SETTINGS: tuple[type[BaseModel], ...] = (Region, Window, Imagery, Inference, Output)
declare(names_of(SETTINGS))  # messages of every layer name these settings as their reader does


def engine_options(inference: Inference) -> InferenceOptions:
    """How the engine cuts, batches and runs tiles, as `inference` asks."""
    names = {f.name for f in dataclasses.fields(InferenceOptions)}
    return InferenceOptions(**inference.model_dump(include=names))
