"""Imagery sources: the typed sensor configuration, the Protocol every source implements, and
what a source failure means (transient: retry; permanent: fail with the reason)."""

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol
from urllib.error import HTTPError

import numpy as np
import urllib3.exceptions
from rasterio.errors import RasterioIOError

from tasks.plan import Point


@dataclass(frozen=True)
class SensorConfig:
    """What to fetch for every point: the hash of this names the inputs group.

    Bands are not part of it: a group holds one array per band, so models that read the
    same sensor over the same window and patch share one fetch, each taking its bands.
    """

    sensor: str  # e.g. "sentinel-2-l2a"
    catalog: str  # a static STAC catalog (path or URL of catalog.json)
    collection: str
    resolution_m: float
    patch_px: int
    start: str  # ISO date, inclusive
    end: str  # ISO date, inclusive
    composite: str = "median"

    def key(self) -> str:
        """Names the inputs group: every field, the catalog and window included."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return f"{self.sensor}-{hashlib.sha256(blob).hexdigest()[:12]}"

    def identity(self) -> dict[str, object]:
        """What a store's values depend on across its time entries: neither the window (each
        is its own entry) nor where the catalog lies (a moved or monthly catalog is the same
        sensor configuration)."""
        return {
            "sensor": self.sensor,
            "collection": self.collection,
            "resolution_m": self.resolution_m,
            "patch_px": self.patch_px,
            "composite": self.composite,
        }


@dataclass
class Patches:
    """One chunk's patches: band -> (n_points, patch_px, patch_px) float32, NaN where masked."""

    point_ids: tuple[str, ...]
    bands: dict[str, np.ndarray]
    notes: dict[str, str] = field(default_factory=dict)  # point id -> why it has no data


class ImagerySourceError(RuntimeError):
    """A source failed for a reason a retry will not fix (bad band, bad catalog, 4xx)."""


class TransientSourceError(RuntimeError):
    """A source failed for a reason a retry may fix (HTTP 429 or 5xx, timeout, dropped
    connection). Prefect tasks retry on this one and on nothing else from a source."""


class ImagerySource(Protocol):
    """Fetches north-up square patches centred on points, on each point's UTM grid."""

    def fetch(
        self, points: Sequence[Point], bands: Sequence[str], config: SensorConfig
    ) -> Patches: ...


# What GDAL and curl say when a retry may help (GDAL puts the HTTP status in the message).
_GDAL_HTTP_STATUS = re.compile(r"HTTP (?:response )?code:? (\d{3})", re.IGNORECASE)
_REMOTE = re.compile(r"/vsicurl/|https?://")
_TRANSIENT_TEXT = re.compile(
    r"timed out|timeout was reached|connection reset|connection refused|empty reply"
    r"|recv failure|send failure|couldn't connect|failed to connect|connection was reset",
    re.IGNORECASE,
)


def classify_error(error: BaseException, what: str) -> ImagerySourceError | TransientSourceError:
    """A source failure as TransientSourceError (retry may help) or ImagerySourceError."""
    chain: list[BaseException] = []
    cause: BaseException | None = error
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    text = " | ".join(f"{type(e).__name__}: {e}" for e in chain)
    status = None
    for e in chain:
        if isinstance(e, HTTPError):
            status = e.code
    match = _GDAL_HTTP_STATUS.search(text)
    if status is None and match:
        status = int(match.group(1))
    transient_types = (
        TimeoutError,
        ConnectionError,
        urllib3.exceptions.MaxRetryError,
        urllib3.exceptions.ProtocolError,
        urllib3.exceptions.TimeoutError,
    )
    if status is not None:
        transient = status == 429 or status >= 500
    else:
        transient = (
            any(isinstance(e, transient_types) for e in chain)
            or bool(_TRANSIENT_TEXT.search(text))
            # GDAL over HTTP reports a request that failed after its own retries as a failed
            # read or open, with no status; a 4xx would have shown its status above.
            or (
                _REMOTE.search(f"{what} {text}") is not None
                and any(isinstance(e, RasterioIOError) for e in chain)
            )
        )
    if transient:
        return TransientSourceError(f"{what}: {text}; a retry may succeed")
    return ImagerySourceError(
        f"{what}: {text}; check that the catalog and its asset hrefs exist and are readable"
    )
