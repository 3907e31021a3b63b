"""How imagery is stored compactly, and how it becomes values again. Imports no torch.

An `Encoding` maps stored values to the source's units: int16 with a fill value that marks
an invalid pixel and `value = stored * scale + offset`, or float32 with NaN. Each sensor
declares its encoding once (tasks/sources/sensors.py); the inputs store records it per array.

Rounding: imagery is stored as the nearest integer of `(value - offset) / scale` (halves to
even), clipped to the int16 range. For Sentinel-2 L2A (scale 1, offset 0: digital numbers,
reflectance x 10,000) that moves a median composite's half-DN values by at most 0.5 DN,
5e-5 in reflectance, and values above 32,767 DN (reflectance above 3.28, only in saturated
pixels) to 32,767.
"""

from dataclasses import dataclass

import numpy as np

INT16_FILL = -32768  # int16's lowest value marks an invalid pixel; valid values are above it
INT16_MAX = 32767


@dataclass(frozen=True)
class Encoding:
    """How stored values become the source's units, and which ones are invalid.

    `fill` None: the values are floats and NaN (or any non-finite value) is invalid.
    Otherwise the values are integers, `fill` marks an invalid pixel, and the value is
    `stored * scale + offset`."""

    fill: int | None = None
    scale: float = 1.0
    offset: float = 0.0

    @property
    def identity(self) -> bool:
        return self.scale == 1.0 and self.offset == 0.0


FLOAT32 = Encoding()
INT16 = Encoding(fill=INT16_FILL)


def encode_int16(values: np.ndarray, encoding: Encoding = INT16) -> np.ndarray:
    """float32 values (NaN where invalid) -> int16 as `encoding` stores them (see the
    module's note on rounding)."""
    if encoding.fill is None:
        raise ValueError("encode_int16 needs an integer encoding with a fill value")
    scaled = np.asarray(values, dtype=np.float64)
    if not encoding.identity:
        scaled = (scaled - encoding.offset) / encoding.scale
    valid = np.isfinite(scaled)
    out = np.rint(np.clip(np.where(valid, scaled, 0.0), -INT16_MAX, INT16_MAX)).astype(np.int16)
    out[~valid] = encoding.fill
    return out


def decode(values: np.ndarray, encoding: Encoding) -> np.ndarray:
    """Stored values -> float32 in the source's units, NaN where invalid (on the host)."""
    if encoding.fill is None:
        return np.asarray(values, dtype=np.float32)
    out = values.astype(np.float32)
    if not encoding.identity:
        out = out * np.float32(encoding.scale) + np.float32(encoding.offset)
    out[values == encoding.fill] = np.nan
    return out
