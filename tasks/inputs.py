"""The inputs store: each chunk's imagery, fetched once per sensor configuration, compact.

Layout (Zarr v3), one group per sensor configuration and chunk:

    <inputs_path>/<config.key()>/              attrs: {"config": {...the SensorConfig...}}
    <inputs_path>/<config.key()>/<chunk.key>/  attrs: {"point_ids": [...], "notes": {id: why},
                                                       "bands_done": [band, ...],
                                                       "flagged_items": {item id: why}}
    <inputs_path>/<config.key()>/<chunk.key>/<band>   (n_points, N, N)

A band array holds the sensor's values as its encoding says (tasks/sources/sensors.py): for imagery
int16 with a fill value for masked pixels (`embedders.patches`, 2 bytes per band-pixel,
with how a median composite is rounded), for embedding products float32 with NaN. The
array's `encoding` attribute says which; an array without it is of the store's first
format (float32, NaN = masked) and is read as such, never misread. Arrays are chunked by
CHUNK_POINTS points, compressed with Blosc (LZ4, byte shuffle: decoded at several GB/s per
core, so that reading a chunk keeps up with a GPU) and carry a CRC-32C per Zarr chunk,
checked on every read: a damaged band is refused and fetched again by the next run.

A band counts as present only once its name is in `bands_done`, which is written after the
array: a prefetch that dies half way leaves a band that the next run fetches again.
Prefetches of different chunks may run at once (threads or processes); one chunk of one
configuration is prefetched by one task at a time.

Nothing here imports Prefect: tasks/prefetch.py wraps `prefetch_chunk` in a task, and the
infer stage reads with `read_stack` (bench/infer_task_bench.py runs it on a bare machine).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
import zarr.errors
from zarr.codecs import BloscCodec, Crc32cCodec

from embedders.encoding import FLOAT32, Encoding, decode, encode_int16
from tasks.sources.registry import ImagerySource, Patches, SensorConfig
from tasks.sources.sensors import encoding_of

if TYPE_CHECKING:
    from embedders.patches import PatchStack
    from tasks.plan.chunks import Chunk

# Points per Zarr chunk of a band array: the chunks of a band decode in parallel.
CHUNK_POINTS = 16
ENCODING_ATTR = "encoding"
# A chunk group's items whose pixels the source dropped, item id -> why (Patches.flags)
FLAGGED_ATTR = "flagged_items"

_chunk_locks: dict[str, threading.Lock] = {}
_chunk_locks_guard = threading.Lock()


class MissingInputsError(LookupError):
    """The inputs store lacks patches that the infer stage asked for."""


class DamagedInputsError(MissingInputsError):
    """A band of the inputs store fails its checksum or cannot be decoded: it is marked not
    done, so the next run fetches it again."""


@dataclass(frozen=True)
class PrefetchReport:
    chunk: str
    config: str
    fetched: tuple[str, ...]  # bands fetched from the source by this call
    reused: tuple[str, ...]  # bands already in the store
    requests: int = 0  # requests the source made (as it counts them)
    bytes_read: int = 0  # bytes of pixels it received
    retries: int = 0  # attempts of this task that failed transiently before this one
    resampled: int = 0  # points whose patch took pixels of another UTM zone (Patches.resampled)
    # items whose pixels the source dropped: their values contradict their offset metadata
    flagged: tuple[tuple[str, str], ...] = ()  # (item id, why)
    steps: int = 0  # a time series (tasks/series.py): the steps this call fetched


def prefetch_chunk(
    source: ImagerySource,
    chunk: Chunk,
    bands: Sequence[str],
    config: SensorConfig,
    inputs_path: str,
    *,
    refresh: bool = False,
) -> PrefetchReport:
    """Fetch the chunk's bands not yet in the inputs store, in one source call, and store them.

    `refresh` fetches every band again. A time series (`config.steps`) is fetched step by
    step (tasks/series.py).
    """
    if config.steps is not None:
        from tasks.series import prefetch_series  # it builds on this module

        return prefetch_series(source, chunk, bands, config, inputs_path, refresh=refresh)
    group = chunk_group(inputs_path, config, chunk)
    done = set() if refresh else set(list_attr(group, "bands_done"))
    todo = [b for b in dict.fromkeys(bands) if b not in done]
    reused = tuple(b for b in dict.fromkeys(bands) if b in done)
    requests = bytes_read = resampled = 0
    flagged: tuple[tuple[str, str], ...] = ()
    if todo:
        patches = source.fetch(chunk.points, todo, config)
        requests, bytes_read, resampled = patches.requests, patches.bytes_read, patches.resampled
        flagged = tuple(sorted(patches.flags.items()))
        check_patches(patches, chunk, todo, config)
        fetched = replace(patches, bands={b: patches.bands[b] for b in todo})
        store_patches(inputs_path, config, chunk, fetched, group=group)
    return PrefetchReport(
        chunk.key,
        config.key(),
        tuple(todo),
        reused,
        requests,
        bytes_read,
        resampled=resampled,
        flagged=flagged,
    )


def store_patches(
    inputs_path: str,
    config: SensorConfig,
    chunk: Chunk,
    patches: Patches,
    *,
    group: zarr.Group | None = None,
) -> None:
    """Write a chunk's bands, as the sensor's encoding stores them, then mark them done."""
    group = group or chunk_group(inputs_path, config, chunk)
    encoding = encoding_of(config.sensor)
    for band, values in patches.bands.items():
        write_band(group, band, values, encoding)
    with lock_for(f"{inputs_path}/{config.key()}/{chunk.key}"):
        notes = {**dict_attr(group, "notes"), **patches.notes}
        done = set(list_attr(group, "bands_done")) | set(patches.bands)
        update: dict[str, Any] = {"notes": notes, "bands_done": sorted(done)}
        if patches.flags or FLAGGED_ATTR in group.attrs:
            update[FLAGGED_ATTR] = {**dict_attr(group, FLAGGED_ATTR), **patches.flags}
        group.attrs.update(update)


def write_band(group: zarr.Group, band: str, values: np.ndarray, encoding: Encoding) -> None:
    """One band's (n, N, N) patches stored as `encoding` says: float32 values (NaN where
    masked), or values already encoded (int16)."""
    encoded = encoding.fill is not None and values.dtype == np.dtype("int16")
    data = values if encoding.fill is None or encoded else encode_int16(values, encoding)
    dtype = "float32" if encoding.fill is None else "int16"
    fill: float | int = np.nan if encoding.fill is None else encoding.fill
    chunks = (min(CHUNK_POINTS, max(1, data.shape[0])), *data.shape[1:])
    array = group.create_array(
        band,
        shape=data.shape,
        chunks=chunks,
        dtype=dtype,
        fill_value=fill,
        compressors=[BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), Crc32cCodec()],
        attributes={ENCODING_ATTR: asdict(encoding)},
        overwrite=True,
    )
    array[...] = data.astype(dtype, copy=False)


def band_encoding(array: zarr.Array[Any], where: str) -> Encoding:
    """How a band array's values are stored: its `encoding` attribute, or the first format
    (float32 with NaN) for an array without one."""
    attr = array.attrs.get(ENCODING_ATTR)
    if attr is None and array.dtype == np.dtype("float32"):
        return FLOAT32
    if isinstance(attr, dict):
        encoding = Encoding(**attr)
        if (encoding.fill is None) == (array.dtype == np.dtype("float32")):
            return encoding
    raise DamagedInputsError(
        f"{where}: band {array.basename} is {array.dtype} with encoding {attr!r}, which this "
        "version of swath does not read; remove the work directory's inputs.zarr and rerun"
    )


def read_band(
    array: zarr.Array[Any], where: str, *, index: int | slice = slice(None)
) -> np.ndarray:
    """A band array's values (all points, or `index`) as float32, NaN where masked."""
    encoding = band_encoding(array, where)
    return decode(_values(array, where, index), encoding)


