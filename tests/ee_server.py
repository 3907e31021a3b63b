"""A fake Earth Engine REST server on 127.0.0.1 that the real `earthengine-api` client talks to.

It serves what `ee.Initialize` asks for (the discovery document and the algorithms list the
wheel ships for its own tests, pointed at this server), an OAuth token endpoint (service
account and authorized-user credentials whose `token_uri` points here get a fake access
token, which every other call must then carry), and `image:computePixels`.

It cannot run Earth Engine, so it holds a small world: per collection id, rasters on a UTM
grid (with a mask and a date range) that stand for the composite. For each computePixels it
decodes the serialized expression far enough to find the collection, the date filter, the
cloud-mask link and threshold, the reducer, the selected and renamed bands and the unmask
value, records them, and answers the requested grid from the world at the requested pixel
centres (a wrong grid gives wrong values) as a NPY structured array, one field per band, like
Earth Engine, of the type the expression gives its bands (see `pixel_type`).

It refuses, as Earth Engine does, with a 400 INVALID_ARGUMENT, a request over any of the
per-request limits its REST reference states for computePixels (and getPixels): bytes
(pixels x bands x (bytes of a value + 1 byte of mask), the accounting swath's
tasks/sources/earthengine.py cites), pixels along either side, bands. The refusal of the
byte limit has Earth Engine's own wording; no recorded refusal of the other two was found, so
their wording is the fake's.
"""

from __future__ import annotations

import io
import json
import operator
import secrets
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import ee
import numpy as np

_EE_TESTS = Path(ee.__file__).parent / "tests"
# Earth Engine's limits on one computePixels (its REST reference; "48MB" is 48 MiB, as its
# refusal "Total request size (... bytes) must be less than or equal to 50331648 bytes" shows).
LIMIT_BYTES = 50331648
LIMIT_SIDE_PX = 32768
LIMIT_BANDS = 1024
MASK_BYTES = 1  # counted per value beside its own bytes


