"""A small STAC search API on 127.0.0.1 in two styles, Planetary Computer's and Earth Search's.

It serves a landing page (conformsTo core, item-search, query), /collections, /collections/<id>
and /search (GET and POST: bbox, datetime, collections, query on eo:cloud_cover, limit, a
`next` link per page), and the items' COGs with HTTP Range (tests/fakes.py's handler).

Items are real items (tests/data/stac/) with each scene's id, time, footprint and hrefs.

- "planetary-computer": the API under /api/stac/v1, assets B02.. and SCL, the item's
  s2:processing_baseline, no nodata declared and none tagged in the COGs; a token endpoint
  at /api/sas/v1/token/<collection>. As on Planetary Computer, the COGs lie in Azure Blob
  Storage, at `http://<account>.blob.core.windows.net/blobs/...` (a random account): the
  server is that host too, as the HTTP proxy of this process (`http_proxy` is set while it
  serves; 127.0.0.1 is in NO_PROXY, tests/conftest.py), and a request for a blob without the
  current token answers 403. `assets=` puts them elsewhere.
- "earth-search": the API under /v1, assets by common name (blue, ..., scl) each with a
  `*-jp2` duplicate (whose files do not exist: reading one fails) and a three-band `visual`,
  raster:bands offset -0.1 and scale 0.0001 from baseline 04.00, and the scene's
  earthsearch:boa_offset_applied (true, false, or absent as in sentinel-2-c1-l2a).

Every scene is GRID on EPSG:32633; band k of a scene holds pixel_value(row, col, k) plus the
scene's `delta`, plus its `add_dn` (1000 for a baseline from 04.00), 0 in a nodata corner.

A Sentinel-1 scene (`Scene(sensor="s1")`, planetary-computer style only) is an item of
`sentinel-1-rtc` in the shape of Planetary Computer's (tests/data/stac/): float32 COGs `vv`
and `vh` of linear power 10^(s1_db(row, col, k) / 10), -32768 (its declared nodata) in the
nodata corner and 0 (border noise) in column S1_NOISE_COL.
"""

import base64
import json
import os
import secrets
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, quote, urlencode, urlparse

import numpy as np
import shapely
from odc.geo.geom import BoundingBox

from tests.fakes import FaultHook, RangeHandler, Request, serve_directory
from tests.rasters import write_cog

Style = Literal["planetary-computer", "earth-search"]
COLLECTION = "sentinel-2-l2a"
EPSG, X0, Y0, RES = 32633, 500_000.0, 5_000_000.0, 10.0
BANDS = ("B02", "B03", "B04", "B08")
COMMON = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir"}
BAND_STEP = 10_000  # band k adds k * BAND_STEP
NODATA_PX = 8  # the north-west NODATA_PX x NODATA_PX corner is 0 in every band
CONFORMS = (
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/collections",
    "https://api.stacspec.org/v1.0.0/item-search",
    "https://api.stacspec.org/v1.0.0/item-search#query",
)
PREFIX: dict[str, str] = {"planetary-computer": "/api/stac/v1", "earth-search": "/v1"}
SAS_PREFIX = "/api/sas/v1/token/"
GEOJSON = "application/geo+json"
DATA = Path(__file__).parent / "data" / "stac"
S1_COLLECTION = "sentinel-1-rtc"
S1_BANDS = ("VV", "VH")
S1_NODATA = -32768.0  # Planetary Computer's raster:bands nodata of its RTC assets
S1_NOISE_COL = 90  # a column of zeros: GRD border noise


def s1_db(row: Any, col: Any, band_index: int = 0) -> Any:
    """The backscatter (dB) of polarisation `band_index` at (row, col) of an S1 scene with
    delta 0: -5 to -45 dB over a 96 px scene, above the noise floor swath masks."""
    return -5.0 - 0.2 * row - 0.1 * col - 6.0 * band_index


def pixel_value(row: int, col: int, band_index: int = 0) -> float:
    """The harmonised value of band `band_index` at (row, col) of a scene with delta 0."""
    return row * 37 + col * 3 + 1 + band_index * BAND_STEP


