"""Tile-flattened batch inference: many images in, one embedding (and grid) per image out.

Every image is normalised, its invalid pixels filled, then cut into tiles (or resized to
one tile). The tiles of all images form one stream that runs through the model in
batches of `options.batch_size`; the outputs are stitched back per image in stream order,
accumulated in float64, so the result does not depend on the batch size or on which other
images share the call.
"""

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from embedders import tiling
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


@dataclass
class _Prepared:
    """One image ready for the model: normalised, filled, padded or resized."""

    image: np.ndarray  # (C, Hp, Wp) float32
    origins: list[tuple[int, int]]  # (y0, x0) of each tile
    weights: np.ndarray  # (n_tiles,) pooling weight of each tile
    height: int  # unpadded size
    width: int


@dataclass(frozen=True)
class _TileRef:
    image: int
    tile: int  # index into the image's origins


@dataclass(frozen=True)
class _Failure:
    reason: str  # "<exception type>: <message>"


_Outcome = tuple[np.ndarray, np.ndarray | None] | _Failure


def normalise(image: np.ndarray, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """Normalise per band and fill invalid pixels with 0 (the dataset mean).

    Returns the filled image and the validity mask (all bands finite).
    """
    valid = np.isfinite(image).all(axis=0)
    mean = np.asarray(spec.norm_mean, dtype=np.float32)[:, None, None]
    std = np.asarray(spec.norm_std, dtype=np.float32)[:, None, None]
    out = ((image - mean) / std).astype(np.float32)
    out[:, ~valid] = 0.0
    return out, valid


def prepare(image: np.ndarray, spec: ModelSpec, options: InferenceOptions) -> _Prepared:
    """Normalise one (C, H, W) image and cut it into tiles (or resize it to one tile)."""
    filled, valid = normalise(image, spec)
    _, height, width = image.shape
    tile = spec.tile_px
    if options.input_prep == "resize":
        resized, valid_r = tiling.resize_to_tile(filled, valid, tile)
        return _Prepared(resized, [(0, 0)], np.array([float(valid_r.sum())]), height, width)
    padded, valid_p = tiling.pad_to_tile(filled, valid, tile, spec.pad_mode)
    height_p, width_p = valid_p.shape
    origins = tiling.tile_origins(height_p, width_p, tile, options.tile_overlap_px)
    weights = tiling.tile_weights(valid_p, origins, tile)
    return _Prepared(padded, origins, weights, height, width)


def _check_image(image: np.ndarray, index: int, spec: ModelSpec) -> np.ndarray:
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[0] != len(spec.bands) or 0 in arr.shape:
        raise ValueError(
            f"image {index}: model {spec.name} takes (C, H, W) arrays with C={len(spec.bands)} "
            f"bands {spec.bands} in that order; got shape {arr.shape}"
        )
    return arr


def _precision_context(
    options: InferenceOptions, device: torch.device
) -> contextlib.AbstractContextManager[object]:
    if options.precision == "fp32":
        return contextlib.nullcontext()
    if options.precision == "fp16" and device.type != "cuda":
        raise ValueError(
            f"precision fp16 needs a CUDA device, got {device}; use bf16 or fp32 on {device.type}"
        )
    dtype = torch.bfloat16 if options.precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def forward_batch(
    embedder: Embedder, batch: np.ndarray, device: torch.device, *, want_grid: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """One forward of a (B, C, T, T) batch; outputs as float32 numpy on the CPU."""
    tiles = torch.from_numpy(batch)
    if device.type == "cuda":
        tiles = tiles.pin_memory()
    pooled, grid = embedder.forward(tiles.to(device, non_blocking=True))
    pooled_np = pooled.float().cpu().numpy()
    return pooled_np, grid.float().cpu().numpy() if want_grid else None


def _isolate(
    run: Callable[[list[_TileRef]], tuple[np.ndarray, np.ndarray | None]], refs: list[_TileRef]
) -> list[_Outcome]:
    """Run a batch; if it raises (other than out-of-memory), split it in halves until
    the failing tiles are found. Returns one outcome per tile, in order."""
    try:
        pooled, grid = run(refs)
    except torch.OutOfMemoryError:
        raise
    except Exception as e:  # a failing tile marks its image FAILED; the others go on
        if len(refs) == 1:
            return [_Failure(f"{type(e).__name__}: {e}")]
        mid = len(refs) // 2
        return _isolate(run, refs[:mid]) + _isolate(run, refs[mid:])
    return [(pooled[k], None if grid is None else grid[k]) for k in range(len(refs))]


def _outcomes(
    run: Callable[[list[_TileRef]], tuple[np.ndarray, np.ndarray | None]],
    refs: list[_TileRef],
    batch_size: int,
    what: str,
) -> Iterator[tuple[_TileRef, _Outcome]]:
    """Outcomes of all tiles in stream order; halves the batch on out-of-memory and
    retries the same tiles, so no tile is lost or done twice."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pos = 0
    while pos < len(refs):
        batch = refs[pos : pos + batch_size]
        try:
            outs = _isolate(run, batch)
        except torch.OutOfMemoryError as e:
            if len(batch) == 1:
                raise torch.OutOfMemoryError(
                    f"{what}: out of memory with a batch of one tile; free device memory, "
                    "use a device with more memory or a smaller model"
                ) from e
            batch_size = len(batch) // 2
            log.warning("%s: out of memory; retrying with batch size %d", what, batch_size)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        yield from zip(batch, outs, strict=True)
        pos += len(batch)


@dataclass
class _Stitcher:
    """Accumulates tile outputs per image, in stream order, in float64."""

    spec: ModelSpec
    options: InferenceOptions
    prepared: dict[int, _Prepared]
    sums: dict[int, np.ndarray] = field(default_factory=dict)
    weights: dict[int, float] = field(default_factory=dict)
    blenders: dict[int, tiling.GridBlender] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)

    def add(self, ref: _TileRef, outcome: _Outcome) -> None:
        i = ref.image
        if isinstance(outcome, _Failure):
            self.failed.setdefault(i, outcome.reason)
            return
        pooled, grid = outcome
        w = float(self.prepared[i].weights[ref.tile])
        if w > 0:
            self.sums[i] = self.sums.get(i, 0.0) + w * pooled.astype(np.float64)
            self.weights[i] = self.weights.get(i, 0.0) + w
        if grid is not None:
            self._blend(i, grid, ref.tile)

    def _blend(self, i: int, grid: np.ndarray, tile: int) -> None:
        if self.options.input_prep == "resize":
            self.blenders[i] = tiling.GridBlender(
                grid.astype(np.float64), np.ones(grid.shape[1:]), 1
            )
            return
        if i not in self.blenders:
            _, hp, wp = self.prepared[i].image.shape
            self.blenders[i] = tiling.GridBlender.for_image(
                grid.shape[0], hp, wp, self.spec.grid_stride_px
            )
        self.blenders[i].add(grid, *self.prepared[i].origins[tile])

    def write(self, i: int, result: EmbedResult) -> None:
        if i in self.failed:
            result.status[i], result.reason[i] = Status.FAILED, self.failed[i]
            return
        result.pooled[i] = self.sums[i] / self.weights[i]
        if result.grid is not None:
            p = self.prepared[i]
            gh, gw = tiling.grid_shape(self.spec, self.options, p.height, p.width)
            result.grid[i, :, :gh, :gw] = self.blenders[i].result((gh, gw))
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
    """
    spec = embedder.spec
    precision = _precision_context(options, device)
    arrays = [_check_image(img, i, spec) for i, img in enumerate(images)]
    result = _empty_result(spec, options, [a.shape[1:] for a in arrays])
    prepared: dict[int, _Prepared] = {}
    refs: list[_TileRef] = []
    for i, arr in enumerate(arrays):
        result.valid_fraction[i] = np.isfinite(arr).all(axis=0).mean()
        p = prepare(arr, spec, options)
        if p.weights.sum() <= 0:
            result.status[i] = Status.NODATA
            result.reason[i] = _nodata_reason(result.valid_fraction[i], spec)
            continue
        prepared[i] = p
        keep_all = options.output == "grid"  # every cell of the grid needs a tile
        refs += [_TileRef(i, t) for t, w in enumerate(p.weights) if keep_all or w > 0]

    def run(batch: list[_TileRef]) -> tuple[np.ndarray, np.ndarray | None]:
        tiles = np.stack([_cut(prepared[r.image], r.tile, spec.tile_px) for r in batch])
        return forward_batch(embedder, tiles, device, want_grid=result.grid is not None)

    stitcher = _Stitcher(spec, options, prepared)
    with torch.inference_mode(), precision:
        for ref, outcome in _outcomes(run, refs, options.batch_size, f"model {spec.name}"):
            stitcher.add(ref, outcome)
    for i in prepared:
        stitcher.write(i, result)
    return result


def _cut(p: _Prepared, tile: int, side: int) -> np.ndarray:
    y0, x0 = p.origins[tile]
    return p.image[:, y0 : y0 + side, x0 : x0 + side]


def _nodata_reason(valid_fraction: float, spec: ModelSpec) -> str:
    if valid_fraction == 0:
        return NODATA_REASON
    return (
        f"valid pixels too sparse: none is left after resizing the patch to {spec.tile_px} px "
        f"(valid fraction {valid_fraction:.4f}); use input_prep='tile'"
    )
