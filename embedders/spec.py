"""The typed identity of a model and the small interface every embedder implements."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Literal, Protocol
from urllib.parse import urlparse

from embedders.steps import TimeSteps

if TYPE_CHECKING:  # torch is imported only where a model is built: listing models stays fast
    import torch

PadMode = Literal["reflect", "edge"]
# What a model's forward takes: tiles (B, C, T, T) of one composite, or pixel time series
# (B, steps, channels) cut from a time series of one or more sensors (embedders/pixels.py), or
# tiles of a time series (B, steps * (C + 1), T, T), step-major, each step's channels then its
# day of year (embedders/tile_series.py).
Takes = Literal["tiles", "pixel-series", "tile-series"]
InputPrep = Literal["tile", "resize"]
OutputKind = Literal["pooled", "grid"]
WeightsChoice = Literal["auto", "pretrained", "random"]
Precision = Literal["fp32", "bf16", "fp16"]
ChannelsLast = Literal["auto", "on", "off"]


class Status(IntEnum):
    """The state of one (time, point, model) cell of the output store."""

    PENDING = 0  # not written yet: the chunk is not done
    OK = 1
    FAILED = 2  # the model or the source raised; the reason says why
    NODATA = 3  # no valid pixel in the patch (nodata, cloud, outside coverage)


@dataclass(frozen=True)
class ModelSpec:
    """Everything the pipeline needs to know about a model without loading it.

    Importing a spec imports no model library. `version` is part of the results' identity:
    bump it on purpose when a change alters the values a model produces (its forward, how
    its output is pooled); `description` and `family` are not identity.

    `bands` are sensor band names in the order the model takes them; `norm_mean` and
    `norm_std` are per band, in the units the imagery source delivers (Sentinel-2 L2A
    digital numbers, reflectance x 10000). `grid_stride_px` is how many input pixels one
    cell of the model's output grid spans (16 for a ViT with 16 px patches, 32 for a
    ResNet's last stage). `checkpoint` is the file name torch hub keeps the pretrained
    weights under, by default the file name of `weights_url`, where the pretrained weights
    are published (the URL of the weights enum member, for torchgeo's), so whether they are
    in the local cache can be told without importing a model library. `convolutional` says the
    model is a CNN, which runs faster on CUDA with its tensors in channels-last memory order
    (embedders.execution); it is not identity. `steps` says the model reads a time series
    (embedders/steps.py): how the window becomes steps; None, one composite of the window.

    A model that reads more than one sensor names the others in `more_sensors`, each with its
    bands, fetched as a sensor configuration of its own (so a fetch of `sensor` is shared with
    the models that read it alone); its channels are `bands` then each other sensor's bands
    (`channels()`), and `norm_mean`/`norm_std` have one value per channel. `takes` says what
    its forward takes: tiles, or pixel time series (`series_width()`); `series_latlon`, a
    pixel-series model that also takes each point's latitude and longitude.
    """

    name: str
    family: str
    description: str
    sensor: str
    bands: tuple[str, ...]
    resolution_m: float
    tile_px: int
    embed_dim: int
    grid_stride_px: int
    norm_mean: tuple[float, ...]
    norm_std: tuple[float, ...]
    pretrained_weights: str
    pad_mode: PadMode = "reflect"
    seed: int = 0
    version: int = 1
    licence: str = ""
    weights_url: str = ""
    checkpoint: str = ""
    convolutional: bool = False
    steps: TimeSteps | None = None
    more_sensors: tuple[tuple[str, tuple[str, ...]], ...] = ()
    takes: Takes = "tiles"
    series_latlon: bool = False

    def __post_init__(self) -> None:
        if not self.checkpoint and self.weights_url:  # the URL's file name, as torch hub keeps it
            name = os.path.basename(urlparse(self.weights_url).path)
            object.__setattr__(self, "checkpoint", name)
        n = len(self.channels())
        if len(self.norm_mean) != n or len(self.norm_std) != n:
            raise ValueError(
                f"model {self.name}: norm_mean/norm_std need one value per channel ({n})"
            )
        if self.takes == "pixel-series" and (self.steps is None or self.tile_px != 1):
            raise ValueError(
                f"model {self.name}: a pixel-series model declares its steps and a tile of 1 px"
            )
        if self.takes == "tile-series" and (self.steps is None or not self.steps.count):
            raise ValueError(f"model {self.name}: a tile-series model declares a fixed step count")
        if self.tile_px % self.grid_stride_px:
            raise ValueError(f"model {self.name}: tile_px must be a multiple of grid_stride_px")

    @property
    def grid_px(self) -> int:
        """Side of the output grid of one native tile."""
        return self.tile_px // self.grid_stride_px

    def sensor_bands(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """Each sensor the model reads with its bands, `sensor` first."""
        return ((self.sensor, self.bands), *self.more_sensors)

    def channels(self) -> tuple[str, ...]:
        """The model's input channels: every sensor's bands, in `sensor_bands()` order."""
        return tuple(b for _, bands in self.sensor_bands() for b in bands)

    def series_width(self) -> int:
        """A pixel-series model's input width: each sensor's bands then its day of year; then
        latitude and longitude with `series_latlon`."""
        return len(self.channels()) + len(self.sensor_bands()) + 2 * self.series_latlon

    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one input of the forward: (C, T, T) tiles, or (steps, width) pixel
        series (a monthly series of no fixed count is probed as 12 steps)."""
        if self.takes == "pixel-series" and self.steps is not None:
            return (self.steps.count or 12, self.series_width())
        if self.takes == "tile-series" and self.steps is not None:
            width = self.steps.count * (len(self.channels()) + 1)  # each step's day of year
            return (width, self.tile_px, self.tile_px)
        return (len(self.channels()), self.tile_px, self.tile_px)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def identity(self) -> dict[str, object]:
        """The fields a model's results depend on (see `version`); not its name or wording."""
        return {
            "version": self.version,
            "bands": list(self.bands),
            "resolution_m": self.resolution_m,
            "tile_px": self.tile_px,
            "embed_dim": self.embed_dim,
            "grid_stride_px": self.grid_stride_px,
            "norm_mean": list(self.norm_mean),
            "norm_std": list(self.norm_std),
            "pad_mode": self.pad_mode,
        } | self._new_identity()

    def _new_identity(self) -> dict[str, object]:
        """Fields added since the first stores, present only when set: the keys of every
        model that does not use them stay what they were."""
        more: dict[str, object] = {"steps": self.steps.record()} if self.steps else {}
        if self.more_sensors:
            more["more_sensors"] = [[s, list(b)] for s, b in self.more_sensors]
        if self.takes != "tiles":
            more["takes"] = self.takes
        if self.series_latlon:
            more["series_latlon"] = True
        return more


@dataclass(frozen=True)
class ModelEntry:
    """One line of the model registry (embedders/registry.py), or a `swath.models` plugin:
    the model's spec and where its builder is."""

    spec: ModelSpec
    builder: str  # "module:function", called as function(spec, weights, device) -> Embedder


@dataclass(frozen=True)
class WeightsInfo:
    """Which weights a built model carries: never ambiguous, always written to the store."""

    kind: Literal["pretrained", "random"]
    identity: str  # weights enum member for pretrained, "seed=<n>" for random
    file: str = ""  # the local checkpoint the weights were read from
    note: str = ""  # why random weights were used, when they were not asked for

    def describe(self) -> str:
        where = f" from {self.file}" if self.file else ""
        why = f" ({self.note})" if self.note else ""
        return f"{self.kind} {self.identity}{where}{why}"


@dataclass(frozen=True)
class InferenceOptions:
    """How tiles are cut, batched and stitched, and how the forward runs.

    `input_prep`, `output`, `tile_overlap_px` and `precision` are part of a result's
    identity. The others (EXECUTION) say how the same result is computed: results do not
    depend on the batch size, nor (within the precision guard's bound) on compilation or
    memory order, so changing them never invalidates work already done. Batch size "auto"
    is the largest batch that fits the device's memory, measured (embedders.autobatch);
    `compile` compiles the forward with torch.compile once per model and process;
    `channels_last` "auto" is on for convolutional models on CUDA (embedders.execution).
    """

    input_prep: InputPrep = "resize"
    output: OutputKind = "pooled"
    tile_overlap_px: int = 0
    precision: Precision = "fp32"
    batch_size: int | Literal["auto"] = "auto"
    compile: bool = False
    channels_last: ChannelsLast = "auto"

    def identity(self) -> dict[str, object]:
        """The fields results depend on."""
        ident = asdict(self)
        for name in EXECUTION:
            del ident[name]
        return ident

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:10]


# InferenceOptions fields that say how a result is computed, not what it is.
EXECUTION = ("batch_size", "compile", "channels_last")


class Embedder(Protocol):
    """A built model: normalised tiles in, one vector and one feature grid per tile out."""

    spec: ModelSpec
    weights: WeightsInfo

    def forward(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map normalised tiles (B, C, T, T) to pooled (B, D) and grid (B, D, T/s, T/s); a
        pixel-series model (B, steps, width) to (B, D) and (B, D, 1, 1)."""
        ...
