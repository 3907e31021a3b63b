"""Imagery sources: the typed sensor configuration and the Protocol every source implements."""

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np

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
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return f"{self.sensor}-{hashlib.sha256(blob).hexdigest()[:12]}"


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