@dataclass(frozen=True)
class Scene:
    id: str
    day: int  # day of June 2021
    baseline: str = "03.01"
    add_dn: float = 0.0  # what the scene's DNs carry on top of the harmonised value
    delta: float = 0.0  # added to every pixel of this scene (tells dates apart)
    cloud_cover: float | None = 5.0
    size: int = 96  # pixels a side
    # earth-search: earthsearch:boa_offset_applied (None: absent, as in sentinel-2-c1-l2a)
    flag: bool | None = False
    sensor: Literal["s2", "s1"] = "s2"
    polarizations: tuple[str, ...] = S1_BANDS  # s1: the polarisations it carries
    orbit_state: str = "descending"  # s1: sat:orbit_state
    mode: str = "IW"  # s1: sar:instrument_mode

    @property
    def collection(self) -> str:
        return S1_COLLECTION if self.sensor == "s1" else COLLECTION


@dataclass
class FakeApi:
    """What a test sees of a running fake API."""

    url: str  # the STAC API's root
    base: str  # http://127.0.0.1:<port>
    token: str  # the SAS token the COGs require (planetary-computer style)
    log: list[Request]
    assets: str  # where the items' assets are: the blob host, or this server
    searches: list[dict[str, Any]] = field(default_factory=list)  # each /search's parameters

    def count(self, path: str) -> int:
        return sum(1 for r in self.log if urlparse(r.path).path.startswith(path))


@contextmanager
def serve_stac_api(
    root: Path,
    scenes: Sequence[Scene],
    *,
    style: Style = "planetary-computer",
    page_size: int = 100,
    fault: FaultHook | None = None,
    assets: str | None = None,
) -> Iterator[FakeApi]:
    """Write the scenes' COGs under `root` and serve them behind a STAC API. `assets`: the
    base URL of the items' asset hrefs, or SERVER for this server's (default: the blob host
    in the planetary-computer style, this server in the earth-search style)."""
    for scene in scenes:
        _write_scene(root, scene, style)
    blob = f"http://swath{secrets.token_hex(4)}{BLOB_STORAGE}"
    state = _State(scenes, style, page_size, sas_token(), assets)
    log: list[Request] = []
    proxy = os.environ.get("http_proxy")
    with serve_directory(root, log=log, fault=fault, handler_class=_Handler, state=state) as base:
        if state.assets is None:
            state.assets = blob if style == "planetary-computer" else base
        elif state.assets == SERVER:
            state.assets = base
        if state.assets == blob:
            os.environ["http_proxy"] = base
        try:
            url = f"{base}{PREFIX[style]}"
            yield FakeApi(url, base, state.token, log, state.assets, state.searches)
        finally:
            if proxy is None:
                os.environ.pop("http_proxy", None)
            else:
                os.environ["http_proxy"] = proxy


BLOB_STORAGE = ".blob.core.windows.net"
SERVER = "server"  # serve_stac_api(assets=SERVER): the COGs on the API's own host


def sas_token() -> str:
    """A token in the form of Planetary Computer's: an Azure user delegation SAS (Azure
    Storage's documented query parameters st, se, sp, sv, sr, skoid, sktid, skt, ske, sks,
    skv and the signature sig, percent-encoded base64 of an HMAC-SHA256), its values made up."""
    now = datetime.now(UTC).replace(microsecond=0)
    sig = quote(base64.b64encode(secrets.token_bytes(32)).decode(), safe="")
    fields = {
        "st": stamp(now - timedelta(minutes=5)), "se": stamp(now + timedelta(hours=1)),
        "sp": "rl", "sv": "2021-06-08", "sr": "c", "skoid": str(uuid.uuid4()),
        "sktid": str(uuid.uuid4()), "skt": stamp(now - timedelta(minutes=5)),
        "ske": stamp(now + timedelta(days=1)), "sks": "b", "skv": "2021-06-08", "sig": sig,
    }  # fmt: skip
    return "&".join(f"{k}={v}" for k, v in fields.items())


def stamp(when: datetime) -> str:
    return quote(when.strftime("%Y-%m-%dT%H:%M:%SZ"), safe="")


def signature(token: str) -> str:
    """The secret part of a SAS token: its sig value, as it appears in a URL."""
    return token.rsplit("sig=", 1)[1].split("&")[0]


@dataclass
class _State:
    scenes: Sequence[Scene]
    style: Style
    page_size: int
    token: str
    assets: str | None  # the base URL of asset hrefs
    searches: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def collections(self) -> list[str]:
        """The collections of the scenes served (Sentinel-2 L2A when there are none)."""
        return sorted({s.collection for s in self.scenes}) or [COLLECTION]


def _footprint(scene: Scene) -> shapely.Geometry:
    box = BoundingBox(X0, Y0 - scene.size * RES, X0 + scene.size * RES, Y0, crs=f"EPSG:{EPSG}")
    return box.polygon.to_crs("EPSG:4326").geom


