"""The stac-catalog source: patches from a static STAC catalog of Cloud-Optimized GeoTIFFs
(a local path or an http(s) URL of catalog.json), through the STAC machinery of
tasks/sources/stac.py.
"""

import threading
import time
from collections.abc import Sequence
from email.message import Message
from urllib.error import HTTPError

import pystac
import rasterio
import urllib3
from pystac.stac_io import DefaultStacIO
from urllib3.util.retry import Retry

from embedders.naming import setting
from tasks.plan.points import Point
from tasks.sources.failures import classify_error, keeps_secrets, unreachable
from tasks.sources.gdal_log import count_gdal_retries
from tasks.sources.redact import redact_logs
from tasks.sources.registry import (
    ImagerySourceError,
    Patches,
    SensorConfig,
    TransientSourceError,
    plain_http_origins,
)
from tasks.sources.stac import (
    GDAL_HTTP_OPTIONS,
    CatalogItem,
    check_composite,
    composite_patches,
    open_header,
    parse_item,
    resolve_assets,
    scl_asset,
)
from tasks.sources.stac_acquisitions import StacListing, stac_listing


class StacCatalogSource:
    """An ImagerySource over a static STAC catalog (local path or http(s) URL of catalog.json).

    The catalog is read once per source instance and kept; one instance may serve several
    threads.
    """

    def __init__(self, *, http_timeout_s: int = 30) -> None:
        self._timeout_s = http_timeout_s
        self._gdal_env = {
            **GDAL_HTTP_OPTIONS,
            "GDAL_HTTP_TIMEOUT": str(http_timeout_s),
            "GDAL_HTTP_CONNECTTIMEOUT": str(http_timeout_s),
        }
        self._catalogs: dict[str, list[CatalogItem]] = {}
        self._lock = threading.Lock()
        count_gdal_retries()
        redact_logs()  # hrefs may come signed (a SAS in their query string)

    @keeps_secrets
    def fetch(self, points: Sequence[Point], bands: Sequence[str], config: SensorConfig) -> Patches:
        check_composite(config)
        with rasterio.Env(**self._gdal_env):
            return composite_patches(points, bands, config, self._collection(config))

    @keeps_secrets
    def acquisitions(
        self, points: Sequence[Point], bands: Sequence[str], config: SensorConfig
    ) -> StacListing:
        """Each point's acquisitions in the window (tasks/sources/acquisitions.py)."""
        check_composite(config)
        return stac_listing(points, bands, config, self._collection(config), self._gdal_env)

    @keeps_secrets
    def check(self, bands: Sequence[str], config: SensorConfig) -> None:
        """Fail now, before anything is written, when this configuration cannot work: the
        catalog opens, holds the collection, every band has an asset, and one asset's header
        reads (a host that cannot be reached at all is refused). Raises ImagerySourceError
        or TransientSourceError."""
        items = [c.item for c in self._checked_collection(config)]
        assets = resolve_assets(bands, items, config.collection)
        scl_asset(items, config.collection)
        with rasterio.Env(**self._gdal_env):
            open_header(items[0], assets[bands[0]])

    def _checked_collection(self, config: SensorConfig) -> list[CatalogItem]:
        """The collection's items for the check before a run: a catalog that nobody
        answers for (its host does not resolve, the connection is refused) is refused at
        once, and one that still fails transiently (429, 5xx, timeouts) after a few tries
        over a few seconds is refused too, rather than left to minutes of task retries."""
        for pause in (*CHECK_PAUSES_S, None):
            try:
                return self._collection(config)
            except TransientSourceError as e:
                reason = unreachable(e)
                if reason:
                    raise ImagerySourceError(
                        f"reading the STAC catalog {config.catalog}: {reason}; check "
                        f"{setting('catalog')} (and the network)"
                    ) from e
                if pause is None:
                    raise ImagerySourceError(
                        f"{e} -- still failing after {len(CHECK_PAUSES_S) + 1} tries over "
                        f"{sum(CHECK_PAUSES_S):g} s; rerun when the catalog answers"
                    ) from e
                time.sleep(pause)
        raise AssertionError("unreachable: the loop returns or raises")

    def plain_http(self, config: SensorConfig) -> set[str]:
        """The catalog's and its items' assets' URLs that are plain http:// (scheme and
        host): what is read from them is not protected in transit."""
        hrefs = [config.catalog] + [
            asset.get_absolute_href() or asset.href
            for c in self._collection(config)
            for asset in c.item.assets.values()
        ]
        return plain_http_origins(hrefs)

    def _collection(self, config: SensorConfig) -> list[CatalogItem]:
        with self._lock:
            if config.catalog not in self._catalogs:
                self._catalogs[config.catalog] = read_catalog(
                    config.catalog, timeout_s=self._timeout_s
                )
            items = self._catalogs[config.catalog]
        selected = [c for c in items if c.item.collection_id == config.collection]
        if not selected:
            found = sorted({str(c.item.collection_id) for c in items})
            raise ImagerySourceError(
                f"catalog {config.catalog} has no item in collection {config.collection!r} "
                f"({config.sensor}); its collections are {found}: give a catalog that holds "
                f"{config.sensor} items, or choose models of the sensors it holds "
                "(--list-models shows each model's sensor)"
            )
        return selected


# Each request for a remote catalog's JSON is retried by urllib3 on 429/5xx and on dropped
# connections, as GDAL retries each range request of a COG (tasks/sources/stac.py): a catalog is
# one request per item, so with request-level faults a whole read would rarely get through.
CATALOG_RETRY = Retry(total=3, backoff_factor=0.25, status_forcelist=(429, 500, 502, 503, 504))


class RetryingStacIO(DefaultStacIO):
    """pystac's reader, with `CATALOG_RETRY` for http(s) hrefs. A status still failing
    raises urllib3's MaxRetryError; another 4xx an HTTPError with its status (both as
    pystac's own reader would be classified, tasks/sources/registry.py)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__()
        self._http = urllib3.PoolManager(retries=CATALOG_RETRY, timeout=timeout_s)

    def read_text_from_href(self, href: str) -> str:
        if not href.lower().startswith(("http://", "https://")):
            return str(super().read_text_from_href(href))
        reply = self._http.request("GET", href)
        if reply.status >= 400:
            raise HTTPError(href, reply.status, reply.reason or "", Message(), None)
        return str(reply.data.decode("utf-8"))


# Pauses between the tries of the check before a run (tasks above retry for longer).
CHECK_PAUSES_S = (1.0, 2.0)


def read_catalog(href: str, *, timeout_s: float = 30.0) -> list[CatalogItem]:
    """Every item of a static catalog (or collection), with its footprint and time interval."""
    try:
        root = pystac.read_file(href, stac_io=RetryingStacIO(timeout_s))
        if not isinstance(root, pystac.Catalog):
            raise ImagerySourceError(f"{href} is a STAC {root.STAC_OBJECT_TYPE}, not a catalog")
        items = list(root.get_items(recursive=True))
    except ImagerySourceError:
        raise
    except Exception as e:  # pystac raises a bare Exception for HTTP errors: classify them all
        raise classify_error(e, f"reading the STAC catalog {href}") from e
    return [parse_item(item, href) for item in items]
