"""Time-series inputs: a chunk's imagery as one composite per time step, in the inputs store.

A sensor configuration with steps (`SensorConfig.steps`, embedders/steps.py) names its own
inputs group, beside the single composites of tasks/inputs.py, laid out the same way with a
step axis:

    <inputs_path>/<config.key()>/<chunk.key>/         attrs: as tasks/inputs.py, and
        "steps": [[first day, last day], ...]  (ISO dates, inclusive, one per step)
        "steps_done": {band: [step, ...]}       (the steps of each band that are stored)
        "step_notes": {step: {point id: why}}   (why a point has no data in a step)
    <inputs_path>/<config.key()>/<chunk.key>/<band>   (n_points, n_steps, N, N)

A band array holds the sensor's encoding (int16 with a fill value for masked pixels: masks
per step), chunked by CHUNK_POINTS points and one step, so each step is written, checked
and refetched on its own. A step counts as present once it is in `steps_done` (written after
its pixels); `bands_done` lists the bands whose every step is present, so the presence of a
chunk's inputs reads the same for a time series as for a composite. Each step is fetched as
any window is (`SensorConfig.step`): one composite of the step's days, by any source. Steps
of kind acquisitions (one acquisition a step per point, drawn and recorded in the group) are
fetched by tasks/acquisitions.py into the same arrays.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
import zarr.errors
from zarr.codecs import BloscCodec, Crc32cCodec

from embedders.encoding import Encoding, decode, encode_int16
from tasks.inputs import (
    CHUNK_POINTS,
    ENCODING_ATTR,
    DamagedInputsError,
    MissingInputsError,
    PrefetchReport,
    band_encoding,
    check_patches,
    chunk_group,
    dict_attr,
    list_attr,
    lock_for,
)
from tasks.sources.acquisitions import Acquisition
from tasks.sources.registry import Patches
from tasks.sources.sensors import encoding_of

if TYPE_CHECKING:
    from tasks.plan.chunks import Chunk
    from tasks.sources.registry import ImagerySource, SensorConfig

STEPS_ATTR = "steps"
STEPS_DONE_ATTR = "steps_done"
STEP_NOTES_ATTR = "step_notes"


@dataclass(frozen=True)
class Series:
    """A chunk's time series: values (n_points, n_steps, n_bands, N, N) float32 in the
    source's units, NaN where masked; each step's first and last day; why a point has no
    data in a step (step -> point id -> why). Steps of kind acquisitions add each point's
    acquisition a step (None where padded); their spans are the whole window."""

    point_ids: tuple[str, ...]
    bands: tuple[str, ...]
    values: np.ndarray
    spans: tuple[tuple[str, str], ...]
    step_notes: dict[int, dict[str, str]]
    acquisitions: tuple[tuple[Acquisition | None, ...], ...] | None = None

    @property
    def valid(self) -> np.ndarray:
        """(n_points, n_steps) bool: whether the step has any pixel that is not masked (a
        padded step, or one whose every pixel is cloud or nodata, has none)."""
        return np.isfinite(self.values).any(axis=(2, 3, 4))

    @property
    def day_of_year(self) -> np.ndarray:
        """(n_points, n_steps) int16: each step's day of the year (1..366): its
        acquisition's, 0 where padded; for monthly and spans steps, their middle day's."""
        n, t = self.values.shape[:2]
        if self.acquisitions is not None:
            days = [[a.day_of_year if a else 0 for a in row] for row in self.acquisitions]
            return np.asarray(days, np.int16).reshape(n, t)
        middles = [date.fromordinal((_ordinal(a) + _ordinal(b)) // 2) for a, b in self.spans]
        row = np.asarray([m.timetuple().tm_yday for m in middles], np.int16)
        return np.broadcast_to(row, (n, t)).copy()

    def notes(self) -> dict[str, str]:
        """Why a point has no data at all: it has none in any step (each step's reason)."""
        steps = range(len(self.spans))
        return {
            p: "no data in any step: "
            + "; ".join(f"{self._label(s)}: {self.step_notes[s][p]}" for s in steps)
            for p in self.point_ids
            if all(p in self.step_notes.get(s, {}) for s in steps)
        }

    def _label(self, step: int) -> str:
        if self.acquisitions is not None:
            return f"step {step}"
        return f"{self.spans[step][0]}..{self.spans[step][1]}"


def _ordinal(day: str) -> int:
    return date.fromisoformat(day).toordinal()


def prefetch_series(
    source: ImagerySource,
    chunk: Chunk,
    bands: Sequence[str],
    config: SensorConfig,
    inputs_path: str,
    *,
    refresh: bool = False,
) -> PrefetchReport:
    """Fetch the chunk's steps not yet in the inputs store, one source call a step (for the
    bands that step lacks), and store each as it comes: a rerun fetches only what is missing.

    `refresh` fetches every step again. Steps of kind acquisitions are drawn and read by
    tasks/acquisitions.py."""
    if config.steps is not None and config.steps.kind == "acquisitions":
        from tasks.acquisitions import prefetch_acquisitions  # it builds on this module

        return prefetch_acquisitions(source, chunk, bands, config, inputs_path, refresh=refresh)
    spans = [(a.isoformat(), b.isoformat()) for a, b in config.spans()]
    bands = list(dict.fromkeys(bands))
    group = series_group(inputs_path, config, chunk, spans)
    shape = (len(chunk.points), len(spans), config.patch_px, config.patch_px)
    encoding = encoding_of(config.sensor)
    done = {
        b: steps_done(group, b) if not refresh and fits(group, b, shape, encoding) else set()
        for b in bands
    }
    total = Tally()
    for step in range(len(spans)):
        todo = [b for b in bands if step not in done[b]]
        if not todo:
            continue
        patches = source.fetch(chunk.points, todo, config.step(step))
        check_patches(patches, chunk, todo, config)
        total.add(patches, todo)
        for band in todo:
            if not fits(group, band, shape, encoding):
                create_band(group, band, shape, encoding)
            write_step(group, band, step, patches.bands[band], encoding)
            done[band].add(step)
        mark_done(inputs_path, config, chunk, group, done, {step: patches.notes})
    return PrefetchReport(
        chunk.key,
        config.key(),
        tuple(b for b in bands if b in total.bands),
        tuple(b for b in bands if b not in total.bands),
        total.requests,
        total.bytes_read,
        resampled=total.resampled,
        flagged=tuple(sorted(total.flags.items())),
        steps=total.steps,
    )


@dataclass
class Tally:
    """What the source calls of one prefetch came to, step by step."""

    requests: int = 0
    bytes_read: int = 0
    resampled: int = 0  # the most points of any step whose patch came from another zone
    steps: int = 0
    bands: set[str] = field(default_factory=set)
    flags: dict[str, str] = field(default_factory=dict)

    def add(self, patches: Patches, bands: Sequence[str]) -> None:
        self.requests += patches.requests
        self.bytes_read += patches.bytes_read
        self.resampled = max(self.resampled, patches.resampled)
        self.steps += 1
        self.bands.update(bands)
        self.flags |= patches.flags


def read_series(
    inputs_path: str, config: SensorConfig, chunk: Chunk, bands: Sequence[str]
) -> Series:
    """The chunk's time series of `bands`, in that order: (n_points, n_steps, n_bands, N, N)
    float32, NaN where masked. A step that fails its checksum is marked not done (the next
    prefetch fetches that step alone) and refused with DamagedInputsError."""
    where = f"chunk {chunk.key} of sensor configuration {config.key()} in {inputs_path}"
    try:
        group = zarr.open_group(inputs_path, path=f"{config.key()}/{chunk.key}", mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
        raise MissingInputsError(f"{where} has no inputs; run prefetch for it first") from e
    spans = tuple((str(a), str(b)) for a, b in list_attr(group, STEPS_ATTR))
    lacking = {b: sorted(set(range(len(spans))) - steps_done(group, b)) for b in bands}
    if not spans or any(lacking.values()):
        raise MissingInputsError(
            f"{where} lacks steps { ({b: s for b, s in lacking.items() if s}) } of its "
            f"{len(spans)} (band: steps); run prefetch with these bands"
        )
    n, size = len(list_attr(group, "point_ids")), config.patch_px
    values = np.empty((n, len(spans), len(bands), size, size), np.float32)
    for k, band in enumerate(bands):
        array = group.get(band)
        if not isinstance(array, zarr.Array):
            _forget(inputs_path, config, chunk, band, range(len(spans)))
            raise DamagedInputsError(
                f"{where}: band {band} is listed as done but has no array; rerun to fetch it"
            )
        encoding = band_encoding(array, where)
        for step in range(len(spans)):
            try:
                stored = np.asarray(array[:, step])
            except (ValueError, RuntimeError, OSError) as e:
                _forget(inputs_path, config, chunk, band, [step])
                raise DamagedInputsError(
                    f"{where}: step {step} ({spans[step][0]}..{spans[step][1]}) of band {band} "
                    f"is damaged ({type(e).__name__}: {e}); it is marked to be fetched again: "
                    "rerun the export"
                ) from e
            values[:, step, k] = decode(stored, encoding)
    notes = dict_attr(group, STEP_NOTES_ATTR)
    acquisitions = None
    if config.steps is not None and config.steps.kind == "acquisitions":
        from tasks.acquisitions import read_draw  # it builds on this module

        acquisitions = read_draw(group, chunk, where)
    return Series(
        point_ids=tuple(list_attr(group, "point_ids")),
        bands=tuple(bands),
        values=values,
        spans=spans,
        step_notes={int(s): {p: str(w) for p, w in dict(v).items()} for s, v in notes.items()},
        acquisitions=acquisitions,
    )


def series_group(
    inputs_path: str, config: SensorConfig, chunk: Chunk, spans: list[tuple[str, str]]
) -> zarr.Group:
    group = chunk_group(inputs_path, config, chunk)
    recorded = [tuple(s) for s in list_attr(group, STEPS_ATTR)]
    if not recorded:
        group.attrs.update({STEPS_ATTR: [list(s) for s in spans], STEPS_DONE_ATTR: {}})
    elif recorded != spans:
        raise ValueError(
            f"inputs group {config.key()}/{chunk.key} in {inputs_path} holds other steps "
            f"({recorded}) than its configuration ({spans}); remove that group and rerun"
        )
    return group


def steps_done(group: zarr.Group, band: str) -> set[int]:
    steps = dict_attr(group, STEPS_DONE_ATTR).get(band)
    return {int(s) for s in steps} if isinstance(steps, list) else set()


def fits(group: zarr.Group, band: str, shape: tuple[int, ...], encoding: Encoding) -> bool:
    """Whether the band's array is there, of the chunk's shape and the sensor's dtype: its
    stored steps can be kept."""
    try:
        array = group.get(band)
    except (zarr.errors.BaseZarrError, ValueError, OSError):
        return False  # unreadable metadata: made again
    return (
        isinstance(array, zarr.Array)
        and array.shape == shape
        and array.dtype == np.dtype(_dtype(encoding))
    )


def _dtype(encoding: Encoding) -> str:
    return "float32" if encoding.fill is None else "int16"


def create_band(
    group: zarr.Group, band: str, shape: tuple[int, ...], encoding: Encoding
) -> zarr.Array[Any]:
    """The band's array, every step unwritten (the fill value: masked); one Zarr chunk holds
    CHUNK_POINTS points of one step."""
    fill: float | int = np.nan if encoding.fill is None else encoding.fill
    return group.create_array(
        band,
        shape=shape,
        chunks=(min(CHUNK_POINTS, max(1, shape[0])), 1, *shape[2:]),
        dtype=_dtype(encoding),
        fill_value=fill,
        compressors=[BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), Crc32cCodec()],
        attributes={ENCODING_ATTR: asdict(encoding)},
        overwrite=True,
    )


def write_step(
    group: zarr.Group, band: str, step: int, values: np.ndarray, encoding: Encoding
) -> None:
    """One step of one band: float32 values (NaN where masked), or values already encoded."""
    encoded = encoding.fill is not None and values.dtype == np.dtype("int16")
    data = values if encoding.fill is None or encoded else encode_int16(values, encoding)
    array = group[band]
    assert isinstance(array, zarr.Array)
    array[:, step] = data.astype(_dtype(encoding), copy=False)


def mark_done(
    inputs_path: str,
    config: SensorConfig,
    chunk: Chunk,
    group: zarr.Group,
    done: dict[str, set[int]],
    notes: dict[int, dict[str, str]],
) -> None:
    """Record the steps stored (after their pixels) and why points lack data in them."""
    n_steps = len(list_attr(group, STEPS_ATTR))
    with lock_for(f"{inputs_path}/{config.key()}/{chunk.key}"):
        steps_done = dict_attr(group, STEPS_DONE_ATTR) | {b: sorted(s) for b, s in done.items()}
        step_notes = dict_attr(group, STEP_NOTES_ATTR) | {str(s): n for s, n in notes.items()}
        complete = [b for b, s in steps_done.items() if len(s) == n_steps]
        group.attrs.update(
            {
                STEPS_DONE_ATTR: steps_done,
                STEP_NOTES_ATTR: step_notes,
                "bands_done": sorted(complete),
            }
        )


def _forget(
    inputs_path: str, config: SensorConfig, chunk: Chunk, band: str, steps: Iterable[int]
) -> None:
    """Mark damaged steps of a band not done: the next prefetch fetches them alone."""
    path = f"{config.key()}/{chunk.key}"
    with lock_for(f"{inputs_path}/{path}"):
        group = zarr.open_group(inputs_path, path=path, mode="r+")
        kept = sorted(steps_done(group, band) - set(steps))
        group.attrs.update(
            {
                STEPS_DONE_ATTR: dict_attr(group, STEPS_DONE_ATTR) | {band: kept},
                "bands_done": [b for b in list_attr(group, "bands_done") if b != band],
            }
        )
