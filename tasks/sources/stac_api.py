"""STAC search API source: patches from an API such as Planetary Computer's or Earth Search's.

Each chunk is one item search (pystac-client, pages followed) over the box around all its
patches, the window and the cloud-cover limit; the pixels are then read, masked, harmonised
and composited by the path the static catalog source uses (tasks/sources/stac.py). Planetary
Computer's assets in Azure Blob Storage are signed with a SAS token from its token
endpoint, fetched here (no planetary-computer package), cached per collection, and kept out
of errors and logs (tasks/sources/redact.py).
"""

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlparse

import pystac
import rasterio
import requests
import shapely
from pystac_client import Client, ConformanceClasses
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from urllib3.util.retry import Retry

from embedders import naming
from tasks.plan.points import Point
from tasks.sources import sensors
from tasks.sources.failures import error_chain, keeps_secrets, unreachable
from tasks.sources.gdal_log import count_gdal_retries
from tasks.sources.pixels import patch_geobox
from tasks.sources.redact import redact_logs, redact_urls
from tasks.sources.registry import (
    ImagerySourceError,
    Patches,
    SensorConfig,
    StacApiOptions,
    TransientSourceError,
    own_options,
    plain_http_origins,
)
from tasks.sources.stac import (
    GDAL_HTTP_OPTIONS,
    CatalogItem,
    band_assets,
    check_composite,
    composite_patches,
    open_header,
    parse_item,
    resolve_assets,
    scl_asset,
)
from tasks.sources.stac_acquisitions import StacListing, stac_listing


@dataclass(frozen=True)
class KnownApi:
    url: str
    signing: str  # planetary-computer | none
    provenance: str
    # sensor -> why swath does not read it from this API (and where to read it instead:
    # {planetary_computer} and {earthengine} name those sources as the reader gives them)
    refuses: dict[str, str] = field(default_factory=dict)


# The public STAC APIs `--stac-url` knows by name.
KNOWN_APIS: dict[str, KnownApi] = {
    "planetary-computer": KnownApi(
        "https://planetarycomputer.microsoft.com/api/stac/v1",
        "planetary-computer",
        # Microsoft, "Reading data from the STAC API" and "Using tokens for data access"
        # (planetarycomputer.microsoft.com/docs): Sentinel-2 L2A assets B01..B12, SCL as
        # COGs in Azure Blob Storage, readable with a SAS token from /api/sas/v1/token/<id>.
        "Microsoft Planetary Computer; assets B02.., SCL; SAS-signed blob URLs",
    ),
    "earth-search": KnownApi(
        "https://earth-search.aws.element84.com/v1",
        "none",
        # Element 84, Earth Search v1 (element84.com/earth-search): sentinel-2-l2a assets
        # named by common name (blue, red, nir08, scl, ...) plus *-jp2 duplicates of the
        # L2A JPEG 2000 files; raster:bands offset -0.1, scale 0.0001 from baseline 04.00.
        "Element 84 Earth Search v1; assets by common name, public S3 COGs",
        # Its one Sentinel-1 collection, sentinel-1-grd, indexes ESA's GRD products in the
        # requester-pays bucket sentinel-s1-l1c (AWS Registry of Open Data, "Sentinel-1";
        # allenai/rslearn's aws_sentinel1 data source), as GeoTIFFs in radar geometry with
        # ground control points: neither readable anonymously nor on a map grid.
        refuses={
            sensors.SENTINEL_1_SENSOR: "Earth Search's only Sentinel-1 collection, "
            "sentinel-1-grd, lies in a requester-pays bucket (sentinel-s1-l1c) in radar "
            "geometry, not as map-projected COGs; read Sentinel-1 from {planetary_computer} "
            "(sentinel-1-rtc) or {earthengine} (COPERNICUS/S1_GRD)"
        },
    ),
}
PLANETARY_COMPUTER_HOST = "planetarycomputer.microsoft.com"
# Planetary Computer's STAC API lives at /api/stac/v1 and its token service at /api/sas/v1.
STAC_PATH, SAS_PATH = "/api/stac/v1", "/api/sas/v1"
# A token is fetched again this long before its msft:expiry, so no read starts on a token
# about to lapse (a COG read of a chunk takes seconds, a retried one minutes).
TOKEN_RENEW_BEFORE = timedelta(minutes=5)
# Items per search page. The STAC API spec lets a server cap `limit` at its own maximum, so
# a larger value is never an error; 100 keeps a page's JSON small.
SEARCH_PAGE_LIMIT = 100
# pystac-client's own retries of one request (search pages, landing page): on connection
# failures and on 429/5xx, with a short backoff; what still fails is classified and left to
# the Prefect task retries (tasks/prefetch.py).
API_RETRY = Retry(
    total=3,
    backoff_factor=0.25,
    status_forcelist=(429, 500, 502, 503, 504),
    allowed_methods=None,  # searches are POSTs, and idempotent
    raise_on_status=False,
)