def read_patches(
    inputs_path: str, config: SensorConfig, chunk: Chunk, bands: Sequence[str]
) -> Patches:
    """The chunk's patches for `bands` as float32 (NaN = masked), as the source delivered
    them up to the store's rounding."""
    group, where = _open_chunk(inputs_path, config, chunk, bands)
    return Patches(
        point_ids=tuple(list_attr(group, "point_ids")),
        bands={b: read_band(_array(group, b, where), where) for b in bands},
        notes={k: str(v) for k, v in dict_attr(group, "notes").items()},
    )


def read_stack(
    inputs_path: str, config: SensorConfig, chunk: Chunk, bands: Sequence[str], *, pin: bool
) -> tuple[PatchStack, dict[str, str]]:
    """The chunk's patches for `bands` in that order as one (n, C, N, N) stack of stored
    values (copied once, into pinned memory when `pin`), and the source's notes per point.
    Bands of different encodings (a store of the first format completed by a later run)
    are decoded to float32."""
    return read_stacks(inputs_path, [(config, bands)], chunk, pin=pin)


def read_stacks(
    inputs_path: str,
    sensors: Sequence[tuple[SensorConfig, Sequence[str]]],
    chunk: Chunk,
    *,
    pin: bool,
) -> tuple[PatchStack, dict[str, str]]:
    """`read_stack` over several sensor configurations of one grid (a model that reads more
    than one sensor): their bands side by side in the order given, one (n, C, N, N) stack.

    Sensors stored in different encodings (Sentinel-2's int16 digital numbers, Sentinel-1's
    int16 hundredths of a dB) are decoded to float32, 4 bytes per band-pixel instead of 2.
    A point's notes name the sensor each comes from when there is more than one."""
    from embedders.patches import stack_bands  # torch: the infer stage's import only

    check_same_grid([config for config, _ in sensors])
    arrays: list[tuple[zarr.Array[Any], str]] = []
    notes: dict[str, list[str]] = {}
    for config, bands in sensors:
        group, where = _open_chunk(inputs_path, config, chunk, bands)
        arrays += [(_array(group, b, where), where) for b in bands]
        for point, why in dict_attr(group, "notes").items():
            label = f"{config.sensor}: " if len(sensors) > 1 else ""
            notes.setdefault(point, []).append(f"{label}{why}")
    encodings = {band_encoding(a, where) for a, where in arrays}
    if len(encodings) == 1:
        (encoding,) = encodings
        values = [_values(a, where, slice(None)) for a, where in arrays]
    else:
        encoding = FLOAT32
        values = [read_band(a, where) for a, where in arrays]
    joined = {point: "; ".join(whys) for point, whys in notes.items()}
    return stack_bands(values, encoding, pin=pin), joined


