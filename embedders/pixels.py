"""Pixel time-series inference: a model that embeds each pixel's series (`ModelSpec.takes ==
"pixel-series"`, e.g. embedders/tessera_otf.py) over the patches of many points.

The pixels of every point of a call form one stream, run through the model in full batches
by the tile engine's machinery (embedders.batching: the queue, out-of-memory backoff,
failure isolation, pacing; embedders.autobatch for "auto"; the precision guard), and are
stitched back per point on the device: grid, each pixel's vector in its place on the patch
grid; pooled, the mean of the patch's valid pixels' vectors, summed in float64. A pixel's
vector depends on its own series alone, so results do not depend on the batch size beyond
the float32 rounding of a forward's matrix products at another batch size.

A pixel's series, built on the device (`pixel_stream`): each sensor's bands, normalised with the
spec's statistics, then that sensor's day of year of the step at that point
(`PixelSeries.day_of_year`: a step's middle day, or its acquisition's), in
`ModelSpec.sensor_bands()` order; then, for a model with `ModelSpec.series_latlon`, the point's
latitude and longitude in degrees at every step (`PixelSeries.latlon`). A step is valid for a
sensor where all its bands are (not NaN). A pixel with no valid step of some sensor is invalid:
it is not run, and is NaN in the grid. A valid pixel's invalid steps are filled from its valid
ones in time order, the valid step k * j // T at position j (k valid steps of T): each valid
step repeated about T / k times, in order, a deterministic form of upstream Tessera's sampling
of valid acquisitions with replacement. A point with no valid pixel is NODATA.
"""

import time
from dataclasses import dataclass

import numpy as np
import torch

from embedders import autobatch, batching, execution, precision
from embedders.batching import BatchPlan, Failure, ForwardClock, Launched, TileQueue
from embedders.engine import EmbedResult
from embedders.spec import Embedder, InferenceOptions, ModelSpec, Status

NODATA_REASON = "no pixel with a valid step of every sensor the model reads (nodata or cloud)"


@dataclass(frozen=True)
class PixelSeries:
    """The time series of a call's points: `values` (n, steps, C, H, W) float32 in the
    sources' units, channels in `ModelSpec.channels()` order, NaN where masked;
    `day_of_year` (n, sensors, steps) of each step at each point for each sensor of
    `sensor_bands()` (`tasks.series.Series.day_of_year`, one per sensor); `latlon` (n, 2),
    each point's latitude and longitude in degrees, for a model that takes them."""

    values: np.ndarray
    day_of_year: np.ndarray
    latlon: np.ndarray | None = None


@dataclass(frozen=True)
class _Refs:
    """Whose pixels a run of the queue holds: point and flat pixel index, per pixel."""

    point: np.ndarray  # (m,) on the host
    point_dev: torch.Tensor
    pixel_dev: torch.Tensor

    def __len__(self) -> int:
        return len(self.point)

    def __getitem__(self, part: slice) -> "_Refs":
        return _Refs(self.point[part], self.point_dev[part], self.pixel_dev[part])


def _check(series: PixelSeries, spec: ModelSpec) -> None:
    values, doy = series.values, series.day_of_year
    channels, groups = spec.channels(), spec.sensor_bands()
    if spec.takes != "pixel-series":
        raise ValueError(f"model {spec.name} takes tiles, not pixel series; use embedders.engine")
    if values.ndim != 5 or values.shape[2] != len(channels):
        raise ValueError(
            f"model {spec.name} takes (points, steps, C, H, W) series with C={len(channels)} "
            f"channels {channels} in that order; got shape {values.shape}"
        )
    if doy.shape != (values.shape[0], len(groups), values.shape[1]):
        raise ValueError(
            f"model {spec.name}: day_of_year must be (points, sensors, steps) = "
            f"{(values.shape[0], len(groups), values.shape[1])}, one row per sensor of "
            f"{[s for s, _ in groups]}; got {doy.shape}"
        )
    if spec.series_latlon and (series.latlon is None or series.latlon.shape != (len(values), 2)):
        got = None if series.latlon is None else series.latlon.shape
        raise ValueError(
            f"model {spec.name} takes each point's latitude and longitude: PixelSeries.latlon "
            f"must be (points, 2) = {(len(values), 2)}; got {got}"
        )