# Items the check before a Sentinel-1 run looks at for one that carries every band.
RADAR_SAMPLE = 10


@dataclass(frozen=True)
class Api:
    """A resolved `--stac-url`: the API's root URL and, when signing, its SAS root."""

    url: str
    sas_root: str | None


class StacApiSource:
    """An ImagerySource over a STAC search API. One instance serves every thread of a
    process: it keeps one client per API and one token per collection."""

    def __init__(self, *, http_timeout_s: int = 30) -> None:
        self._timeout_s = http_timeout_s
        self._gdal_env = {
            **GDAL_HTTP_OPTIONS,
            "GDAL_HTTP_TIMEOUT": str(http_timeout_s),
            "GDAL_HTTP_CONNECTTIMEOUT": str(http_timeout_s),
        }
        self._clients: dict[str, Client] = {}
        self._tokens: dict[tuple[str, str], tuple[str, datetime]] = {}
        self._lock = threading.Lock()
        self._counts = threading.local()  # requests made by this thread's current call
        count_gdal_retries()
        redact_logs()

    @keeps_secrets
    def fetch(self, points: Sequence[Point], bands: Sequence[str], config: SensorConfig) -> Patches:
        check_composite(config)
        self._counts.n = 0
        parsed = self._chunk_items(points, config)
        with rasterio.Env(**self._gdal_env):
            patches = composite_patches(points, bands, config, parsed)
        patches.requests = self._counts.n
        return patches

    @keeps_secrets
    def acquisitions(
        self, points: Sequence[Point], bands: Sequence[str], config: SensorConfig
    ) -> StacListing:
        """Each point's acquisitions in the window (tasks/sources/acquisitions.py), from one
        search; the listing reads them from the items found (signed, where signing is on)."""
        check_composite(config)
        self._counts.n = 0
        listing = stac_listing(
            points, bands, config, self._chunk_items(points, config), self._gdal_env
        )
        listing.requests = self._counts.n
        return listing

    def _chunk_items(self, points: Sequence[Point], config: SensorConfig) -> list[CatalogItem]:
        """The items of one search over the box around the chunk's patches, signed."""
        api = resolve_api(config)
        client = self._client(api.url, checking=False)
        items = self._search(client, api, config, bbox=chunk_bbox(points, config))
        if api.sas_root and items:
            token = self._token(api.sas_root, config.collection, checking=False)
            items = [sign_item(item, token) for item in items]
        return [parse_item(item, api.url) for item in items]

    @keeps_secrets
    def check(self, bands: Sequence[str], config: SensorConfig) -> None:
        """The API answers and searches items, holds the collection, a sample item has every
        band, and one of its assets' header reads (signed, where signing is on): an image
        host that cannot be reached at all is refused here, in seconds."""
        check_composite(config)
        api = resolve_api(config)
        client = self._client(api.url, checking=True)
        if not client.conforms_to(ConformanceClasses.ITEM_SEARCH):
            raise ImagerySourceError(
                f"{api.url} does not declare STAC item search in its conformsTo; "
                f"{naming.setting('stac_url')} must be a STAC API's root (a static catalog is "
                f"{naming.setting('catalog')})"
            )
        self._require_collection(client, api, config.collection)
        # Sentinel-1 scenes differ in their polarisations (VV-only, HH+HV): a few are asked
        # for, and the first that carries every band is checked.
        radar = config.sensor == sensors.SENTINEL_1_SENSOR
        sample = self._search(client, api, config, max_items=RADAR_SAMPLE if radar else 1)
        sample = [i for i in sample if all(band_assets(b, i) for b in bands)] or sample
        if not sample:
            raise ImagerySourceError(
                f"collection {config.collection!r} of {api.url} has no item between "
                f"{config.start} and {config.end} with cloud cover {config.max_cloud_cover:g}% "
                f"or less: widen the window or raise {naming.setting('max_cloud_cover')}"
            )
        item = sample[0]
        assets = resolve_assets(bands, [item], config.collection)
        scl_asset([item], config.collection)
        if api.sas_root:
            item = sign_item(item, self._token(api.sas_root, config.collection, checking=True))
        with rasterio.Env(**self._gdal_env):
            open_header(item, assets[bands[0]])

    def plain_http(self, config: SensorConfig) -> set[str]:
        """The API's origin when it is plain http (the hrefs its searches return are known
        only during the run, and not named here)."""
        return plain_http_origins([resolve_api(config).url])

    def _client(self, url: str, *, checking: bool) -> Client:
        with self._lock:
            client = self._clients.get(url)
        if client is not None:
            return client
        stac_io = StacApiIO(max_retries=API_RETRY)
        try:  # Client.open sets the timeout and request modifier of stac_io
            client = Client.open(
                url, stac_io=stac_io, timeout=self._timeout_s, request_modifier=self._count
            )
        except Exception as e:  # pystac and requests raise many types: classify them all
            raise api_error(e, f"opening the STAC API {url}", checking=checking) from e
        with self._lock:
            return self._clients.setdefault(url, client)

    def _count(self, request: requests.Request) -> None:
        self._counts.n = getattr(self._counts, "n", 0) + 1

    def _require_collection(self, client: Client, api: Api, collection: str) -> None:
        what = f"reading collection {collection!r} of {api.url}"
        try:
            if client.get_collection(collection) is not None:  # None: answered 404
                return
        except Exception as e:  # APIError, pystac's parsing errors, requests' errors
            raise api_error(e, what, checking=True) from e
        try:
            known = sorted(c.id for c in client.get_collections())
        except Exception as e:
            raise api_error(e, f"listing the collections of {api.url}", checking=True) from e
        raise ImagerySourceError(
            f"{api.url} has no collection {collection!r}; its collections are {known}: "
            f"give one of them as {naming.setting('collection')}"
        )

    def _search(
        self,
        client: Client,
        api: Api,
        config: SensorConfig,
        *,
        bbox: tuple[float, float, float, float] | None = None,
        max_items: int | None = None,
    ) -> list[pystac.Item]:
        """One item search, every page: the collection, the window, the box, the cloud cover
        (server side where the API offers query or filter; tasks/sources/stac.py checks it
        again)."""
        where = f" in {[round(v, 5) for v in bbox]}" if bbox else ""
        what = f"searching {api.url} for {config.collection} items{where}"
        kwargs: dict[str, Any] = {}
        facts = sensors.SENSORS.get(config.sensor)
        clouds = facts is not None and "stac-api" in facts.cloud_cover_property
        if config.max_cloud_cover < 100 and clouds:  # radar has no cloud cover to filter on
            kwargs.update(cloud_cover_filter(client, config.max_cloud_cover))
        try:
            search = client.search(
                collections=[config.collection],
                bbox=bbox,
                datetime=f"{config.start}/{config.end}",
                limit=min(SEARCH_PAGE_LIMIT, max_items or SEARCH_PAGE_LIMIT),
                max_items=max_items,
                **kwargs,
            )
            return [item for page in search.pages() for item in page.items]
        except Exception as e:  # APIError, requests' errors, pystac's parsing errors
            raise api_error(e, what, checking=max_items is not None) from e

    def _token(self, sas_root: str, collection: str, *, checking: bool) -> str:
        """Planetary Computer's SAS token for `collection`, cached until shortly before it
        expires."""
        now = datetime.now(UTC)
        with self._lock:
            cached = self._tokens.get((sas_root, collection))
        if cached is not None and now < cached[1] - TOKEN_RENEW_BEFORE:
            return cached[0]
        url = f"{sas_root}/token/{collection}"
        what = f"getting a SAS token from {url}"
        self._counts.n = getattr(self._counts, "n", 0) + 1
        try:
            response = requests.get(url, timeout=self._timeout_s)
            response.raise_for_status()
            body = response.json()
            token, expiry = str(body["token"]), datetime.fromisoformat(body["msft:expiry"])
        except (requests.RequestException, ValueError, KeyError, TypeError) as e:
            raise api_error(e, what, checking=checking) from e
        if expiry.tzinfo is None:
            expiry = expiry.replace(tzinfo=UTC)
        with self._lock:
            self._tokens[(sas_root, collection)] = (token, expiry)
        return token