def _asset_keys(style: Style) -> dict[str, str]:
    """Band (or SCL) -> asset key in this style."""
    if style == "planetary-computer":
        return {**{b: b for b in BANDS}, "SCL": "SCL"}
    return {**COMMON, "SCL": "scl"}


def s1_linear(db: np.ndarray) -> np.ndarray:
    """Linear power as the COGs hold it (float32) for backscatter `db` (dB)."""
    return np.power(10.0, np.asarray(db, np.float64) / 10.0).astype(np.float32)


def _write_scene(root: Path, scene: Scene, style: Style) -> None:
    folder = root / "blobs" / scene.id
    folder.mkdir(parents=True, exist_ok=True)
    rows, cols = np.mgrid[0 : scene.size, 0 : scene.size]
    if scene.sensor == "s1":
        for k, band in enumerate(S1_BANDS):
            if band not in scene.polarizations:
                continue
            power = s1_linear(s1_db(rows, cols, k) + scene.delta)
            power[:NODATA_PX, :NODATA_PX] = S1_NODATA
            power[:, S1_NOISE_COL] = 0.0
            write_cog(
                folder / f"{band.lower()}.tif", power, epsg=EPSG, x0=X0, y0=Y0, res=RES,
                nodata=S1_NODATA, blocksize=128,
            )  # fmt: skip
        return
    for k, band in enumerate(BANDS):
        values = rows * 37 + cols * 3 + 1 + k * BAND_STEP + scene.delta + scene.add_dn
        values[:NODATA_PX, :NODATA_PX] = 0
        _write_cog(folder / f"{_asset_keys(style)[band]}.tif", values.astype(np.uint16), style)
    scl = np.full(rows.shape, 4, np.uint8)
    _write_cog(folder / f"{_asset_keys(style)['SCL']}.tif", scl, style)


def _write_cog(path: Path, data: np.ndarray, style: Style) -> None:
    # Planetary Computer's items declare no nodata; its COGs are written without a nodata
    # tag here, the case where only the sensor's own rule (DN 0) masks the nodata corner.
    nodata = None if style == "planetary-computer" else 0
    write_cog(path, data, epsg=EPSG, x0=X0, y0=Y0, res=RES, nodata=nodata, blocksize=128)


# Real items, trimmed (tests/data/stac/README.md): each fake item is one of these with the
# scene's id, time, footprint, baseline, cloud cover, Earth Search flag and asset hrefs.
TEMPLATES: dict[Style, Path] = {
    "planetary-computer": DATA / "planetary-computer-sentinel-2-l2a.json",
    "earth-search": DATA / "earth-search-sentinel-2-l2a.json",
}
S1_TEMPLATE = DATA / "planetary-computer-sentinel-1-rtc.json"


def s1_item(scene: Scene, base: str, hosted: str) -> dict[str, Any]:
    """The real Planetary Computer S1 RTC item with the scene's id, time, footprint,
    polarisations, orbit state and hrefs."""
    real = json.loads(S1_TEMPLATE.read_text())
    footprint = _footprint(scene)
    when = datetime(2021, 6, scene.day, 10, tzinfo=UTC)
    properties = {
        k: v for k, v in real["properties"].items() if not k.startswith(("proj:", "s1:shape"))
    }
    properties.update(
        datetime=when.isoformat(),
        start_datetime=(when - timedelta(seconds=6)).isoformat(),
        end_datetime=(when + timedelta(seconds=6)).isoformat(),
    )
    properties["sar:polarizations"] = list(scene.polarizations)
    properties["sar:instrument_mode"] = scene.mode
    properties["sat:orbit_state"] = scene.orbit_state
    assets = {
        key: {**asset, "href": f"{hosted}/blobs/{scene.id}/{key}.tif"}
        for key, asset in real["assets"].items()
        if key.upper() in scene.polarizations
    }
    return {
        **{k: v for k, v in real.items() if k not in ("links", "assets", "properties")},
        "id": scene.id,
        "geometry": shapely.geometry.mapping(footprint),
        "bbox": list(footprint.bounds),
        "properties": properties,
        "assets": assets,
        "collection": S1_COLLECTION,
        "links": [{"rel": "collection", "href": f"{base}/api/stac/v1/collections/{S1_COLLECTION}"}],
    }