def check_same_grid(configs: Sequence[SensorConfig]) -> None:
    """Refuse sensor configurations whose patches are not on one pixel grid: a model that
    stacks their bands needs every patch the same size at the same resolution (each is
    centred on the point, north-up, on the point's UTM grid)."""
    first = configs[0]
    for other in configs[1:]:
        if (other.patch_px, other.resolution_m) != (first.patch_px, first.resolution_m):
            raise ValueError(
                f"{first.sensor} patches are {first.patch_px} px at {first.resolution_m:g} m and "
                f"{other.sensor} patches {other.patch_px} px at {other.resolution_m:g} m: a model "
                "that stacks their bands needs one grid; fetch both at the same resolution "
                "and patch size"
            )


def _open_chunk(
    inputs_path: str, config: SensorConfig, chunk: Chunk, bands: Sequence[str]
) -> tuple[zarr.Group, str]:
    where = f"chunk {chunk.key} of sensor configuration {config.key()} in {inputs_path}"
    if config.steps is not None:
        raise ValueError(
            f"{where} is a time series ({config.steps.describe()}); read it with "
            "tasks.series.read_series"
        )
    try:
        group = zarr.open_group(inputs_path, path=f"{config.key()}/{chunk.key}", mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
        raise MissingInputsError(f"{where} has no inputs; run prefetch for it first") from e
    done = list_attr(group, "bands_done")
    missing = [b for b in bands if b not in done]
    if missing:
        raise MissingInputsError(
            f"{where} lacks band(s) {missing} (it has {done}); run prefetch with these bands"
        )
    return group, where


def _array(group: zarr.Group, band: str, where: str) -> zarr.Array[Any]:
    try:
        array = group.get(band)
    except (zarr.errors.BaseZarrError, ValueError, OSError) as e:
        raise DamagedInputsError(
            f"{where}: band {band} cannot be opened ({e}); remove {where.rpartition(' in ')[2]} "
            "and rerun"
        ) from e
    if not isinstance(array, zarr.Array):
        _forget(group, band)
        raise DamagedInputsError(
            f"{where}: band {band} is listed as done but has no array; rerun to fetch it again"
        )
    return array


def _values(array: zarr.Array[Any], where: str, index: int | slice) -> np.ndarray:
    """The stored values; a chunk that fails its checksum or its decoding is damage."""
    try:
        return np.asarray(array[index])
    except (ValueError, RuntimeError, OSError) as e:
        _forget(array)
        raise DamagedInputsError(
            f"{where}: band {array.basename} is damaged ({type(e).__name__}: {e}); it is "
            "marked to be fetched again: rerun the export"
        ) from e


def _forget(array: zarr.Array[Any] | zarr.Group, band: str = "") -> None:
    """Mark a damaged band not done (the next prefetch fetches it again): the band `array`
    is, or `band` of the group `array`."""
    root = getattr(array.store, "root", None)
    if root is None:  # not a local store: the rerun refuses it again
        return
    group_path = array.path if band else array.path.rpartition("/")[0]
    band = band or array.path.rpartition("/")[2]
    with lock_for(f"{root}/{group_path}"):
        group = zarr.open_group(str(root), path=group_path, mode="r+")
        group.attrs["bands_done"] = [b for b in list_attr(group, "bands_done") if b != band]


def chunk_group(inputs_path: str, config: SensorConfig, chunk: Chunk) -> zarr.Group:
    """Open the chunk's group, creating it and its configuration's group if needed."""
    require_group(inputs_path, config.key(), {"config": config.record()})
    point_ids = [p.id for p in chunk.points]
    path = f"{config.key()}/{chunk.key}"
    group = require_group(
        inputs_path, path, {"point_ids": point_ids, "notes": {}, "bands_done": []}
    )
    if list_attr(group, "point_ids") != point_ids:
        raise ValueError(
            f"inputs group {path} in {inputs_path} holds other points than chunk {chunk.key}; "
            "remove that group and rerun prefetch"
        )
    return group


def require_group(
    store_path: str, path: str, attributes: dict[str, Any] | None = None
) -> zarr.Group:
    """Open a group, or create it with `attributes`; safe when other writers (threads, or
    processes of a Dask cluster) create it, or the store's root, at the same moment."""
    try:
        return zarr.open_group(store_path, path=path, mode="a", attributes=attributes)
    except zarr.errors.ContainsGroupError:  # created by another writer between open and create
        return zarr.open_group(store_path, path=path, mode="r+")


def check_patches(
    patches: Patches, chunk: Chunk, bands: Sequence[str], config: SensorConfig
) -> None:
    n = config.patch_px
    expected = (len(chunk.points), n, n)
    if patches.point_ids != tuple(p.id for p in chunk.points):
        raise ValueError(f"source returned patches for other points than chunk {chunk.key}")
    for band in bands:
        got = patches.bands[band].shape if band in patches.bands else None
        if got != expected:
            raise ValueError(
                f"source returned band {band} of chunk {chunk.key} with shape {got}, "
                f"expected {expected} (points, patch_px, patch_px)"
            )


def lock_for(name: str) -> threading.Lock:
    with _chunk_locks_guard:
        return _chunk_locks.setdefault(name, threading.Lock())


def list_attr(group: zarr.Group, name: str) -> list[Any]:
    value = group.attrs.get(name)
    return list(value) if isinstance(value, list) else []


def dict_attr(group: zarr.Group, name: str) -> dict[str, Any]:
    value = group.attrs.get(name)
    return dict(value) if isinstance(value, dict) else {}


def bands_present(parameters: dict[str, Any]) -> bool:
    """Whether a prefetch task's bands are all in the inputs store (for the Prefect cache)."""
    p = parameters
    try:
        group = zarr.open_group(
            p["inputs_path"], path=f"{p['config'].key()}/{p['chunk'].key}", mode="r"
        )
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        return False
    return set(p["bands"]) <= set(list_attr(group, "bands_done"))
