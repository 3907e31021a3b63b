"""Compact storage of embeddings, on request (`--dtype`): float16, or int8 with a per-vector
scale, as Tessera and Earth Engine's embedding products store theirs.

- float16: the values rounded to half precision (11 significant bits); every Zarr reader,
  and `xr.open_zarr`, reads them as they are.
- int8: each vector v (all dims of one point, or of one grid cell) is stored as
  q = round(v / s) in -127..127 with s = max|v| / 127 in `<model>_scale` (float32, one per
  vector); v ~ q * s. -128 marks a vector with no value (its scale is NaN). CF has no
  per-vector scale, so `xr.open_zarr` shows q and s apart; `tasks.store.layout.open_store` decodes
  them, and so can any reader from the variable's `quantization` attribute.

Quantisation is per vector, so a point's direction (what cosine similarity compares) keeps
within about 1e-4 of float32 for dims of 64 and more: each run reports the worst cosine.
"""

from typing import Literal

import numpy as np

Dtype = Literal["float32", "float16", "int8"]
DTYPES: tuple[Dtype, ...] = ("float32", "float16", "int8")
INT8_MISSING = np.int8(-128)
INT8_MAX = 127


def scale_name(model: str) -> str:
    return f"{model}_scale"


def quantization_attr(dtype: str) -> str:
    """What the embedding variable's `quantization` attribute says about its values."""
    if dtype == "int8":
        return (
            f"int8 per vector: value = q * {{model}}_scale along the embedding dim; "
            f"q = {int(INT8_MISSING)} marks a vector with no value"
        )
    return "none" if dtype == "float32" else f"{dtype} (rounded from float32)"


def encode(embeddings: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    """float32 embeddings (n, D) or (n, D, gy, gx) -> the stored array and, for int8, the
    per-vector scales (n,) or (n, gy, gx). A vector with any NaN is stored as missing."""
    emb = np.asarray(embeddings, dtype=np.float32)
    if dtype == "float32":
        return emb, None
    if dtype == "float16":
        return emb.astype(np.float16), None
    if dtype != "int8":
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    missing = np.isnan(emb).any(axis=1)
    top = np.max(np.abs(np.nan_to_num(emb)), axis=1)
    scale = (top / INT8_MAX).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1))
    q = np.rint(np.nan_to_num(emb) / np.expand_dims(safe, 1))
    q = np.clip(q, -INT8_MAX, INT8_MAX).astype(np.int8)
    q = np.where(np.expand_dims(missing, 1), INT8_MISSING, q)
    scale = np.where(missing, np.float32(np.nan), scale).astype(np.float32)
    return q, scale


def decode(stored: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
    """The stored array back as float32 (NaN where a vector has no value)."""
    if scale is None:
        return np.asarray(stored, dtype=np.float32)
    q = np.asarray(stored)
    values = q.astype(np.float32) * np.expand_dims(np.asarray(scale, np.float32), 1)
    return np.where(q == INT8_MISSING, np.float32(np.nan), values).astype(np.float32)


def worst_cosine(original: np.ndarray, decoded: np.ndarray) -> float | None:
    """The smallest cosine between a vector and its decoded form, over the vectors that have
    a value and are not zero; None when there are none."""
    a = np.moveaxis(np.asarray(original, np.float64), 1, -1).reshape(-1, original.shape[1])
    b = np.moveaxis(np.asarray(decoded, np.float64), 1, -1).reshape(-1, original.shape[1])
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    keep = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1) & (norms > 0)
    if not keep.any():
        return None
    cos = (a[keep] * b[keep]).sum(axis=1) / norms[keep]
    return float(cos.min())