def _item(scene: Scene, style: Style, base: str, assets: str) -> dict[str, Any]:
    if scene.sensor == "s1":
        return s1_item(scene, base, assets)
    real = json.loads(TEMPLATES[style].read_text())
    footprint = _footprint(scene)
    # The real item's own grid (proj:*) and tile would describe another place: left out.
    properties = {
        k: v
        for k, v in real["properties"].items()
        if not k.startswith(("proj:", "mgrs:", "grid:", "s2:mgrs_tile", "s2:product_uri"))
        and k not in ("eo:cloud_cover", "earthsearch:s3_path")
    }
    properties["datetime"] = datetime(2021, 6, scene.day, 10, tzinfo=UTC).isoformat()
    properties["s2:processing_baseline"] = scene.baseline
    if scene.cloud_cover is not None:
        properties["eo:cloud_cover"] = scene.cloud_cover
    if style == "earth-search":
        properties.pop("earthsearch:boa_offset_applied")
        if scene.flag is not None:
            properties["earthsearch:boa_offset_applied"] = scene.flag
    new_baseline = scene.baseline >= "04.00"
    wanted = set(_asset_keys(style).values())
    hosted = assets
    assets = {}
    for key, asset in real["assets"].items():
        name = key.removesuffix("-jp2")
        if name not in wanted:
            continue
        asset = {k: v for k, v in asset.items() if not k.startswith("proj:")}
        suffix = "jp2" if key.endswith("-jp2") else "tif"
        asset["href"] = f"{hosted}/blobs/{scene.id}/{name}.{suffix}"
        for band in asset.get("raster:bands", []):
            if "offset" in band:
                band["offset"] = -0.1 if new_baseline else 0.0
        assets[key] = asset
        if (
            style == "earth-search"
            and not key.endswith("-jp2")
            and f"{key}-jp2" not in real["assets"]
        ):
            assets[f"{key}-jp2"] = {**asset, "href": f"{hosted}/blobs/{scene.id}/{name}.jp2"}
            assets[f"{key}-jp2"]["type"] = "image/jp2"
    if style == "earth-search":
        three = [{"name": c, "common_name": c} for c in ("red", "green", "blue")]
        cog = "image/tiff; application=geotiff; profile=cloud-optimized"
        assets["visual"] = {"href": f"{hosted}/blobs/{scene.id}/TCI.tif", "type": cog}
        assets["visual"]["eo:bands"] = three
    return {
        **{k: v for k, v in real.items() if k not in ("links", "assets", "properties")},
        "id": scene.id,
        "geometry": shapely.geometry.mapping(footprint),
        "bbox": list(footprint.bounds),
        "properties": properties,
        "assets": assets,
        "collection": COLLECTION,
        "links": [{"rel": "collection", "href": f"{base}{PREFIX[style]}/collections/{COLLECTION}"}],
    }