def pixel_stream(
    values: torch.Tensor,
    day_of_year: torch.Tensor,
    spec: ModelSpec,
    *,
    latlon: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One point's series (steps, C, H, W), with its days of year (sensors, steps) and, for
    a model that takes them, its (latitude, longitude), as the model takes it: (valid
    pixels, steps, width) normalised, and the flat indices of those pixels (see the module's
    note)."""
    steps, c, h, w = values.shape
    x = values.permute(2, 3, 0, 1).reshape(h * w, steps, c)
    mean = torch.tensor(spec.norm_mean, dtype=x.dtype, device=x.device)
    std = torch.tensor(spec.norm_std, dtype=x.dtype, device=x.device)
    x = (x - mean) / std
    parts, alive = [], torch.ones(h * w, dtype=torch.bool, device=x.device)
    start = 0
    for g, (_, bands) in enumerate(spec.sensor_bands()):
        part = x[:, :, start : start + len(bands)]
        start += len(bands)
        valid = torch.isfinite(part).all(dim=2)  # (P, steps)
        k = valid.sum(dim=1)
        alive &= k > 0
        # the valid steps first, in time order; position j takes valid step k * j // T
        order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices
        pick = (torch.arange(steps, device=x.device)[None, :] * k[:, None]) // steps
        chosen = order.gather(1, pick)
        doy = day_of_year[g].to(x.dtype)[chosen]
        picked = part.gather(1, chosen[:, :, None].expand(-1, -1, len(bands)))
        parts.append(torch.cat([picked, doy[:, :, None]], dim=2))
    if spec.series_latlon:
        if latlon is None:
            raise ValueError(f"model {spec.name} takes each point's latitude and longitude")
        parts.append(latlon.to(x.dtype)[None, None, :].expand(h * w, steps, 2))
    keep = torch.nonzero(alive).flatten()
    return torch.cat(parts, dim=2).index_select(0, keep), keep


class _Sums:
    """Per point, on the device: the float64 sum of its pixels' vectors; and its grid."""

    def __init__(self, n: int, dim: int, pixels: int, device: torch.device, grid: bool) -> None:
        self.total = torch.zeros((n, dim), dtype=torch.float64, device=device)
        self.grid = (
            torch.full((n, dim, pixels), float("nan"), dtype=torch.float32, device=device)
            if grid
            else None
        )
        self.failed: dict[int, str] = {}

    def add(self, refs: _Refs, outcome: Launched | Failure) -> None:
        if isinstance(outcome, Failure):
            for p in set(refs.point.tolist()):
                self.failed.setdefault(p, outcome.reason)
            return
        self.total.index_add_(0, refs.point_dev, outcome.pooled.double())
        if self.grid is not None:
            self.grid[refs.point_dev, :, refs.pixel_dev] = outcome.pooled


def _empty(spec: ModelSpec, options: InferenceOptions, n: int, h: int, w: int) -> EmbedResult:
    grid = None
    if options.output == "grid":
        grid = np.full((n, spec.embed_dim, h, w), np.nan, dtype=np.float32)
    return EmbedResult(
        pooled=np.full((n, spec.embed_dim), np.nan, dtype=np.float32),
        grid=grid,
        valid_fraction=np.zeros(n, dtype=np.float32),
        status=np.full(n, Status.PENDING, dtype=np.int8),
        reason=[""] * n,
    )


def embed_series(
    embedder: Embedder, series: PixelSeries, options: InferenceOptions, device: torch.device
) -> EmbedResult:
    """Embed the pixel series of every point (see the module's note); the grid, with
    `options.output == "grid"`, is (n, D, H, W): one vector per pixel, NaN where invalid.

    Batch size "auto", the precision guard and `options.compile` as in
    `engine.embed_stacks`; a pixel whose forward raises makes its point FAILED."""
    spec = embedder.spec
    _check(series, spec)
    device = batching.device_of(device)
    n, _, _, h, w = series.values.shape
    result = _empty(spec, options, n, h, w)
    if options.precision != "fp32":
        result.precision = precision.check_precision(embedder, options.precision, device)
    if n == 0:
        return result
    began = time.perf_counter()
    size = autobatch.resolve_batch_size(embedder, options, device)
    model, result.compile_s = execution.prepare(embedder, options, device, size)
    plan = BatchPlan(size, device, f"model {spec.name}")
    clock, autocast = ForwardClock(device), batching.precision_context(options.precision, device)

    def forward(x: torch.Tensor) -> Launched:
        with clock.forward(), autocast:
            return batching.launch(model, x, want_grid=False)

    sums = _Sums(n, spec.embed_dim, h * w, device, options.output == "grid")
    counts = np.zeros(n, dtype=np.int64)
    with torch.inference_mode():
        _run(series, spec, device, plan, forward, sums, counts)
        _finish(result, sums, counts)
    result.valid_fraction[:] = counts / (h * w)
    result.forward_s = clock.seconds()
    result.embed_s = time.perf_counter() - began
    if plan.batch_size < size:
        autobatch.lower_auto_batch_size(embedder, options, device, plan.batch_size)
    return result


def _run(
    series: PixelSeries,
    spec: ModelSpec,
    device: torch.device,
    plan: BatchPlan,
    forward: batching.Forward,
    sums: _Sums,
    counts: np.ndarray,
) -> None:
    """Each point's valid pixels into the queue, full batches run as it fills."""
    queue: TileQueue[_Refs] = TileQueue()
    pacer = batching.Pacer(device)
    doy = torch.from_numpy(np.asarray(series.day_of_year, dtype=np.float32))
    latlon = None if series.latlon is None else np.asarray(series.latlon, dtype=np.float32)

    def run_batches(final: bool) -> None:
        while len(queue) >= plan.batch_size or (final and len(queue)):
            for refs, outcome in batching.step(queue, forward, plan):
                sums.add(refs, outcome)
            pacer.mark()

    for i in range(len(series.values)):
        values = torch.from_numpy(np.ascontiguousarray(series.values[i], dtype=np.float32))
        where = None if latlon is None else torch.from_numpy(latlon[i]).to(device)
        stream, keep = pixel_stream(values.to(device), doy[i].to(device), spec, latlon=where)
        counts[i] = len(keep)
        point = np.full(len(keep), i, dtype=np.int64)
        queue.push(stream, _Refs(point, torch.from_numpy(point).to(device), keep))
        run_batches(final=False)
    run_batches(final=True)


def _finish(result: EmbedResult, sums: _Sums, counts: np.ndarray) -> None:
    """The sums into the result, copied to the host once."""
    pooled = (sums.total / torch.from_numpy(np.maximum(counts, 1)).to(sums.total)[:, None]).cpu()
    grid = sums.grid.cpu().numpy() if sums.grid is not None else None
    for i, count in enumerate(counts.tolist()):
        if not count:
            result.status[i], result.reason[i] = Status.NODATA, NODATA_REASON
        elif i in sums.failed:
            result.status[i], result.reason[i] = Status.FAILED, sums.failed[i]
        else:
            result.status[i], result.reason[i] = Status.OK, ""
            result.pooled[i] = pooled[i].numpy().astype(np.float32)
            if grid is not None and result.grid is not None:
                result.grid[i] = grid[i].reshape(result.grid.shape[1:])
