"""Text in the store (point ids, reasons): UTF-8 bytes, zero-padded, in uint8 arrays with a
trailing length dim, marked with TEXT_ATTR; `tasks.store.layout.open_store` decodes them."""

import numpy as np

# Text is stored as UTF-8 bytes, zero-padded, in uint8 arrays with a trailing length dim:
# uint8 is a core Zarr v3 data type that every reader has. zarr-python's text types are
# extensions that others refuse: tensorstore 0.1.86 reads numeric types and r<N> only, not
# `fixed_length_utf32` (numpy U), `string` (StringDType) or `null_terminated_bytes` (numpy S).
# xarray decodes text only from those extension types, and CF's `_Encoding` on a uint8 array
# makes it fail, so the arrays are marked with TEXT_ATTR instead and `open_store` decodes them.
TEXT_ATTR = "text_encoding"
TEXT_ENCODING = "utf-8"


def encode_text(texts: list[str], nbytes: int) -> np.ndarray:
    """(len(texts), nbytes) uint8: each text's UTF-8 bytes, zero-padded; a longer text is cut
    at a character boundary and ends in "..."."""
    out = np.zeros((len(texts), nbytes), dtype=np.uint8)
    for i, text in enumerate(texts):
        raw = text.encode(TEXT_ENCODING)
        if len(raw) > nbytes:
            cut = raw[: nbytes - 3].decode(TEXT_ENCODING, errors="ignore")
            raw = cut.encode(TEXT_ENCODING) + b"..."
        out[i, : len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return out


def decode_text(codes: np.ndarray) -> np.ndarray:
    """The strings of uint8 UTF-8 codes along the last axis (trailing zeros dropped)."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    raw = codes.view(f"S{codes.shape[-1]}")[..., 0]
    texts = [b.decode(TEXT_ENCODING) for b in raw.ravel()]
    return np.array(texts, dtype=np.dtypes.StringDType()).reshape(raw.shape)