def resolve_api(config: SensorConfig) -> Api:
    """The API `config.catalog` names (a root URL, or a name of KNOWN_APIS) and its signing."""
    given = config.catalog.strip()
    known = KNOWN_APIS.get(given)
    url = (known.url if known else given).rstrip("/")
    refusing = known or next((k for k in KNOWN_APIS.values() if k.url == url), None)
    if refusing is not None and config.sensor in refusing.refuses:
        instead = {
            "planetary_computer": naming.given(stac_url="planetary-computer"),
            "earthengine": naming.given(source="earthengine"),
        }
        why = refusing.refuses[config.sensor].format(**instead)
        raise ImagerySourceError(f"{config.sensor} from {url}: {why}")
    parts = urlparse(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ImagerySourceError(
            f"{naming.setting('stac_url')} {given!r} is neither an http(s) URL nor one of "
            f"{', '.join(KNOWN_APIS)}: give the STAC API's root URL"
        )
    signing = own_options(config, StacApiOptions).stac_signing
    if signing == "auto":
        pc = parts.hostname == PLANETARY_COMPUTER_HOST
        signing = "planetary-computer" if pc else "none"
    if signing == "none":
        return Api(url, None)
    if not parts.path.endswith(STAC_PATH):
        raise ImagerySourceError(
            f"{naming.given(stac_signing='planetary-computer')}: cannot derive the token endpoint "
            f"from {url}; Planetary Computer's STAC API ends in {STAC_PATH} (its tokens are "
            f"under {SAS_PATH}); give that URL, or {naming.given(stac_signing='none')}"
        )
    return Api(url, url[: -len(STAC_PATH)] + SAS_PATH)


def cloud_cover_filter(client: Client, max_cloud_cover: float) -> dict[str, Any]:
    """The search arguments that leave out cloudier items on the server: the query
    extension, else CQL2 filter, else none (the items are then checked on this side only).
    Servers drop items without eo:cloud_cover under either; Sentinel-2 items carry it."""
    if client.conforms_to(ConformanceClasses.QUERY):
        return {"query": {"eo:cloud_cover": {"lte": max_cloud_cover}}}
    if client.conforms_to(ConformanceClasses.FILTER):
        cql2 = {"op": "<=", "args": [{"property": "eo:cloud_cover"}, max_cloud_cover]}
        return {"filter": cql2, "filter_lang": "cql2-json"}
    return {}


def chunk_bbox(points: Sequence[Point], config: SensorConfig) -> tuple[float, float, float, float]:
    """The lon/lat box around every point's patch."""
    boxes = [
        patch_geobox(p, config.patch_px, config.resolution_m).extent.to_crs("EPSG:4326").geom
        for p in points
    ]
    west, south, east, north = shapely.union_all(boxes).bounds
    return west, south, east, north


# Planetary Computer's assets lie in Azure Blob Storage; its client signs the hrefs there
# and leaves every other as it is (microsoft/planetary-computer-sdk-for-python,
# planetary_computer/sas.py, sign_url: a host ending in .blob.core.windows.net, but for the
# account of public thumbnails, and not already signed, i.e. with no st, se or sp).
BLOB_STORAGE_DOMAIN = ".blob.core.windows.net"
PUBLIC_ASSETS_HOST = "ai4edatasetspublicassets.blob.core.windows.net"
SIGNED_KEYS = frozenset({"st", "se", "sp"})


def needs_signing(href: str) -> bool:
    """Whether Planetary Computer's token goes on `href`: a blob storage URL not yet signed."""
    parts = urlparse(href.rstrip("/"))
    return (
        parts.scheme in ("http", "https")
        and parts.netloc.endswith(BLOB_STORAGE_DOMAIN)
        and parts.netloc != PUBLIC_ASSETS_HOST
        and not SIGNED_KEYS & set(parse_qs(parts.query))
    )


def sign_item(item: pystac.Item, token: str) -> pystac.Item:
    """A copy of `item` whose blob storage asset hrefs carry `token` in their query string."""
    signed = item.clone()
    for asset in signed.assets.values():
        if needs_signing(asset.href):
            asset.href = f"{asset.href}{'&' if '?' in asset.href else '?'}{token}"
    return signed


def api_error(
    error: BaseException, what: str, *, checking: bool
) -> ImagerySourceError | TransientSourceError:
    """A failed API request as TransientSourceError (429, 5xx, timeouts; a refused or
    dropped connection during a run) or ImagerySourceError (4xx, not a STAC API, a host
    that cannot be reached when the run is checked), with URL query strings redacted."""
    chain = error_chain(error)
    status = next((s for e in chain if (s := _status(e)) is not None), None)
    text = redact_urls(f"{type(error).__name__}: {str(error)[:300]}")
    if status is not None:
        transient = status == 429 or status >= 500
    elif any(isinstance(e, requests.Timeout) for e in chain):
        transient = True
    elif any(isinstance(e, requests.ConnectionError) for e in chain):
        transient = not checking
        if checking:
            return ImagerySourceError(
                f"{what}: cannot connect ({unreachable(error) or text}); check "
                f"{naming.setting('stac_url')}: the API's root URL, or one of "
                f"{', '.join(KNOWN_APIS)}"
            )
    else:
        transient = False
    if transient:
        return TransientSourceError(f"{what}: {text}; a retry may succeed")
    fix = (
        f"check {naming.setting('stac_url')} (a STAC API's root URL), "
        f"{naming.setting('collection')} and {naming.setting('stac_signing')}"
        if status is None or status != 403
        else f"the API refused access: check {naming.setting('stac_signing')} (planetary-computer "
        "signs assets)"
    )
    return ImagerySourceError(f"{what}: {text}; {fix}")


def _status(error: BaseException) -> int | None:
    if isinstance(error, APIError):
        return getattr(error, "status_code", None)
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return error.response.status_code
    return None
