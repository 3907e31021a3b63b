"""Tile-flattened batch inference: many images in, one embedding (and grid) per image out.

Every image is normalised, its invalid pixels filled, then cut into tiles (or resized to
one tile). The tiles of all images form one stream that runs through the model in full
batches (embedders.batching: built ahead in a background thread, out-of-memory backoff,
failure isolation). The outputs are stitched back per image in stream order, accumulated
in float64, so the result does not depend on the batch size or on which other images
share the call. Tiles are normalised as they are copied into their batch, so no
normalised copy of a whole image is made; an image's result is written as soon as its
last tile is back. The seconds spent in the model's forwards come with the result
(`ForwardClock`), for the benchmarks' accounting of where an export's time goes.
"""

import contextlib
import functools
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from embedders import autobatch, batching, precision, tiling
from embedders.batching import BatchPlan, Failure, Launched, Outcome, TileWriter
from embedders.precision import PrecisionReport
from embedders.spec import Embedder, InferenceOptions, ModelSpec, Status

log = logging.getLogger(__name__)

NODATA_REASON = "no valid pixel in the patch (nodata, cloud or outside coverage)"


@dataclass
class EmbedResult:
    pooled: np.ndarray  # (n, D) float32; NaN rows where status != OK
    grid: np.ndarray | None  # (n, D, gh, gw) float32 when options.output == "grid", else None
    valid_fraction: np.ndarray  # (n,) float32: share of the patch's pixels that were valid
    status: np.ndarray  # (n,) int8, values of embedders.spec.Status
    reason: list[str]  # "" where OK, else a readable reason
    precision: PrecisionReport | None = None  # the reduced-precision guard's; None in fp32
    forward_s: float = 0.0  # seconds in the model's forwards (ForwardClock)


@dataclass(frozen=True, eq=False)
class _Layout:
    """Where one image's tiles lie and how much each counts: all stitching needs."""

    origins: list[tuple[int, int]]  # (y0, x0) of each tile
    weights: np.ndarray  # (n_tiles,) pooling weight of each tile
    padded: tuple[int, int]  # (Hp, Wp) after padding or resizing
    height: int  # unpadded size
    width: int
    n_run: int = 0  # how many of the tiles go through the model


@dataclass
class _Prepared:
    """One image ready to be cut: where its tiles lie, and the pixels they are cut from.

    An image of at least one tile is cut from the caller's array and normalised on the
    way into the batch (no normalised copy of the whole image); a padded or resized image
    is small and normalised here.
    """

    pixels: np.ndarray  # (C, Hp, Wp) float32
    valid: np.ndarray | None  # (Hp, Wp) mask when `pixels` are raw, None when normalised
    layout: _Layout
    valid_fraction: float  # share of the unpadded image's pixels that are valid


@dataclass(frozen=True, eq=False)
class _TileRef:
    image: int
    tile: int  # index into the image's origins
    layout: _Layout