class _Handler(RangeHandler):
    def __init__(self, *args: Any, state: _State, **kwargs: Any) -> None:
        self._state = state
        super().__init__(*args, **kwargs)

    @property
    def _base(self) -> str:
        return f"http://{self.headers.get('Host')}"

    def serve_get(self) -> None:
        url = urlparse(self.path)
        prefix = PREFIX[self._state.style]
        if url.path.startswith(SAS_PREFIX) and self._state.style == "planetary-computer":
            self._token(url.path[len(SAS_PREFIX) :])
        elif url.path.rstrip("/") == prefix:
            self._json(self._landing())
        elif url.path == f"{prefix}/collections":
            served = [self._collection(c) for c in self._state.collections()]
            self._json({"collections": served, "links": []})
        elif url.path.startswith(f"{prefix}/collections/"):
            if url.path.rsplit("/", 1)[1] in self._state.collections():
                self._json(self._collection(url.path.rsplit("/", 1)[1]))
            else:
                self._json({"code": "NotFound", "description": "no such collection"}, 404)
        elif url.path == f"{prefix}/search":
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            self._search(_from_query(query), "GET")
        elif self._signed(url.query):
            super().serve_get()

    def serve_head(self) -> None:
        if self._signed(urlparse(self.path).query):
            super().serve_head()

    def serve_post(self) -> None:
        if urlparse(self.path).path != f"{PREFIX[self._state.style]}/search":
            self.send_error(HTTPStatus.METHOD_NOT_ALLOWED)
            return
        length = int(self.headers.get("Content-Length") or 0)
        self._search(json.loads(self.rfile.read(length) or b"{}"), "POST")

    def _signed(self, query: str) -> bool:
        """COGs in blob storage need the token (the planetary-computer style puts them
        there); else answer 403."""
        if not (self.headers.get("Host") or "").endswith(BLOB_STORAGE):
            return True
        if parse_qs(query) == parse_qs(self._state.token):
            return True
        self._json({"error": "AuthenticationFailed"}, 403)
        return False

    def _token(self, collection: str) -> None:
        if collection not in self._state.collections():
            self._json({"detail": f"unknown collection {collection}"}, 404)
            return
        expiry = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        self._json({"msft:expiry": expiry, "token": self._state.token})

    def _landing(self) -> dict[str, Any]:
        root = f"{self._base}{PREFIX[self._state.style]}"
        return {
            "type": "Catalog",
            "stac_version": "1.0.0",
            "id": f"fake-{self._state.style}",
            "description": "a fake STAC API for tests",
            "conformsTo": list(CONFORMS),
            "links": [
                {"rel": "self", "href": root, "type": "application/json"},
                {"rel": "root", "href": root, "type": "application/json"},
                {"rel": "data", "href": f"{root}/collections", "type": "application/json"},
                {"rel": "search", "href": f"{root}/search", "type": GEOJSON, "method": "GET"},
                {"rel": "search", "href": f"{root}/search", "type": GEOJSON, "method": "POST"},
            ],
        }

    def _collection(self, collection: str) -> dict[str, Any]:
        root = f"{self._base}{PREFIX[self._state.style]}"
        return {
            "type": "Collection",
            "stac_version": "1.0.0",
            "id": collection,
            "description": f"fake {collection}",
            "license": "proprietary",
            "extent": {
                "spatial": {"bbox": [[-180, -90, 180, 90]]},
                "temporal": {"interval": [["2015-06-27T00:00:00Z", None]]},
            },
            "links": [
                {"rel": "self", "href": f"{root}/collections/{collection}"},
                {"rel": "root", "href": root},
            ],
        }

    def _search(self, params: dict[str, Any], method: str) -> None:
        with self._state.lock:
            self._state.searches.append(params)
        found = [s for s in self._state.scenes if _matches(s, params)]
        page, size = (
            int(params.get("page", 1)),
            min(int(params.get("limit", 10)), self._state.page_size),
        )
        assets = self._state.assets or self._base
        features = [
            _item(s, self._state.style, self._base, assets)
            for s in found[(page - 1) * size :][:size]
        ]
        links = []
        if page * size < len(found):
            url = f"{self._base}{PREFIX[self._state.style]}/search"
            following = {**params, "page": page + 1}
            if method == "POST":
                links.append({"rel": "next", "href": url, "method": "POST", "body": following})
            else:
                links.append({"rel": "next", "href": f"{url}?{_to_query(following)}"})
        self._json({"type": "FeatureCollection", "features": features, "links": links})

    def _json(self, body: dict[str, Any], status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _from_query(query: dict[str, str]) -> dict[str, Any]:
    params: dict[str, Any] = dict(query)
    if "bbox" in query:
        params["bbox"] = [float(v) for v in query["bbox"].split(",")]
    if "collections" in query:
        params["collections"] = query["collections"].split(",")
    if "query" in query:
        params["query"] = json.loads(query["query"])
    return params


def _to_query(params: dict[str, Any]) -> str:
    flat = {
        k: ",".join(map(str, v)) if isinstance(v, list) else json.dumps(v) if isinstance(v, dict)
        else v
        for k, v in params.items()
    }  # fmt: skip
    return urlencode(flat)


_OPS = {
    "lte": float.__le__,
    "lt": float.__lt__,
    "gte": float.__ge__,
    "gt": float.__gt__,
    "eq": float.__eq__,
}


def _matches(scene: Scene, params: dict[str, Any]) -> bool:
    if "collections" in params and scene.collection not in params["collections"]:
        return False
    if "bbox" in params:
        west, south, east, north = params["bbox"]
        if not _footprint(scene).intersects(shapely.box(west, south, east, north)):
            return False
    if "datetime" in params:
        start, _, end = str(params["datetime"]).partition("/")
        when = datetime(2021, 6, scene.day, 10, tzinfo=UTC)
        if start not in ("", "..") and when < _parse_time(start):
            return False
        if end not in ("", "..") and when > _parse_time(end):
            return False
    for name, ops in (params.get("query") or {}).items():
        value = {"eo:cloud_cover": scene.cloud_cover}.get(name)
        if value is None:  # as real servers: an item without the property does not match
            return False
        if not all(_OPS[op](float(value), float(limit)) for op, limit in ops.items()):
            return False
    return True


def _parse_time(text: str) -> datetime:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
