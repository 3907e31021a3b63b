"""Earth Engine imagery source: composites computed by Earth Engine, read with computePixels.

Per group of nearby points (one UTM zone, one pixel phase, patches close together) one
`ee.data.computePixels` request answers the whole group as a NumPy array, on an explicit
north-up grid in the points' UTM zone at the configuration's resolution, snapped so that
every patch is exactly the N x N grid `tasks.sources.pixels.patch_geobox` gives its point. A
grid that would pass one of Earth Engine's per-request limits (bytes, pixels per side, bands)
is split into sub-grids and groups of bands, and stitched.

The expression is the composite over the window: the collection filtered by date and bounds,
for Sentinel-2 its scenes pre-selected by cloud cover and its pixels masked with Cloud
Score+, for Sentinel-1 its IW scenes with the asked polarisations and their pixels above the
noise floor, reduced (median; mosaic for precomputed annual products), the bands selected in the
requested order under swath's names, as float32, masked pixels unmasked to a sentinel that
becomes NaN here.

Failures: the client's own retry loop is switched off, so a 429 / RESOURCE_EXHAUSTED (quota,
too many concurrent requests) or a 5xx raises TransientSourceError at once, and Prefect
retries the prefetch task with backoff and jitter; everything else is ImagerySourceError with
Earth Engine's own message and a fix. Requests in flight are bounded across the run by the
Prefect global concurrency limit `swath-earthengine` (EarthEngineOptions.ee_concurrency slots).
"""

from __future__ import annotations

import contextlib
import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import ee
import ee.image_converter
import numpy as np

from embedders.naming import setting
from tasks.plan.points import Point
from tasks.sources import sensors
from tasks.sources.earthengine_acquisitions import (
    EarthEngineListing,
    chunk_region,
    listing_value,
    point_acquisitions,
)
from tasks.sources.earthengine_auth import load_credentials
from tasks.sources.failures import error_chain, unreachable
from tasks.sources.pixels import pixel_phase, read_together, union_box
from tasks.sources.registry import (
    EarthEngineOptions,
    ImagerySourceError,
    Patches,
    SensorConfig,
    TransientSourceError,
    own_options,
    patch_corner,
    plain_http_origins,
)
from tasks.store.locks import ensure_concurrency_limit

# Earth Engine's limits on one computePixels, as its REST reference states them for
# projects.image.computePixels and projects.assets.getPixels alike: at most 48 MB of
# uncompressed data (pixels x bands x bytes per pixel of each band), at most 32K pixels along
# either side, at most 1024 bands; a request over any of them is answered 400 (BAD_REQUEST).
# "48MB" is 48 MiB: its refusal reads "Total request size (... bytes) must be less than or
# equal to 50331648 bytes" (the figure Xee also declares, xee/ext.py REQUEST_BYTE_LIMIT), so
# "32K" is read the same way, 32 x 1024.
MAX_RESPONSE_BYTES = 50_331_648
MAX_SIDE_PX = 32_768
MAX_BANDS = 1024
# What one value costs against MAX_RESPONSE_BYTES: its own bytes plus one byte of mask, as
# Earth Engine counts (google/Xee commit 5fac43a, "Account for mask byte in chunk size
# calculation"; leftfield-geospatial/geedim commit 60b9dc3 found 8-bit values counted as 2
# bytes). The response's type is float32 because composite() casts last: the docs leave open
# whether unmask() with a float constant answers float32 or float64 (Image.where, its nearest
# documented relative, gives "the larger of the input and value types").
RESPONSE_DTYPE = np.dtype(np.float32)
BYTES_PER_VALUE = RESPONSE_DTYPE.itemsize + 1
# Earth Engine's endpoint for many small automated requests, which Google recommends for
# computePixels workloads ("High-volume endpoint" in its guide to the API).
HIGH_VOLUME_URL = "https://earthengine-highvolume.googleapis.com"
# What masked pixels are unmasked to before they leave Earth Engine (the lowest float32, a
# value no band of a sensor takes); turned back into NaN here.
NODATA = float(np.finfo(np.float32).min)
# The Prefect global concurrency limit that bounds requests in flight across a run.
CONCURRENCY_LIMIT = "swath-earthengine"
COMPOSITES = ("median", "mosaic")