@functools.cache
def _norm(spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and std as (C, 1, 1) float32."""
    mean = np.asarray(spec.norm_mean, dtype=np.float32)[:, None, None]
    return mean, np.asarray(spec.norm_std, dtype=np.float32)[:, None, None]


def normalise(image: np.ndarray, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """Normalise per band and fill invalid pixels with 0 (the dataset mean).

    Returns the filled image and the validity mask (all bands finite).
    """
    valid = np.isfinite(image).all(axis=0)
    mean, std = _norm(spec)
    out = image - mean
    out /= std
    out[:, ~valid] = 0.0
    return out, valid


def prepare(image: np.ndarray, spec: ModelSpec, options: InferenceOptions) -> _Prepared:
    """Lay one (C, H, W) float32 image out in tiles (or resize it to one tile)."""
    valid = np.isfinite(image).all(axis=0)
    _, height, width = image.shape
    fraction = float(valid.mean())
    tile = spec.tile_px
    if options.input_prep == "resize":
        resized, valid_r = tiling.resize_to_tile(normalise(image, spec)[0], valid, tile)
        layout = _Layout([(0, 0)], np.array([float(valid_r.sum())]), (tile, tile), height, width)
        return _Prepared(resized, None, layout, fraction)
    pixels, valid_p = image, valid
    mask: np.ndarray | None = valid
    if height < tile or width < tile:
        pixels, valid_p = tiling.pad_to_tile(normalise(image, spec)[0], valid, tile, spec.pad_mode)
        mask = None
    height_p, width_p = valid_p.shape
    origins = tiling.tile_origins(height_p, width_p, tile, options.tile_overlap_px)
    weights = tiling.tile_weights(valid_p, origins, tile)
    layout = _Layout(origins, weights, (height_p, width_p), height, width)
    return _Prepared(pixels, mask, layout, fraction)


def write_tile(p: _Prepared, tile: int, spec: ModelSpec, out: np.ndarray) -> None:
    """Write tile `tile` of a prepared image into `out` (C, T, T), normalised and filled:
    the same float32 operations as `normalise`, so the same values to the bit."""
    y0, x0 = p.layout.origins[tile]
    rows, cols = slice(y0, y0 + spec.tile_px), slice(x0, x0 + spec.tile_px)
    if p.valid is None:
        np.copyto(out, p.pixels[:, rows, cols])
        return
    mean, std = _norm(spec)
    np.subtract(p.pixels[:, rows, cols], mean, out=out)
    out /= std
    valid = p.valid[rows, cols]
    if not valid.all():
        out[:, ~valid] = 0.0


def cut_tiles(image: np.ndarray, spec: ModelSpec, options: InferenceOptions) -> np.ndarray:
    """Every tile of one image as the model receives it: (n_tiles, C, T, T) float32."""
    p = prepare(np.asarray(image, dtype=np.float32), spec, options)
    side = spec.tile_px
    tiles = np.empty((len(p.layout.origins), len(spec.bands), side, side), dtype=np.float32)
    for t in range(len(tiles)):
        write_tile(p, t, spec, tiles[t])
    return tiles


def _check_image(image: np.ndarray, index: int, spec: ModelSpec) -> np.ndarray:
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[0] != len(spec.bands) or 0 in arr.shape:
        raise ValueError(
            f"image {index}: model {spec.name} takes (C, H, W) arrays with C={len(spec.bands)} "
            f"bands {spec.bands} in that order; got shape {arr.shape}"
        )
    return arr


def _tile_stream(
    arrays: list[np.ndarray], spec: ModelSpec, options: InferenceOptions, result: EmbedResult
) -> Iterator[tuple[_TileRef, TileWriter]]:
    """Every tile of every image, in order, prepared image by image (in the producer
    thread). Images without a valid pixel are marked NODATA here and yield no tile."""
    keep_all = options.output == "grid"  # every cell of the grid needs a tile
    for i, arr in enumerate(arrays):
        p = prepare(arr, spec, options)
        result.valid_fraction[i] = p.valid_fraction
        if p.layout.weights.sum() <= 0:
            result.status[i] = Status.NODATA
            result.reason[i] = _nodata_reason(p.valid_fraction, spec)
            continue
        run = [t for t, w in enumerate(p.layout.weights) if keep_all or w > 0]
        layout = replace(p.layout, n_run=len(run))
        for t in run:
            yield _TileRef(i, t, layout), functools.partial(write_tile, p, t, spec)


@dataclass
class _Partial:
    """One image's outputs so far, in float64."""

    total: np.ndarray | None = None
    weight: float = 0.0
    blender: tiling.GridBlender | None = None
    failed: str = ""
    seen: int = 0


@dataclass
class _Stitcher:
    """Accumulates tile outputs per image in stream order; writes an image's result as
    soon as its last tile is back."""

    spec: ModelSpec
    options: InferenceOptions
    result: EmbedResult
    partial: dict[int, _Partial] = field(default_factory=dict)

    def add(self, ref: _TileRef, outcome: Outcome) -> None:
        part = self.partial.setdefault(ref.image, _Partial())
        part.seen += 1
        if isinstance(outcome, Failure):
            part.failed = part.failed or outcome.reason
        elif not part.failed:
            self._accumulate(part, ref, *outcome)
        if part.seen == ref.layout.n_run:
            self._write(ref.image, ref.layout, self.partial.pop(ref.image))

    def _accumulate(
        self, part: _Partial, ref: _TileRef, pooled: np.ndarray, grid: np.ndarray | None
    ) -> None:
        w = float(ref.layout.weights[ref.tile])
        if w > 0:
            vector = w * pooled.astype(np.float64)
            part.total = vector if part.total is None else part.total + vector
            part.weight += w
        if grid is None:
            return
        if self.options.input_prep == "resize":
            part.blender = tiling.GridBlender(grid.astype(np.float64), np.ones(grid.shape[1:]), 1)
            return
        if part.blender is None:
            hp, wp = ref.layout.padded
            part.blender = tiling.GridBlender.for_image(
                grid.shape[0], hp, wp, self.spec.grid_stride_px
            )
        part.blender.add(grid, *ref.layout.origins[ref.tile])

    def _write(self, i: int, layout: _Layout, part: _Partial) -> None:
        result = self.result
        if part.failed:
            result.status[i], result.reason[i] = Status.FAILED, part.failed
            return
        assert part.total is not None  # an image with tiles has a tile of positive weight
        result.pooled[i] = part.total / part.weight
        if result.grid is not None:
            assert part.blender is not None
            gh, gw = tiling.grid_shape(self.spec, self.options, layout.height, layout.width)
            result.grid[i, :, :gh, :gw] = part.blender.result((gh, gw))
        result.status[i], result.reason[i] = Status.OK, ""


def _empty_result(
    spec: ModelSpec, options: InferenceOptions, sizes: list[tuple[int, int]]
) -> EmbedResult:
    n, dim = len(sizes), spec.embed_dim
    grid = None
    if options.output == "grid":
        shapes = [tiling.grid_shape(spec, options, h, w) for h, w in sizes] or [(0, 0)]
        gh, gw = max(s[0] for s in shapes), max(s[1] for s in shapes)
        grid = np.full((n, dim, gh, gw), np.nan, dtype=np.float32)
    return EmbedResult(
        pooled=np.full((n, dim), np.nan, dtype=np.float32),
        grid=grid,
        valid_fraction=np.zeros(n, dtype=np.float32),
        status=np.full(n, Status.PENDING, dtype=np.int8),
        reason=[""] * n,
    )


# The clock of forwards on the CPU (a test replaces it).
_clock = time.perf_counter


class ForwardClock:
    """Seconds spent in the model's forwards of one call. On the CPU a forward returns when
    it is done: the wall time of each call is added up. On CUDA a forward only queues work:
    two timing events are recorded on the device's stream around it and read once at the
    end (`seconds`), when every output is back, so the batch loop gains no synchronisation.
    A forward's time includes casting its outputs to float32 and, on CUDA, their copy to
    the host, which the forward queues."""

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self._seconds = 0.0
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    @contextlib.contextmanager
    def forward(self) -> Iterator[None]:
        if self._device.type != "cuda":
            began = _clock()
            try:
                yield
            finally:
                self._seconds += _clock() - began
            return
        stream = torch.cuda.current_stream(self._device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        try:
            yield
        finally:
            end.record(stream)
            self._events.append((start, end))

    def seconds(self) -> float:
        for start, end in self._events:
            end.synchronize()
            self._seconds += start.elapsed_time(end) / 1000  # milliseconds
        self._events.clear()
        return self._seconds


def embed_images(
    embedder: Embedder,
    images: Sequence[np.ndarray],
    options: InferenceOptions,
    device: torch.device,
) -> EmbedResult:
    """Embed (C, H, W) images (source units, NaN where masked) with one tile stream.

    Images may differ in size; with `output == "grid"` the grids of smaller images are
    NaN beyond their own `tiling.grid_shape`. Images without a valid pixel get NODATA;
    images whose tiles make the model raise get FAILED with the error as reason.
    `options.batch_size == "auto"` is resolved by `autobatch.resolve_batch_size`.
    In bf16 and fp16 the model first passes `precision.check_precision` (once per model,
    device and precision in a process; it may keep layers in float32, or raise
    PrecisionError), and its report comes with the result, as do the seconds spent in
    the model's forwards (`forward_s`).
    """
    spec = embedder.spec
    autocast = batching.precision_context(options.precision, device)
    arrays = [_check_image(img, i, spec) for i, img in enumerate(images)]
    result = _empty_result(spec, options, [a.shape[1:] for a in arrays])
    if options.precision != "fp32":
        result.precision = precision.check_precision(embedder, options.precision, device)
    if not arrays:
        return result
    size = autobatch.resolve_batch_size(embedder, options, device)
    shape = (len(spec.bands), spec.tile_px, spec.tile_px)
    plan = BatchPlan(size, device, shape, f"model {spec.name}")
    want_grid = result.grid is not None
    clock = ForwardClock(batching.device_of(device))

    def forward(tiles: torch.Tensor) -> Launched:
        with clock.forward():
            return batching.launch(embedder, tiles, want_grid=want_grid)

    stitcher = _Stitcher(spec, options, result)
    tiles = _tile_stream(arrays, spec, options, result)
    with torch.inference_mode(), autocast:
        for ref, outcome in batching.run_batches(tiles, forward, plan):
            stitcher.add(ref, outcome)
    result.forward_s = clock.seconds()
    if plan.batch_size < size:
        autobatch.lower_auto_batch_size(embedder, options, device, plan.batch_size)
    return result


def _nodata_reason(valid_fraction: float, spec: ModelSpec) -> str:
    if valid_fraction == 0:
        return NODATA_REASON
    return (
        f"valid pixels too sparse: none is left after resizing the patch to {spec.tile_px} px "
        f"(valid fraction {valid_fraction:.4f}); use input_prep='tile'"
    )
