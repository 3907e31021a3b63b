"""Tile-flattened batch inference: many images in, one embedding (and grid) per image out.

Images come as stacks of same-size patches (embedders.patches), compact as the inputs store
holds them. A stack goes to the model's device a block of points at a time: on CUDA each
block is copied from pinned memory and cut on a side stream (embedders.cutting: decode,
normalise, fill, pad or resize, cut, weigh) while the model runs the batches before it.
The tiles of every block of every stack form one queue that runs through the model in full
batches (embedders.batching). Outputs stay on the device and are stitched back per image
there, pooled as the area-weighted mean over the image's tiles and grids blended in float64,
so the result does not depend on the batch size or on which other images share the call.
Only the results come back to the host, once per call.

The seconds the model's forwards took come with the result (`forward_s`, from CUDA events
on a GPU), beside the call's wall time (`embed_s`): their ratio is the share of the time
the device was computing.
"""

import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from embedders import autobatch, batching, cutting, execution, precision, stitching, tiling
from embedders.batching import BatchPlan, Failure, ForwardClock, Launched, TileQueue
from embedders.encoding import FLOAT32
from embedders.patches import PatchStack, stacks_of_images
from embedders.precision import PrecisionReport
from embedders.spec import Embedder, InferenceOptions, ModelSpec, Status

log = logging.getLogger(__name__)

NODATA_REASON = "no valid pixel in the patch (nodata, cloud or outside coverage)"

# The first blocks of a call are small, so that the device starts on the first batch after
# copying a few patches, not a whole batch's worth; then blocks of about one batch.
FIRST_BLOCK_SHARE = 8
# Blocks cut ahead of the one whose tiles join the queue.
BLOCKS_AHEAD = 1


@dataclass
class EmbedResult:
    pooled: np.ndarray  # (n, D) float32; NaN rows where status != OK
    grid: np.ndarray | None  # (n, D, gh, gw) float32 when options.output == "grid", else None
    valid_fraction: np.ndarray  # (n,) float32: share of the patch's pixels that were valid
    status: np.ndarray  # (n,) int8, values of embedders.spec.Status
    reason: list[str]  # "" where OK, else a readable reason
    precision: PrecisionReport | None = None  # the reduced-precision guard's; None in fp32
    forward_s: float = 0.0  # seconds in the model's forwards (ForwardClock)
    embed_s: float = 0.0  # wall seconds of the call, from its first block to its results
    compile_s: float = 0.0  # seconds this call spent compiling the model (options.compile)


@dataclass(frozen=True)
class _Refs:
    """Whose tiles a run of the queue holds: per tile its stack, image, tile and pooling
    weight, on the host for bookkeeping and on the device for stitching."""

    stack: int
    image: np.ndarray  # (m,) image index within the stack
    tile: np.ndarray  # (m,) tile index within the image's layout
    weight: np.ndarray  # (m,) float64
    image_dev: torch.Tensor
    weight_dev: torch.Tensor

    def __len__(self) -> int:
        return len(self.image)

    def __getitem__(self, part: slice) -> "_Refs":
        return _Refs(
            self.stack,
            self.image[part],
            self.tile[part],
            self.weight[part],
            self.image_dev[part],
            self.weight_dev[part],
        )


@dataclass
class _Stack:
    """One stack's place in the call: where its images go in the result, and their sums."""

    rows: np.ndarray  # positions of its images in the result
    patches: PatchStack
    where: cutting.Layout
    sums: stitching.Sums


@dataclass
class _Block:
    """Images start..stop of a stack, being cut on the device."""

    stack: int
    start: int
    stop: int
    cut: cutting.Cut
    weights: torch.Tensor  # (k, n_tiles) float64 on the host, arriving
    fraction: torch.Tensor  # (k,) float64 on the host, arriving
    ready: torch.cuda.Event | None  # fires when the host copies have arrived


