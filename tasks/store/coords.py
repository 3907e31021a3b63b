"""The store's point coordinates (`point_id`, `lon`, `lat`, `utm_epsg`, `utm_x`, `utm_y`): all
computed from the plan, so written a block of the plan at a time when the store is laid
out, checked against their recorded CRC-32s (tasks/store/soundness.py), and rewritten from the
plan by a rerun wherever they differ from it.
"""

import zlib
from typing import Any

import numpy as np
import zarr

from tasks.plan.points import BLOCK_POINTS, PointTable
from tasks.store.integrity import UNREADABLE, open_array
from tasks.store.text import TEXT_ENCODING, encode_text

# The coordinate arrays on `point`, with the plan column each one holds (point_id: the ids).
POINT_COORDS = {
    "point_id": "id",
    "lon": "lon",
    "lat": "lat",
    "utm_epsg": "epsg",
    "utm_x": "x",
    "utm_y": "y",
}
DTYPES = {"point_id": "uint8", "utm_epsg": "int32"}  # the others are float64


def crc(values: np.ndarray) -> int:
    """CRC-32 of an array's values as stored (its dtype, C order)."""
    return zlib.crc32(np.ascontiguousarray(values).tobytes())


def id_bytes(points: PointTable) -> int:
    """The longest point id's length in bytes, from the coordinates alone (ids are ASCII:
    "<epsg>-<x>-<y>", whole metres, or millimetres with three decimals)."""
    longest = 1
    for start in range(0, len(points), BLOCK_POINTS):
        stop = min(start + BLOCK_POINTS, len(points))
        if points.explicit_ids:
            longest = max(longest, *(len(i.encode(TEXT_ENCODING)) for i in points.ids(start, stop)))
            continue
        c = points.columns(start, stop)
        width = 5 + 2  # the zone's EPSG code and two dashes
        for v in (c["x"], c["y"]):
            whole = np.abs(v - np.round(v)) < 1e-6
            digits = np.char.str_len(np.round(np.abs(v)).astype("int64").astype(str))
            width += int((digits + (v < 0) + np.where(whole, 0, 4)).max())
        longest = max(longest, width)
    return longest


def coord_block(table: PointTable, width: int, start: int, stop: int) -> dict[str, np.ndarray]:
    """Points start..stop of the plan as the store holds them: each coordinate array's values
    in its dtype, the ids as `width` UTF-8 bytes each."""
    c = table.columns(start, stop)
    ids = table.ids(start, stop)
    if table.explicit_ids:
        codes = encode_text(ids, width)
    else:  # ASCII: numpy encodes them at once
        codes = np.array(ids, dtype=f"S{width}").view(np.uint8).reshape(len(ids), width)
    block = {"point_id": codes}
    for name, column in POINT_COORDS.items():
        if name != "point_id":
            block[name] = np.asarray(c[column], dtype=DTYPES.get(name, "float64"))
    return block


def write_coords(path: str, table: PointTable) -> dict[str, list[int]]:
    """Fill the point coordinates of a store just laid out, one block of the plan at a time
    (a plan of millions of points is never in memory at once). Returns each array's CRC-32
    per block of BLOCK_POINTS points, of the values written."""
    arrays = {name: zarr.open_array(path, path=name, mode="r+") for name in POINT_COORDS}
    width = arrays["point_id"].shape[1]
    sums: dict[str, list[int]] = {name: [] for name in POINT_COORDS}
    for start in range(0, len(table), BLOCK_POINTS):
        stop = min(start + BLOCK_POINTS, len(table))
        for name, values in coord_block(table, width, start, stop).items():
            arrays[name][start:stop] = values
            sums[name].append(crc(values))
    return sums


def block_crcs(array: "zarr.Array[Any]") -> list[int]:
    """An array's CRC-32 per block of BLOCK_POINTS points along its first dim, as stored.
    Raises what zarr raises for a file it cannot read (UNREADABLE)."""
    n = array.shape[0]
    return [crc(np.asarray(array[s : min(s + BLOCK_POINTS, n)])) for s in range(0, n, BLOCK_POINTS)]


def repair_coords(
    path: str, table: PointTable, recorded: dict[str, list[int]] | None
) -> tuple[list[str], dict[str, list[int]]]:
    """Rewrite from the plan each block of the coordinate arrays that is not what was
    written: with `recorded` (their CRC-32s per block, tasks/store/soundness.py), the blocks whose
    CRC-32 differs or that cannot be read; without (a store of an earlier swath), every
    block that differs from the plan. One line per array repaired, and the CRC-32s of what
    the arrays now hold."""
    arrays = {name: open_array(path, name, mode="r+") for name in POINT_COORDS}
    width = arrays["point_id"].shape[1]
    blocks = range(0, len(table), BLOCK_POINTS)
    if recorded is not None and any(len(recorded.get(n, [])) != len(blocks) for n in arrays):
        recorded = None
    fixed: dict[str, list[str]] = {name: [] for name in POINT_COORDS}
    sums: dict[str, list[int]] = {name: [] for name in POINT_COORDS}
    for i, start in enumerate(blocks):
        stop = min(start + BLOCK_POINTS, len(table))
        if recorded is not None and all(
            _stored_crc(arrays[n], start, stop) == recorded[n][i] for n in arrays
        ):
            for name in POINT_COORDS:
                sums[name].append(recorded[name][i])
            continue
        for name, want in coord_block(table, width, start, stop).items():
            sums[name].append(crc(want))
            if _stored_crc(arrays[name], start, stop) != crc(want):
                arrays[name][start:stop] = want  # whole Zarr chunks: blocks are chunk-aligned
                fixed[name].append(f"{start}..{stop - 1}")
    lines = [
        f"{name}: points {', '.join(spans)} rewritten from the plan"
        for name, spans in fixed.items()
        if spans
    ]
    return lines, sums


def _stored_crc(array: "zarr.Array[Any]", start: int, stop: int) -> int | None:
    """The CRC-32 of a block as stored, None when it cannot be read."""
    try:
        return crc(np.asarray(array[start:stop]))
    except UNREADABLE:
        return None