@dataclass
class Raster:
    """A composite as the world holds it: EE band name -> (H, W) values, valid where `mask`."""

    epsg: int
    x0: float  # west edge, metres
    y0: float  # north edge, metres
    resolution_m: float
    bands: dict[str, np.ndarray]
    mask: np.ndarray  # (H, W) bool, True = valid
    start: str = "1900-01-01"  # the dates it stands for, [start, end)
    end: str = "2100-01-01"
    # a scene's: its system:index, and properties a listing's filters read (value:compute)
    id: str = ""
    properties: dict[str, Any] = field(default_factory=dict)

    def value_at(self, band: str, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Values and validity at the points (x, y): the pixel that contains each one."""
        col = np.floor((x - self.x0) / self.resolution_m).astype(int)
        row = np.floor((self.y0 - y) / self.resolution_m).astype(int)
        h, w = self.mask.shape
        inside = (row >= 0) & (row < h) & (col >= 0) & (col < w)
        r, c = np.clip(row, 0, h - 1), np.clip(col, 0, w - 1)
        return self.bands[band][r, c], inside & self.mask[r, c]


@dataclass(frozen=True)
class Call:
    """A function invocation of the decoded expression."""

    name: str
    args: dict[str, Any]


@dataclass(frozen=True)
class Computation:
    """What one computePixels asked for, as the fake understood it."""

    collection: str
    linked: tuple[str, ...]  # collections linked in (Cloud Score+)
    linked_bands: tuple[str, ...]
    dates: tuple[str, str] | None  # [start, end) of the date filter
    # (property, "<=", value), ...; ("transmitterReceiverPolarisation", "contains", "VV")
    property_filters: tuple[tuple[str, str, Any], ...]
    thresholds: tuple[float, ...]  # constants of Image.gte
    reducer: str  # "reduce.median", "ImageCollection.mosaic", ...
    selected: tuple[str, ...]
    renamed: tuple[str, ...]
    unmask_value: float | None
    unmask_same_footprint: Any
    dtype: str  # the response's type (numpy's name), see pixel_type
    crs: str
    affine: dict[str, float]
    width: int
    height: int
    above: tuple[float, ...] = ()  # constants of Image.gt (Sentinel-1's noise floor)


@dataclass
class FakeEarthEngine:
    world: dict[str, list[Raster]]
    url: str = ""
    token_uri: str = ""
    access_token: str = field(default_factory=lambda: f"fake-access-{secrets.token_hex(12)}")
    log: list[str] = field(default_factory=list)  # "METHOD path" of every request
    computations: list[Computation] = field(default_factory=list)
    grants: list[str] = field(default_factory=list)  # grant_type of each token request
    sent_bytes: list[int] = field(default_factory=list)  # body size of each pixel response
    limit_bytes: int = LIMIT_BYTES
    limit_side_px: int = LIMIT_SIDE_PX
    limit_bands: int = LIMIT_BANDS
    listings: list[Listing] = field(default_factory=list)  # each value:compute, understood
    # Asked before each computePixels: an HTTP status (429, 401, 403, 500) to answer, or None.
    fault: Callable[[Computation], int | None] | None = None

    def raster_type(self) -> np.dtype:
        """The type of the world's rasters' values."""
        values = [b for rasters in self.world.values() for r in rasters for b in r.bands.values()]
        return np.result_type(*values) if values else np.dtype(np.float32)

    def pixel_requests(self) -> int:
        return sum(1 for line in self.log if line.endswith("image:computePixels"))


_ERROR_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
_FAULT_MESSAGE = {
    401: "Request had invalid authentication credentials.",
    403: "Caller does not have required permission to use project fake-project.",
    429: "Too many concurrent aggregations.",
    500: "An internal error has occurred.",
}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeEarthEngine

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the fake's log replaces the access log."""

    def _reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        error = {"code": status, "message": message, "status": _ERROR_STATUS.get(status, "")}
        self._reply(status, json.dumps({"error": error}).encode())

    def _authorised(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {self.fake.access_token}":
            return True
        self._error(401, "Request is missing required authentication credential.")
        return False

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        self.fake.log.append(f"GET {path}")
        if not self._authorised():
            return
        if path == "/$discovery/rest":
            document = json.loads((_EE_TESTS / "cloud_api_discovery_document.json").read_text())
            document["rootUrl"] = document["baseUrl"] = f"{self.fake.url}/"
            self._reply(200, json.dumps(document).encode())
        elif path.endswith("/algorithms"):
            self._reply(200, (_EE_TESTS / "algorithms.json").read_bytes())
        else:
            self._error(404, f"fake Earth Engine: nothing at {path}")

    def do_POST(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        self.fake.log.append(f"POST {path}")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if path == "/token":
            form = urllib.parse.parse_qs(body.decode())
            self.fake.grants.append(form.get("grant_type", [""])[0])
            token = {"access_token": self.fake.access_token, "expires_in": 3600}
            self._reply(200, json.dumps({**token, "token_type": "Bearer"}).encode())
            return
        if not self._authorised():
            return
        if path.endswith("/value:compute"):
            self._list_scenes(body)
            return
        if not path.endswith("/image:computePixels"):
            self._error(404, f"fake Earth Engine: nothing at {path}")
            return
        try:
            request = json.loads(body)
            computation = decode(request, self.fake.raster_type())
        except (KeyError, ValueError, TypeError) as e:
            self._error(400, f"fake Earth Engine cannot read this request: {e!r}")
            return
        self.fake.computations.append(computation)
        fault = self.fake.fault(computation) if self.fake.fault else None
        if fault is not None:
            self._error(fault, _FAULT_MESSAGE.get(fault, "fault"))
            return
        refusal = over_limit(self.fake, computation)
        if refusal is not None:
            self._error(400, refusal)
            return
        try:
            array = answer(self.fake.world, computation)
        except LookupError as e:
            self._error(400, str(e.args[0]))
            return
        buffer = io.BytesIO()
        np.save(buffer, array)
        self.fake.sent_bytes.append(len(buffer.getvalue()))
        self._reply(200, buffer.getvalue(), "application/octet-stream")

    def _list_scenes(self, body: bytes) -> None:
        try:
            listing = decode_listing(json.loads(body))
        except (KeyError, ValueError, TypeError, StopIteration) as e:
            self._error(400, f"fake Earth Engine cannot read this value: {e!r}")
            return
        self.fake.listings.append(listing)
        result = list_scenes(self.fake.world, listing)
        self._reply(200, json.dumps({"result": result}).encode())


def request_bytes(c: Computation) -> int:
    """What Earth Engine counts against its byte limit: every value's bytes and its mask's."""
    return c.width * c.height * len(c.renamed) * (np.dtype(c.dtype).itemsize + MASK_BYTES)


def over_limit(fake: FakeEarthEngine, c: Computation) -> str | None:
    """Why the request passes one of the per-request limits, or None."""
    if len(c.renamed) > fake.limit_bands:
        return (
            f"Number of bands ({len(c.renamed)}) must be less than or equal to {fake.limit_bands}."
        )
    if max(c.width, c.height) > fake.limit_side_px:
        return (
            f"Grid dimensions ({c.width} x {c.height} pixels) must be less than or equal to "
            f"{fake.limit_side_px} pixels along each side."
        )
    size = request_bytes(c)
    if size > fake.limit_bytes:
        return (
            f"Total request size ({size} bytes) must be less than or equal to "
            f"{fake.limit_bytes} bytes."
        )
    return None


def _resolve(node: Any, values: dict[str, Any]) -> Any:
    """A serialized expression node as Python: constants, lists, dicts and Calls."""
    if "valueReference" in node:
        return _resolve(values[node["valueReference"]], values)
    if "constantValue" in node:
        return node["constantValue"]
    if "arrayValue" in node:
        return [_resolve(v, values) for v in node["arrayValue"]["values"]]
    if "dictionaryValue" in node:
        return {k: _resolve(v, values) for k, v in node["dictionaryValue"]["values"].items()}
    if "functionInvocationValue" in node:
        call = node["functionInvocationValue"]
        args = {k: _resolve(v, values) for k, v in call.get("arguments", {}).items()}
        return Call(call.get("functionName") or "<applied function>", args)
    if "functionDefinitionValue" in node:
        body = _resolve(values[node["functionDefinitionValue"]["body"]], values)
        return Call("<function>", {"body": body})
    if "argumentReference" in node:
        return Call("<argument>", {"name": node["argumentReference"]})
    raise ValueError(f"unknown node {sorted(node)}")


def _calls(value: Any) -> Iterator[Call]:
    if isinstance(value, Call):
        yield value
        for arg in value.args.values():
            yield from _calls(arg)
    elif isinstance(value, list):
        for v in value:
            yield from _calls(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _calls(v)


def _spine(root: Any) -> list[Call]:
    """The chain of calls from the result inwards through each call's image/collection input."""
    chain = []
    while isinstance(root, Call):
        chain.append(root)
        root = next(
            (root.args[k] for k in ("input", "collection", "image", "value") if k in root.args),
            None,
        )
    return chain


def _constant(value: Any) -> Any:
    """A number given as a constant, or as Image.constant(number)."""
    if isinstance(value, Call) and value.name == "Image.constant":
        return value.args["value"]
    return value


_CASTS = {"Image.toFloat": np.float32, "Image.toDouble": np.float64}


def pixel_type(root: Any, base: np.dtype) -> np.dtype:
    """The type of the bands of the image expression `root`: a cast's own type; for unmask
    the larger of its input's and its value's (the rule Image.where documents; unmask's own is
    not documented, so the fake takes the wider, the worst case for a byte budget); for a
    number constant int32 if written as an integer, else float64 (a double); else its input's,
    down to the collection's rasters, `base`."""
    if isinstance(root, Call) and root.name in _CASTS:
        return np.dtype(_CASTS[root.name])
    if isinstance(root, Call) and root.name == "Image.unmask":
        value = root.args.get("value", 0)
        return np.promote_types(pixel_type(root.args["input"], base), pixel_type(value, base))
    if isinstance(root, Call) and root.name == "Image.constant":
        return pixel_type(root.args["value"], base)
    if isinstance(root, bool | int | float):
        return np.dtype(np.float64 if isinstance(root, float) else np.int32)
    inner = _spine(root)[1:2]
    return pixel_type(inner[0], base) if inner else base


_OPS = {
    "Filter.greaterThan": ">",
    "Filter.lessThan": "<",
    "Filter.equals": "==",
    "Filter.greaterThanOrEquals": ">=",
    "Filter.lessThanOrEquals": "<=",
    "Filter.listContains": "contains",
}
_NOT = {
    ">": "<=", "<": ">=", "==": "!=", ">=": "<", "<=": ">", "contains": "does not contain"
}  # fmt: skip


def decode(request: dict[str, Any], base: np.dtype) -> Computation:
    """What the request asks for; `base` is the type of the collection's rasters."""
    expression = request["expression"]
    root = _resolve(expression["values"][expression["result"]], expression["values"])
    calls = list(_calls(root))
    spine = _spine(root)
    by_name: dict[str, list[Call]] = {}
    for c in spine:
        by_name.setdefault(c.name, []).append(c)
    loads = [c.args["id"] for c in calls if c.name == "ImageCollection.load"]
    links = [c for c in calls if c.name == "Image.linkCollection"]
    linked = {c.args["imageCollection"].args["id"] for c in links}
    dates = next(
        (
            (str(c.args["leftValue"].args["start"]), str(c.args["leftValue"].args["end"]))
            for c in calls
            if c.name == "Filter.dateRangeContains"
        ),
        None,
    )
    negated = {id(c.args["filter"]) for c in calls if c.name == "Filter.not"}
    filters = tuple(
        (c.args["leftField"], _NOT[_OPS[c.name]] if id(c) in negated else _OPS[c.name], value)
        for c in calls
        if c.name in _OPS
        for value in [c.args["rightValue"]]
    )
    reducers = [c.name for c in spine if c.name.startswith("reduce.") or c.name.endswith("mosaic")]
    selected = by_name["Image.select"][0].args["bandSelectors"] if "Image.select" in by_name else []
    renamed = by_name["Image.rename"][0].args["names"] if "Image.rename" in by_name else selected
    unmask = by_name.get("Image.unmask", [Call("", {})])[0]
    grid = request["grid"]
    return Computation(
        collection=next(i for i in loads if i not in linked),
        linked=tuple(sorted(linked)),
        linked_bands=tuple(b for c in links for b in c.args.get("linkedBands", [])),
        dates=dates,
        property_filters=filters,
        thresholds=tuple(
            float(_constant(c.args["image2"])) for c in calls if c.name == "Image.gte"
        ),
        reducer=reducers[0] if reducers else "",
        selected=tuple(selected),
        renamed=tuple(renamed),
        unmask_value=_constant(unmask.args["value"]) if "value" in unmask.args else None,
        unmask_same_footprint=unmask.args.get("sameFootprint"),
        dtype=pixel_type(root, base).name,
        crs=grid["crsCode"],
        affine={k: float(v) for k, v in grid["affineTransform"].items()},
        width=int(grid["dimensions"]["width"]),
        height=int(grid["dimensions"]["height"]),
        above=tuple(float(_constant(c.args["image2"])) for c in calls if c.name == "Image.gt"),
    )


@dataclass(frozen=True)
class Listing:
    """What one value:compute listing scenes asked for: [aggregate_array(p) for p in
    columns] of a collection filtered by date and properties."""

    collection: str
    dates: tuple[str, str] | None
    property_filters: tuple[tuple[str, str, Any], ...]
    columns: tuple[str, ...]


def decode_listing(request: dict[str, Any]) -> Listing:
    expression = request["expression"]
    root = _resolve(expression["values"][expression["result"]], expression["values"])
    if not isinstance(root, list) or not all(
        isinstance(c, Call) and c.name == "AggregateFeatureCollection.array" for c in root
    ):
        raise ValueError("the fake lists scenes only as a list of aggregate_array columns")
    calls = list(_calls(root))
    dates = next(
        (
            (str(c.args["leftValue"].args["start"]), str(c.args["leftValue"].args["end"]))
            for c in calls
            if c.name == "Filter.dateRangeContains"
        ),
        None,
    )
    return Listing(
        collection=next(c.args["id"] for c in calls if c.name == "ImageCollection.load"),
        dates=dates,
        property_filters=tuple(
            (c.args["leftField"], _OPS[c.name], c.args["rightValue"])
            for c in calls
            if c.name in _OPS
        ),
        columns=tuple(str(c.args["property"]) for c in root),
    )


def list_scenes(world: dict[str, list[Raster]], listing: Listing) -> list[list[Any]]:
    """The columns of the collection's scenes (rasters with an id) in the date range that
    pass every property filter; a footprint is the raster's bounds, a LinearRing in lon/lat."""
    start, end = (_time(d) for d in listing.dates) if listing.dates else ("0000", "9999")
    scenes = [
        r
        for r in world.get(listing.collection, [])
        if r.id and r.start < end and start < r.end and _passes(r, listing.property_filters)
    ]
    return [[_column(r, name) for r in scenes] for name in listing.columns]


def _passes(raster: Raster, filters: tuple[tuple[str, str, Any], ...]) -> bool:
    compare: dict[str, Callable[[Any, Any], bool]] = {
        "contains": lambda have, value: value in have,
        "==": operator.eq,
        "<=": operator.le,
        ">=": operator.ge,
        "<": operator.lt,
        ">": operator.gt,
    }
    return all(
        raster.properties.get(name) is not None and compare[op](raster.properties[name], value)
        for name, op, value in filters
    )


def _column(raster: Raster, name: str) -> Any:
    if name == "system:index":
        return raster.id
    if name == "system:time_start":
        return int(np.datetime64(raster.start, "ms").astype(np.int64))
    if name == "system:footprint":
        from odc.geo.geom import BoundingBox

        h, w = raster.mask.shape
        res = raster.resolution_m
        box = BoundingBox(
            raster.x0,
            raster.y0 - h * res,
            raster.x0 + w * res,
            raster.y0,
            crs=f"EPSG:{raster.epsg}",
        )
        ring = box.polygon.to_crs("EPSG:4326").geom.exterior
        return {"type": "LinearRing", "coordinates": [list(c) for c in ring.coords]}
    return raster.properties.get(name)


def _time(value: Any) -> str:
    """A date argument (ISO text or milliseconds since 1970) as an ISO date."""
    if isinstance(value, int | float):
        return str(np.datetime64(int(value), "ms").astype("datetime64[D]"))
    return str(value)[:10]


def answer(world: dict[str, list[Raster]], c: Computation) -> np.ndarray:
    """The requested grid from the world: per pixel, the first raster of the collection in
    the window and the CRS that is valid there; the unmask value elsewhere."""
    if c.collection not in world:
        raise LookupError(
            f"ImageCollection.load: ImageCollection asset '{c.collection}' not found."
        )
    a = c.affine
    cols, rows = np.meshgrid(np.arange(c.width) + 0.5, np.arange(c.height) + 0.5)
    x = a["translateX"] + cols * a["scaleX"] + rows * a.get("shearX", 0.0)
    y = a["translateY"] + cols * a.get("shearY", 0.0) + rows * a["scaleY"]
    start, end = (_time(d) for d in c.dates) if c.dates else ("0000", "9999")
    rasters = [
        r
        for r in world[c.collection]
        if f"EPSG:{r.epsg}" == c.crs and r.start < end and start < r.end
    ]
    for band in c.selected:
        if not all(band in r.bands for r in world[c.collection]):
            known = ", ".join(world[c.collection][0].bands)
            raise LookupError(
                f"Image.select: Pattern '{band}' did not match any bands. Available bands: "
                f"[{known}]"
            )
    dtype = np.dtype(c.dtype).newbyteorder("<")
    fill = dtype.type(c.unmask_value if c.unmask_value is not None else 0)
    out = np.zeros((c.height, c.width), [(name, dtype) for name in c.renamed])
    done = np.zeros((c.height, c.width), bool)
    for name in c.renamed:
        out[name] = fill
    for r in rasters:
        for ee_band, name in zip(c.selected, c.renamed, strict=True):
            values, valid = r.value_at(ee_band, x, y)
            take = valid & ~done
            out[name][take] = values[take]
        done |= r.value_at(c.selected[0], x, y)[1]
    return out


@contextmanager
def serve_earthengine(world: dict[str, list[Raster]]) -> Iterator[FakeEarthEngine]:
    """Serve a fake Earth Engine over `world` on 127.0.0.1 (a free port)."""
    fake = FakeEarthEngine(world)
    handler = type("Handler", (_Handler,), {"fake": fake})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    fake.token_uri = f"{fake.url}/token"
    thread = threading.Thread(target=server.serve_forever, name="fake-earthengine", daemon=True)
    thread.start()
    # ee.Initialize also fetches Google's list of deprecated datasets from Cloud Storage (and
    # warns when it cannot): the fake world has none.
    fetch_catalog = ee.deprecation._FetchDataCatalogStac
    ee.deprecation._FetchDataCatalogStac = lambda: {}
    try:
        yield fake
    finally:
        ee.deprecation._FetchDataCatalogStac = fetch_catalog
        server.shutdown()
        server.server_close()
        thread.join()


def service_account_key(path: Path, fake: FakeEarthEngine) -> str:
    """Write a service account's JSON key (a fresh RSA key, token_uri -> the fake) to `path`;
    returns the private key as PEM, for tests to look for where it must not be."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    info = {
        "type": "service_account",
        "project_id": "fake-project",
        "private_key_id": secrets.token_hex(8),
        "private_key": pem,
        "client_email": "swath-test@fake-project.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": fake.token_uri,
    }
    path.write_text(json.dumps(info))
    return pem


def coordinate_raster(
    epsg: int,
    x0: float,
    y0: float,
    shape: tuple[int, int],
    names: list[str],
    *,
    resolution_m: float = 10.0,
    **dates: str,
) -> Raster:
    """A raster whose every pixel is unique per band: band k holds k * 1e5 + row * W + col
    (exact in float32), so a patch read one pixel off, or bands swapped, differ."""
    h, w = shape
    rows, cols = np.mgrid[0:h, 0:w]
    bands = {
        name: (k * 100_000 + rows * w + cols).astype(np.float32) for k, name in enumerate(names)
    }
    return Raster(epsg, x0, y0, resolution_m, bands, np.ones(shape, bool), **dates)