def auth_fix() -> str:
    """What to check when Earth Engine refuses access, naming the settings as the reader does."""
    return (
        f"check that the project ({setting('ee_project')}) is registered for Earth Engine and "
        f"that the account (or the service account of {setting('ee_key_file')}) has access to "
        "it and to the collection"
    )


@dataclass(frozen=True)
class PixelGrid:
    """One computePixels grid: north-up at `resolution_m` in `epsg`, its top-left corner at
    (x0, y0), and where each point's patch lies in it."""

    epsg: int
    x0: float
    y0: float
    resolution_m: float
    height: int
    width: int
    members: tuple[tuple[int, int, int], ...] = ()  # (point index, row, col) of each patch

    def request(self) -> dict[str, Any]:
        """The grid as Earth Engine's PixelGrid."""
        r = self.resolution_m
        return {
            "crsCode": f"EPSG:{self.epsg}",
            "affineTransform": {
                "scaleX": r,
                "shearX": 0.0,
                "translateX": self.x0,
                "shearY": 0.0,
                "scaleY": -r,
                "translateY": self.y0,
            },
            "dimensions": {"width": self.width, "height": self.height},
        }

    def window(self, row: int, col: int, height: int, width: int) -> PixelGrid:
        r = self.resolution_m
        return PixelGrid(self.epsg, self.x0 + col * r, self.y0 - row * r, r, height, width)


def plan_grids(points: Sequence[Point], n: int, resolution_m: float) -> list[PixelGrid]:
    """The grids that answer the points' N x N patches. Points of one zone and pixel phase
    join a grid while their patches are read together (tasks.sources.pixels.read_together; greedily,
    north to south), else start their own. A patch's top-left corner is where
    tasks.sources.registry.patch_corner puts it (as tasks.sources.pixels.patch_geobox does):
    never with pixel centres on the 10 m grid's pixel edges, so Earth Engine's own
    nearest-neighbour resampling has no tie to break."""
    groups: dict[tuple[int, float, float], list[tuple[int, float, float]]] = defaultdict(list)
    for i, p in enumerate(points):
        x0, y0 = patch_corner(p.x, p.y, n, resolution_m)
        groups[(p.epsg, pixel_phase(x0, resolution_m), pixel_phase(y0, resolution_m))].append(
            (i, x0, y0)
        )
    grids: list[PixelGrid] = []
    for (epsg, _, _), members in groups.items():
        clusters: list[list[tuple[int, float, float]]] = []
        for member in sorted(members, key=lambda m: (-m[2], m[1])):
            for cluster in clusters:
                if read_together([*cluster, member], n, resolution_m):
                    cluster.append(member)
                    break
            else:
                clusters.append([member])
        grids.extend(_grid(epsg, cluster, n, resolution_m) for cluster in clusters)
    return grids


def _grid(epsg: int, members: list[tuple[int, float, float]], n: int, res: float) -> PixelGrid:
    left, top, cells, height, width = union_box(members, n, res)
    return PixelGrid(epsg, left, top, res, height, width, cells)