class _Call:
    """One call of `embed_stacks`: its stacks, the tile queue and the result."""

    def __init__(
        self,
        embedder: Embedder,
        stacks: list[_Stack],
        options: InferenceOptions,
        device: torch.device,
        result: EmbedResult,
    ) -> None:
        self.embedder, self.spec, self.options = embedder, embedder.spec, options
        self.stacks, self.device, self.result = stacks, device, result
        self.cuda = device.type == "cuda"
        self.side = torch.cuda.Stream(device) if self.cuda else None
        self.queue: TileQueue[_Refs] = TileQueue()
        self.want_grid = options.output == "grid"

    # -- blocks: copied and cut ahead, on the side stream ------------------------------------

    def blocks(self, batch_size: int) -> Iterator[tuple[int, int, int]]:
        """(stack, start, stop) of every block: about one batch of tiles each, the first few
        smaller."""
        share = FIRST_BLOCK_SHARE
        for s, stack in enumerate(self.stacks):
            full = max(1, math.ceil(batch_size / stack.where.n_tiles))
            start = 0
            while start < len(stack.patches):
                size = max(1, full // share)
                share = max(1, share // 2)
                yield s, start, min(start + size, len(stack.patches))
                start += size

    def cut(self, s: int, start: int, stop: int) -> _Block:
        stack = self.stacks[s]
        on_side = torch.cuda.stream(self.side) if self.side else contextlib.nullcontext()
        with on_side:
            values = stack.patches.values[start:stop].to(self.device, non_blocking=True)
            cut = cutting.cut(values, stack.patches.encoding, self.spec, stack.where)
            weights, fraction = _to_host(cut.weights), _to_host(cut.valid_fraction)
            ready = None
            if self.side is not None:
                ready = torch.cuda.Event()
                ready.record(self.side)
        return _Block(s, start, stop, cut, weights, fraction, ready)

    def admit(self, block: _Block) -> None:
        """A cut block's runnable tiles into the queue; images without a valid pixel are
        NODATA and send none."""
        if block.ready is not None:
            block.ready.synchronize()
            block.cut.tiles.record_stream(torch.cuda.current_stream(self.device))
            block.cut.weights.record_stream(torch.cuda.current_stream(self.device))
        stack = self.stacks[block.stack]
        weights, fraction = block.weights.numpy(), block.fraction.numpy()
        rows = stack.rows[block.start : block.stop]
        self.result.valid_fraction[rows] = fraction
        alive = weights.sum(1) > 0
        for k in np.flatnonzero(~alive):
            self.result.status[rows[k]] = Status.NODATA
            self.result.reason[rows[k]] = _nodata_reason(float(fraction[k]), self.spec)
        run = alive[:, None] & ((weights > 0) | self.want_grid)
        picked = np.flatnonzero(run.ravel())
        if not len(picked):
            return
        n_tiles = stack.where.n_tiles
        flat = block.cut.tiles.flatten(0, 1)
        flat_w = block.cut.weights.flatten()
        if len(picked) < len(flat):
            index = torch.from_numpy(picked).to(self.device, non_blocking=True)
            flat, flat_w = flat.index_select(0, index), flat_w.index_select(0, index)
        image = block.start + picked // n_tiles
        refs = _Refs(
            block.stack,
            image,
            picked % n_tiles,
            weights.ravel()[picked],
            torch.from_numpy(image).to(self.device, non_blocking=True),
            flat_w,
        )
        self.queue.push(flat, refs)

    # -- stitching: on the device, in float64 ------------------------------------------------

    def stitch(self, refs: _Refs, outcome: Launched | Failure) -> None:
        sums = self.stacks[refs.stack].sums
        if isinstance(outcome, Failure):
            sums.fail(refs.image.tolist(), outcome.reason)
            return
        counts = refs.weight > 0  # in grid output, tiles without a valid pixel run too
        if counts.all():
            sums.add(refs.image_dev, refs.weight_dev, outcome.pooled)
        else:
            keep = torch.from_numpy(np.flatnonzero(counts)).to(self.device, non_blocking=True)
            sums.add(refs.image_dev[keep], refs.weight_dev[keep], outcome.pooled[keep])
        if outcome.grid is not None:
            sums.blend(refs.image_dev, refs.tile, outcome.grid)

    # -- results -----------------------------------------------------------------------------

    def finish(self) -> None:
        """Each stack's sums into the result, copied to the host once."""
        result = self.result
        for stack in self.stacks:
            sums = stack.sums
            pooled = sums.pooled()
            pending = np.flatnonzero(result.status[stack.rows] == Status.PENDING)
            for i in pending.tolist():
                row = stack.rows[i]
                if i in sums.failed:
                    result.status[row], result.reason[row] = Status.FAILED, sums.failed[i]
                else:
                    result.pooled[row] = pooled[i]
                    result.status[row], result.reason[row] = Status.OK, ""
            if result.grid is not None and sums.grid is not None:
                ok = np.flatnonzero(result.status[stack.rows] == Status.OK)
                maps = sums.maps(self.options)
                gh, gw = maps.shape[-2:]
                result.grid[stack.rows[ok], :, :gh, :gw] = maps[ok]


def _to_host(tensor: torch.Tensor) -> torch.Tensor:
    """A copy on the host, arriving asynchronously from a CUDA device (pinned memory)."""
    if tensor.device.type != "cuda":
        return tensor
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    return host.copy_(tensor, non_blocking=True)


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


def _check_stack(stack: PatchStack, index: int, spec: ModelSpec) -> None:
    channels = spec.channels()  # every sensor's bands, in the spec's sensor order
    if stack.bands != len(channels):
        raise ValueError(
            f"image {index}: model {spec.name} takes (C, H, W) arrays with C={len(channels)} "
            f"bands {channels} in that order; got shape {tuple(stack.values.shape[1:])}"
        )


def _check_image(image: np.ndarray, index: int, spec: ModelSpec) -> np.ndarray:
    arr = np.asarray(image, dtype=np.float32)
    channels = spec.channels()
    if arr.ndim != 3 or arr.shape[0] != len(channels) or 0 in arr.shape:
        raise ValueError(
            f"image {index}: model {spec.name} takes (C, H, W) arrays with C={len(channels)} "
            f"bands {channels} in that order; got shape {arr.shape}"
        )
    return arr


def _stack(
    rows: np.ndarray,
    patches: PatchStack,
    spec: ModelSpec,
    options: InferenceOptions,
    device: torch.device,
) -> _Stack:
    height, width = patches.size
    where = cutting.layout(spec, options, height, width)
    return _Stack(
        rows, patches, where, stitching.Sums.zeros(len(patches), where, spec, options, device)
    )


def embed_stacks(
    embedder: Embedder,
    stacks: Sequence[tuple[np.ndarray, PatchStack]],
    options: InferenceOptions,
    device: torch.device,
) -> EmbedResult:
    """Embed patch stacks, each with the positions of its images in the result, through one
    tile queue (see the module's note). Images without a valid pixel get NODATA; images
    whose tiles make the model raise get FAILED with the error as reason.

    `options.batch_size == "auto"` is resolved by `autobatch.resolve_batch_size`. In bf16
    and fp16 the model first passes `precision.check_precision` (once per model, device and
    precision in a process; it may keep layers in float32, or raise PrecisionError), and its
    report comes with the result. With `options.compile` the model's forward is compiled
    once per process (embedders.compiled)."""
    spec = embedder.spec
    device = batching.device_of(device)
    autocast = batching.precision_context(options.precision, device)
    n = sum(len(s) for _, s in stacks)
    for rows, patches in stacks:
        _check_stack(patches, int(rows[0]) if len(rows) else 0, spec)
    sizes = [(0, 0)] * n
    for rows, patches in stacks:
        for r in rows.tolist():
            sizes[r] = patches.size
    result = _empty_result(spec, options, sizes)
    if options.precision != "fp32":
        result.precision = precision.check_precision(embedder, options.precision, device)
    if n == 0:
        return result
    began = time.perf_counter()
    size = autobatch.resolve_batch_size(embedder, options, device)
    model, result.compile_s = execution.prepare(embedder, options, device, size)
    plan = BatchPlan(size, device, f"model {spec.name}")
    clock = ForwardClock(device)
    want_grid = options.output == "grid"

    def forward(tiles: torch.Tensor) -> Launched:
        with clock.forward(), autocast:
            return batching.launch(model, tiles, want_grid=want_grid)

    parts = [_stack(rows, patches, spec, options, device) for rows, patches in stacks]
    call = _Call(embedder, parts, options, device, result)
    with torch.inference_mode():
        _run(call, forward, plan)
        call.finish()
    result.forward_s = clock.seconds()
    result.embed_s = time.perf_counter() - began
    if plan.batch_size < size:
        autobatch.lower_auto_batch_size(embedder, options, device, plan.batch_size)
    return result


def _run(call: _Call, forward: batching.Forward, plan: BatchPlan) -> None:
    """Cut blocks ahead, admit their tiles, and run full batches as the queue fills."""
    pacer = batching.Pacer(call.device)
    cutting_ahead: deque[_Block] = deque()

    def run_batches(final: bool) -> None:
        while len(call.queue) >= plan.batch_size or (final and len(call.queue)):
            for refs, outcome in batching.step(call.queue, forward, plan):
                call.stitch(refs, outcome)
            pacer.mark()

    for s, start, stop in call.blocks(plan.batch_size):
        cutting_ahead.append(call.cut(s, start, stop))
        if len(cutting_ahead) > BLOCKS_AHEAD:
            call.admit(cutting_ahead.popleft())
            run_batches(final=False)
    while cutting_ahead:
        call.admit(cutting_ahead.popleft())
        run_batches(final=False)
    run_batches(final=True)


def embed_patches(
    embedder: Embedder, patches: PatchStack, options: InferenceOptions, device: torch.device
) -> EmbedResult:
    """Embed one stack of same-size patches (an export chunk's, as the inputs store holds
    them; see embed_stacks)."""
    return embed_stacks(embedder, [(np.arange(len(patches)), patches)], options, device)


def embed_images(
    embedder: Embedder,
    images: Sequence[np.ndarray],
    options: InferenceOptions,
    device: torch.device,
) -> EmbedResult:
    """Embed (C, H, W) float32 images (source units, NaN where masked); they may differ in
    size, and with `output == "grid"` the grids of smaller images are NaN beyond their own
    `tiling.grid_shape` (see embed_stacks)."""
    arrays = [_check_image(img, i, embedder.spec) for i, img in enumerate(images)]
    stacks = stacks_of_images(arrays)
    if device.type == "cuda":
        stacks = [(rows, s.pinned()) for rows, s in stacks]
    return embed_stacks(embedder, stacks, options, device)


def cut_tiles(image: np.ndarray, spec: ModelSpec, options: InferenceOptions) -> np.ndarray:
    """Every tile of one image as the model receives it: (n_tiles, C, T, T) float32 (on the
    CPU, by the same code that cuts them on any device)."""
    arr = np.asarray(image, dtype=np.float32)
    where = cutting.layout(spec, options, arr.shape[1], arr.shape[2])
    with torch.inference_mode():
        cut = cutting.cut(torch.from_numpy(arr)[None], FLOAT32, spec, where)
    return cut.tiles[0].numpy()


def _nodata_reason(valid_fraction: float, spec: ModelSpec) -> str:
    if valid_fraction == 0:
        return NODATA_REASON
    return (
        f"valid pixels too sparse: none is left after resizing the patch to {spec.tile_px} px "
        f"(valid fraction {valid_fraction:.4f}); use input_prep='tile'"
    )
