"""Imagery in transit: a body cut short or changed on its way fails to decode, and from a
remote source that is transient (a retry may get it whole); GDAL's own retries are counted
and kept off the terminal; a catalog that nobody answers, or that keeps failing, is refused
by the check before a run; plain-http sources are named. The real static catalog source
reads the demo catalog from a loopback HTTP server that alters what it serves."""

import logging
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from tasks.sources.failures import classify_error
from tasks.sources.gdal_log import gdal_retries
from tasks.sources.registry import ImagerySourceError, TransientSourceError
from tasks.sources.stac_catalog import StacCatalogSource, read_catalog
from tests.fakes import Fault, Request, serve_directory
from tests.tasks.test_stac import DEMO_BANDS, demo, demo_config, demo_points

__all__ = ["demo"]  # the fixture, used by name
ITEM = "xrspatial-sentinel-2-sample.json"


def _serve(demo: Path, hook):  # type: ignore[no-untyped-def]
    return serve_directory(demo.parent, fault=hook)


def test_transit__a_catalog_item_cut_short_is_transient(demo: Path) -> None:
    """It used to fail for good: 'check that the catalog and its asset hrefs exist'."""
    cut = pytest.raises(TransientSourceError, match=r"JSONDecodeError.*a retry may succeed")
    with _serve(demo, lambda r: "short" if r.path.endswith(ITEM) else None) as url, cut:
        read_catalog(f"{url}/catalog.json")


def test_transit__a_local_catalog_item_that_is_not_json_stays_permanent(
    demo: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "catalog"
    import shutil

    shutil.copytree(demo.parent, broken)
    item = next(broken.glob(f"*/{ITEM}"))
    item.write_text(item.read_text()[:100])
    with pytest.raises(ImagerySourceError, match="JSONDecodeError"):
        read_catalog(str(broken / "catalog.json"))


def test_transit__a_short_read_from_a_remote_source_is_transient() -> None:
    import http.client

    error = http.client.IncompleteRead(b"abc", 10)
    assert isinstance(
        classify_error(error, "reading https://example.org/x.json"), TransientSourceError
    )
    assert isinstance(classify_error(error, "reading /data/x.json"), ImagerySourceError)


def test_gdal_retries__are_counted_and_kept_off_the_terminal(demo: Path, caplog) -> None:
    every_other = {"n": 0}

    def hook(request: Request) -> Fault:
        if request.path.endswith(".tif") and request.range:
            every_other["n"] += 1
            return 503 if every_other["n"] % 2 else None
        return None

    before = gdal_retries()
    with caplog.at_level(logging.DEBUG), _serve(demo, hook) as url:
        patches = StacCatalogSource().fetch(
            demo_points(), DEMO_BANDS, demo_config(url + "/catalog.json")
        )
    assert all(np.isfinite(patches.bands[b]).all() for b in DEMO_BANDS)
    # GDAL says each retry it makes once per logger; it retried some of the 503s (not
    # necessarily each: some reads are given up and made again whole)
    assert every_other["n"] // 2 >= gdal_retries() - before > 0
    assert not [r for r in caplog.records if "Retrying" in r.getMessage()]


def test_check__a_catalog_url_nobody_answers_is_refused_at_once() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    config = demo_config(f"http://127.0.0.1:{port}/catalog.json")
    started = time.monotonic()
    with pytest.raises(
        ImagerySourceError, match=r"connection was refused.*check imagery › STAC catalog"
    ):
        StacCatalogSource().check(["B02"], config)
    assert time.monotonic() - started < 60  # a hang guard: refused, not retried for minutes


def test_check__a_catalog_that_keeps_failing_is_refused_after_a_few_tries(demo: Path) -> None:
    log: list[Request] = []
    refused = pytest.raises(ImagerySourceError, match=r"503.*still failing after 3 tries over")
    with serve_directory(demo.parent, log=log, fault=lambda r: 503) as url, refused:
        StacCatalogSource().check(["B02"], demo_config(f"{url}/catalog.json"))
    assert len(log) < 30, f"{len(log)} requests"


def test_plain_http__a_served_catalog_and_its_assets_are_named_a_local_one_is_not(
    demo: Path,
) -> None:
    with serve_directory(demo.parent) as url:
        named = StacCatalogSource().plain_http(demo_config(f"{url}/catalog.json"))
    assert named == {url}
    assert StacCatalogSource().plain_http(demo_config(str(demo))) == set()