def band_groups(n_bands: int) -> list[slice]:
    """Consecutive groups of at most MAX_BANDS bands, as even as can be."""
    groups = -(-n_bands // MAX_BANDS)
    size = -(-n_bands // max(1, groups))
    return [slice(lo, min(lo + size, n_bands)) for lo in range(0, n_bands, max(1, size))]


def split_grid(grid: PixelGrid, n_bands: int) -> list[tuple[int, int, PixelGrid]]:
    """(row, col, sub-grid) tiles of `grid` of at most MAX_SIDE_PX along each side whose
    responses of `n_bands` bands, at BYTES_PER_VALUE, fit MAX_RESPONSE_BYTES."""
    budget = max(1, MAX_RESPONSE_BYTES // (BYTES_PER_VALUE * n_bands))  # pixels per request
    width = min(grid.width, budget, MAX_SIDE_PX)
    height = min(grid.height, max(1, budget // width), MAX_SIDE_PX)
    return [
        (r, c, grid.window(r, c, min(height, grid.height - r), min(width, grid.width - c)))
        for r in range(0, grid.height, height)
        for c in range(0, grid.width, width)
    ]


def ee_band_names(bands: Sequence[str], config: SensorConfig) -> list[str]:
    """Earth Engine's names of swath's bands. Raises ImagerySourceError naming the known ones."""
    sensor = sensors.SENSORS.get(config.sensor)
    if sensor is None:
        raise ImagerySourceError(
            f"no sensor facts for {config.sensor!r}; known sensors: {', '.join(sensors.SENSORS)}"
        )
    unknown = [b for b in bands if b not in sensor.bands]
    if unknown:
        raise ImagerySourceError(
            f"band(s) {unknown} are not bands of {config.sensor} in Earth Engine's "
            f"{config.collection}; its bands are {', '.join(sensor.bands)}"
        )
    return [sensor.bands[b].ee_name or b for b in bands]


def composite(
    config: SensorConfig, ee_names: Sequence[str], bands: Sequence[str], region: ee.Geometry
) -> ee.Image:
    """The expression of the composite over the window, bands renamed to swath's, float32,
    masked pixels unmasked to NODATA (also outside every image's footprint).

    Cast to float32 twice: before unmask, so that NODATA is a value of the bands whatever
    type unmask gives its output; after it, so that the response is float32 (RESPONSE_DTYPE,
    what split_grid budgets) even if unmask widens to the float64 of its constant."""

    if config.composite not in COMPOSITES:
        raise ImagerySourceError(
            f"composite {config.composite!r} is not supported by the Earth Engine source; "
            f"use one of {COMPOSITES}"
        )
    images = window_images(config, region)
    if config.sensor in sensors.CLOUD_SCORE_PLUS_SENSORS:
        # Cloud Score+ masks clouds and their shadows per pixel, and Google recommends it
        # for Sentinel-2 composites over QA60 and SCL (tasks/sources/sensors.py says more).
        band, clear = sensors.CLOUD_SCORE_PLUS_BAND, sensors.CLOUD_SCORE_PLUS_CLEAR
        images = images.linkCollection(ee.ImageCollection(sensors.CLOUD_SCORE_PLUS), [band])
        images = images.map(lambda image: image.updateMask(image.select(band).gte(clear)))
    if config.sensor == sensors.SENTINEL_1_SENSOR:
        images = radar_images(images, ee_names, config)
    image = images.median() if config.composite == "median" else images.mosaic()
    image = image.select(list(ee_names)).rename(list(bands)).toFloat()
    return image.unmask(NODATA, False).toFloat()


def window_images(config: SensorConfig, region: ee.Geometry) -> ee.ImageCollection:
    """The collection's scenes of the window that meet the region, of cloud cover at most
    the configuration's limit (where the sensor states one)."""
    end = (date.fromisoformat(config.end) + timedelta(days=1)).isoformat()  # exclusive
    images = ee.ImageCollection(config.collection).filterDate(config.start, end)
    images = images.filterBounds(region)
    cloud_property = sensors.SENSORS[config.sensor].cloud_cover_property.get("earthengine")
    if cloud_property and config.max_cloud_cover < 100:
        images = images.filter(ee.Filter.lte(cloud_property, config.max_cloud_cover))
    return images


def radar_images(images: ee.ImageCollection, ee_names: Sequence[str], config: SensorConfig) -> Any:
    """Sentinel-1 scenes of the IW mode that carry every asked polarisation (and of the
    configuration's orbit pass, where set), their bands (in dB) masked at or below the
    declared floor (tasks/sources/sensors.py: border noise, no signal), as the STAC sources
    mask them."""
    images = images.filter(ee.Filter.eq(sensors.S1_EE_INSTRUMENT_MODE, sensors.S1_INSTRUMENT_MODE))
    for name in ee_names:
        images = images.filter(ee.Filter.listContains(sensors.S1_EE_POLARISATIONS, name))
    if config.orbit_pass:
        images = images.filter(ee.Filter.eq(sensors.S1_EE_ORBIT_PASS, config.orbit_pass.upper()))
    names, floor = list(ee_names), sensors.S1_DB_FLOOR
    return images.map(lambda i: i.select(names).updateMask(i.select(names).gt(floor)))


class _CountingNumPy(ee.image_converter.NumPyConverter):
    """Earth Engine's NUMPY_NDARRAY converter (what `fileFormat: "NUMPY_NDARRAY"` picks) that
    also counts the response's bytes."""

    nbytes = 0

    def do_conversion(self, data: bytes) -> Any:
        self.nbytes = len(data)
        return super().do_conversion(data)


# The client's state is the process's (ee.data keeps one set of credentials and one URL): the
# access settings it was initialised with, for every instance.
_initialised: EarthEngineOptions | None = None
_initialise_lock = threading.Lock()


class EarthEngineSource:
    """An ImagerySource over Earth Engine, through the earthengine-api client.

    The client is initialised once per process and access settings (thread-safe); one
    instance serves every thread of a process.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._limits: set[int] = set()  # slot counts the concurrency limit was set to

    def plain_http(self, config: SensorConfig) -> set[str]:
        """The endpoint's origin when --ee-url is plain http (the default one is https)."""
        return plain_http_origins([own_options(config, EarthEngineOptions).ee_url or ""])

    def fetch(self, points: Sequence[Point], bands: Sequence[str], config: SensorConfig) -> Patches:
        names = ee_band_names(bands, config)
        self._initialise(own_options(config, EarthEngineOptions))
        n, res = config.patch_px, config.resolution_m
        out = {b: np.full((len(points), n, n), np.nan, np.float32) for b in bands}
        requests = bytes_read = 0
        for grid in plan_grids(points, n, res):
            x1, y1 = grid.x0 + grid.width * res, grid.y0 - grid.height * res
            region = ee.Geometry.Rectangle(
                [grid.x0, y1, x1, grid.y0], proj=f"EPSG:{grid.epsg}", geodesic=False
            )
            what = f"points {points[grid.members[0][0]].id}.. of {config.collection}"
            pixels = np.full((len(bands), grid.height, grid.width), np.nan, np.float32)
            for group in band_groups(len(bands)):
                image = composite(config, names[group], bands[group], region)
                for row, col, tile in split_grid(grid, len(bands[group])):
                    values, nbytes = self._compute(
                        image, tile, bands[group], own_options(config, EarthEngineOptions), what
                    )
                    pixels[group, row : row + tile.height, col : col + tile.width] = values
                    requests, bytes_read = requests + 1, bytes_read + nbytes
            for i, row, col in grid.members:
                for k, b in enumerate(bands):
                    out[b][i] = pixels[k, row : row + n, col : col + n]
        window = f"{config.collection} between {config.start} and {config.end}"
        notes = {
            p.id: f"every pixel of its {n} px patch is masked (cloud, shadow or no image) in "
            f"{window}"
            for i, p in enumerate(points)
            if all(np.isnan(out[b][i]).all() for b in bands)
        }
        return Patches(tuple(p.id for p in points), out, notes, requests, bytes_read)

    def acquisitions(
        self, points: Sequence[Point], bands: Sequence[str], config: SensorConfig
    ) -> EarthEngineListing:
        """Each point's acquisitions in the window (tasks/sources/acquisitions.py), from one
        listing of the chunk's scenes (tasks/sources/earthengine_acquisitions.py)."""
        names = ee_band_names(bands, config)
        access = own_options(config, EarthEngineOptions)
        self._initialise(access)
        images = window_images(config, chunk_region(points, config))
        radar = config.sensor == sensors.SENTINEL_1_SENSOR
        if radar:
            images = radar_images(images, names, config)
        what = f"listing the scenes of {config.collection} for points {points[0].id}.."
        with self._slot(access):
            try:
                listed = ee.data.computeValue(listing_value(images, radar))
            except Exception as e:  # the client raises EEException, HttpError, auth and IO errors
                raise classify_ee_error(e, what) from e
        found = point_acquisitions(points, config, listed)
        return EarthEngineListing(self, tuple(points), config, found)

    def check(self, bands: Sequence[str], config: SensorConfig) -> None:
        """A 1 x 1 px computePixels of the collection's first image with the bands (one per
        MAX_BANDS of them): proves the credentials, the project, the collection and the band
        names."""
        names = ee_band_names(bands, config)
        listed = list(bands) if len(bands) <= 8 else f"{bands[0]}..{bands[-1]} ({len(bands)})"
        what = f"checking collection {config.collection} and bands {listed}"
        try:
            self._initialise(own_options(config, EarthEngineOptions))
            images = ee.ImageCollection(config.collection)
            if config.sensor == sensors.SENTINEL_1_SENSOR:  # scenes differ in polarisations
                images = radar_images(images, names, config)
            first = images.first()
            tile = PixelGrid(4326, 0.0, 0.0, 1e-4, 1, 1)
            for group in band_groups(len(names)):
                image = first.select(names[group]).toFloat()
                access = own_options(config, EarthEngineOptions)
                self._compute(image, tile, names[group], access, what)
        except TransientSourceError as e:  # a host that cannot be reached at all: no run
            reason = unreachable(e)
            if reason is None:
                raise
            raise ImagerySourceError(
                f"{what}: cannot reach Earth Engine or Google's sign-in ({reason}); check the "
                f"network and {setting('ee_url')}"
            ) from e

    def _compute(
        self,
        image: Any,
        grid: PixelGrid,
        bands: Sequence[str],
        access: EarthEngineOptions,
        what: str,
    ) -> tuple[np.ndarray, int]:
        """One computePixels: (bands, H, W) float32 with NaN where masked, and its bytes."""
        converter = _CountingNumPy()
        request = {"expression": image, "fileFormat": converter, "grid": grid.request()}
        with self._slot(access):
            try:
                data = ee.data.computePixels(request)
            except Exception as e:  # the client raises EEException, HttpError, auth and IO errors
                raise classify_ee_error(e, what) from e
        stacked = np.stack([np.asarray(data[b], np.float32) for b in bands])
        return np.where(
            stacked == np.float32(NODATA), np.float32(np.nan), stacked
        ), converter.nbytes

    def _initialise(self, access: EarthEngineOptions) -> None:
        """ee.Initialize once per process and access settings, with the client's own retries
        off (Prefect retries transient failures with backoff and jitter instead)."""
        global _initialised
        with _initialise_lock:
            if _initialised == access:
                return
            credentials, project = load_credentials(access)
            ee.data.setMaxRetries(0)  # every call: `execute(num_retries=0)`, no hidden loop
            try:
                ee.Initialize(
                    credentials=credentials, project=project, url=access.ee_url or HIGH_VOLUME_URL
                )
            except Exception as e:  # EEException, HttpError, auth and transport errors
                raise classify_ee_error(e, "initialising Earth Engine") from e
            _initialised = access

    def _slot(self, access: EarthEngineOptions) -> contextlib.AbstractContextManager[None]:
        """A slot of the run's Earth Engine concurrency limit, inside a flow or task run;
        nothing outside one (the up-front check)."""
        from prefect.concurrency.sync import concurrency
        from prefect.context import FlowRunContext, TaskRunContext

        if TaskRunContext.get() is None and FlowRunContext.get() is None:
            return contextlib.nullcontext()
        with self._lock:
            if access.ee_concurrency not in self._limits:
                ensure_concurrency_limit(CONCURRENCY_LIMIT, access.ee_concurrency)
                self._limits = {access.ee_concurrency}
        # strict: a limit that vanished fails loudly instead of limiting nothing
        return concurrency(CONCURRENCY_LIMIT, occupy=1, strict=True)


_QUOTA_TEXT = ("RESOURCE_EXHAUSTED", "Too many concurrent", "Quota exceeded", "rate limit")


def classify_ee_error(error: BaseException, what: str) -> ImagerySourceError | TransientSourceError:
    """A client failure as TransientSourceError (429, quota, 5xx, transport) or
    ImagerySourceError (401/403, a bad collection or band, a refused request), with Earth
    Engine's own message. Never quotes credentials: only messages, no request or headers."""
    import google.auth.exceptions
    import googleapiclient.errors
    import requests

    chain = error_chain(error)
    status = next(
        (e.resp.status for e in chain if isinstance(e, googleapiclient.errors.HttpError)), None
    )
    message = str(error).strip() or type(error).__name__
    transport = (
        TimeoutError,
        ConnectionError,
        requests.ConnectionError,
        requests.Timeout,
        google.auth.exceptions.TransportError,
    )
    if (
        (status is not None and (int(status) == 429 or int(status) >= 500))
        or any(text.lower() in message.lower() for text in _QUOTA_TEXT)
        or any(isinstance(e, transport) for e in chain)
    ):
        return TransientSourceError(f"{what}: Earth Engine said: {message}; a retry may succeed")
    if status in (401, 403) or isinstance(error, google.auth.exceptions.RefreshError):
        return ImagerySourceError(f"{what}: Earth Engine refused access: {message}; {auth_fix()}")
    if "project" in message.lower() and "ee.Initialize" in message:  # ee's "no project" text
        return ImagerySourceError(
            f"{what}: {message}; give {setting('ee_project')}, a Google Cloud project "
            "registered for Earth Engine"
        )
    return ImagerySourceError(
        f"{what}: Earth Engine said: {message}; check the collection "
        f"({setting('collection')}), the bands and the window"
    )
