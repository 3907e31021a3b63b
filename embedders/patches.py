"""Patches as the engine takes them: one (n, C, H, W) array of same-size images, compact.

Imagery travels from the inputs store to the model's device as the values the store holds
(embedders.encoding: int16 with a fill value, 2 bytes per band-pixel, or float32 with NaN,
as any image a caller hands in). Decoding, normalising, filling, padding, resizing and
cutting all happen on the device (embedders.cutting); the host only copies whole patches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from embedders.encoding import FLOAT32, Encoding


@dataclass(frozen=True)
class PatchStack:
    """n same-size images of C bands: (n, C, H, W) values on the host, as `encoding` says.

    For a CUDA device the values should sit in pinned memory (`pinned`), so that they copy
    to the device while the model runs."""

    values: torch.Tensor
    encoding: Encoding = FLOAT32

    def __post_init__(self) -> None:
        if self.values.ndim != 4 or 0 in self.values.shape[1:]:
            raise ValueError(
                f"a patch stack is (n, C, H, W) with C, H, W >= 1; got {tuple(self.values.shape)}"
            )
        floating = self.values.dtype.is_floating_point
        if floating != (self.encoding.fill is None):
            raise ValueError(
                f"patch values of dtype {self.values.dtype} do not fit encoding {self.encoding}: "
                "floats take NaN for invalid pixels, integers a fill value"
            )

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @property
    def bands(self) -> int:
        return int(self.values.shape[1])

    @property
    def size(self) -> tuple[int, int]:
        return int(self.values.shape[2]), int(self.values.shape[3])

    def pinned(self) -> PatchStack:
        """The same stack in page-locked host memory (for CUDA); itself if already there."""
        if self.values.is_pinned() or not torch.cuda.is_available():
            return self
        return PatchStack(self.values.pin_memory(), self.encoding)


def stack_bands(
    bands: Sequence[np.ndarray], encoding: Encoding, *, pin: bool = False
) -> PatchStack:
    """Per-band (n, H, W) arrays -> one (n, C, H, W) stack, copied once, straight into
    pinned memory when `pin` (torch's copy uses every core; np.stack one)."""
    n, height, width = bands[0].shape
    dtype = torch.from_numpy(np.empty(0, dtype=bands[0].dtype)).dtype
    pin = pin and torch.cuda.is_available()
    out = torch.empty((n, len(bands), height, width), dtype=dtype, pin_memory=pin)
    for c, band in enumerate(bands):
        if band.shape != (n, height, width) or band.dtype != bands[0].dtype:
            raise ValueError(
                f"band {c} is {band.dtype} {band.shape}; every band must be "
                f"{bands[0].dtype} {(n, height, width)}"
            )
        out[:, c].copy_(torch.from_numpy(np.ascontiguousarray(band)))
    return PatchStack(out, encoding)


def stacks_of_images(images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, PatchStack]]:
    """(C, H, W) float32 images -> one float32 stack per image size, with the positions of
    its images in `images` (results do not depend on which images share a stack)."""
    by_size: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        by_size.setdefault(tuple(image.shape), []).append(i)
    out = []
    for rows in by_size.values():
        values = np.stack([np.asarray(images[i], dtype=np.float32) for i in rows])
        out.append((np.array(rows), PatchStack(torch.from_numpy(values))))
    return out
