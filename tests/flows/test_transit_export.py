"""Imagery in transit, through the whole export: plain-http sources named in the summary,
GDAL's retries counted there (and kept off the terminal), a catalog cut short once read
again, and a catalog nobody answers refused before anything is written. The flow runs for
real under the session's Prefect test server; the demo catalog is served on 127.0.0.1."""

import socket

from flows.cli import main
from flows.export import export
from flows.summary import imagery_line
from tests.fakes import Fault, Request, serve_directory
from tests.flows.test_export import params

ITEM = "xrspatial-sentinel-2-sample.json"


def test_summary__names_a_plain_http_source_as_unprotected(tmp_path, served_demo):
    summary = export(**params(tmp_path, served_demo.url))
    origin = served_demo.url.rsplit("/", 1)[0]
    assert summary["unprotected"] == [origin]


def test_summary__a_local_catalog_is_not_named(tmp_path, demo_catalog_dir):
    summary = export(**params(tmp_path, str(demo_catalog_dir / "catalog.json")))
    assert summary["unprotected"] == []


def test_summary__counts_the_requests_gdal_retried(tmp_path, demo_catalog_dir, capsys):
    """GDAL's 'HTTP error code: 503 ... Retrying' lines used to reach the terminal while the
    summary said 0 retried attempts."""
    seen = {"n": 0}

    def every_other_range(request: Request) -> Fault:
        if request.path.endswith(".tif") and request.range:
            seen["n"] += 1
            return 503 if seen["n"] % 2 else None
        return None

    with serve_directory(demo_catalog_dir, fault=every_other_range) as url:
        summary = export(**params(tmp_path, f"{url}/catalog.json"))
    assert summary["all_ok"] is True
    retried = summary["imagery"]["gdal_retries"]
    assert retried > 0
    assert f"({retried} of a request, by GDAL)" in imagery_line(summary["imagery"])
    captured = capsys.readouterr()
    assert "Retrying" not in captured.err + captured.out


def test_check__a_catalog_item_cut_short_once_is_read_again_not_refused(tmp_path, demo_catalog_dir):
    """A body cut short used to be a permanent error: the run was refused."""
    cut = {"left": 1}

    def once(request: Request) -> Fault:
        if request.path.endswith(ITEM) and cut["left"]:
            cut["left"] -= 1
            return "short"
        return None

    with serve_directory(demo_catalog_dir, fault=once) as url:
        summary = export(**params(tmp_path, f"{url}/catalog.json"))
    assert cut["left"] == 0, "the fault was never hit"
    assert summary["all_ok"] is True


def test_cli__a_catalog_url_nobody_answers_is_refused_before_anything_is_written(tmp_path, capsys):
    """It used to create the store, retry for minutes, and end with exit 1 and tracebacks."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    out = tmp_path / "e.zarr"
    code = main(
        ["--catalog", f"http://127.0.0.1:{port}/catalog.json", "--out", str(out),
         "--work-dir", str(tmp_path / "work"), "--models", "ssl4eo_resnet18_rgb",
         "--weights", "random"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "the connection was refused: nothing answers at that address" in err
    assert not out.exists() and not list(tmp_path.glob("*.creating-*"))
