"""A whole export from a STAC search API through the command line, in process: the fake
Planetary Computer API on 127.0.0.1, with signing; the token stays out of output, logs,
Prefect's records and the store, also when reads fail."""

import logging
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from odc.geo.geom import BoundingBox
from prefect.logging.handlers import APILogWorker
from prefect.settings import get_current_settings

from embedders.spec import Status
from flows.cli import main
from tasks.store.layout import open_store
from tests.fakes import Fault, Request
from tests.stac_api_server import EPSG, RES, X0, Y0, Scene, serve_stac_api, signature

SIZE = 256  # px: 2.56 km a side, room for a few 32 px patches 400 m apart


def inner_bbox() -> str:
    """A --bbox inside the scenes, more than half a patch (160 m) from their edges."""
    margin = 400.0
    inner = BoundingBox(
        X0 + margin, Y0 - SIZE * RES + margin, X0 + SIZE * RES - margin, Y0 - margin,
        crs=f"EPSG:{EPSG}",
    ).to_crs("EPSG:4326")  # fmt: skip
    return ",".join(f"{v:.6f}" for v in inner)


def flush_prefect_logs() -> None:
    """Send the logs Prefect still holds to its API (it sends them in batches)."""
    APILogWorker.drain_all(timeout=30)


def prefect_files() -> list[Path]:
    """The folders of what Prefect keeps: its home (settings, result storage) and the
    database of the API this session's flows use (tests/flows/conftest.py)."""
    settings = get_current_settings()
    database = str(settings.server.database.connection_url.get_secret_value())
    return [Path(settings.home), Path(database.split("///", 1)[1]).parent]


def test_export__from_a_signed_stac_api_every_point_is_ok(tmp_path: Path, capfd) -> None:
    scenes = [
        Scene("old", 2, size=SIZE),
        Scene("new", 9, baseline="05.00", add_dn=1000, delta=200, size=SIZE),
    ]
    bbox = inner_bbox()
    out, work = tmp_path / "e.zarr", tmp_path / "work"
    with serve_stac_api(tmp_path / "api", scenes, style="planetary-computer") as api:
        code = main([
            "--source", "stac-api", "--stac-url", api.url, "--stac-signing", "planetary-computer",
            "--bbox", bbox, "--spacing", "400", "--patch-size", "32", "--chunk-size", "4",
            "--start", "2021-06-01", "--end", "2021-06-30",
            "--models", "ssl4eo_resnet18_rgb", "--weights", "random",
            "--work-dir", str(work), "--out", str(out),
        ])  # fmt: skip
        token = api.token
        signed_reads = [r for r in api.log if ".tif" in r.path]
    captured = capfd.readouterr()
    assert code == 0, captured.err[-3000:]
    ds = open_store(str(out))
    status = ds["ssl4eo_resnet18_rgb_status"].values
    assert status.size >= 4 and (status == Status.OK).all()
    assert np.isfinite(ds["ssl4eo_resnet18_rgb"].values).all()
    assert signed_reads and all(r.path.endswith(f"?{token}") for r in signed_reads)
    secret = signature(token).encode()
    assert secret not in (captured.out + captured.err).encode()
    for folder in (out, work):
        for path in folder.rglob("*"):
            assert not path.is_file() or secret not in path.read_bytes(), path


def test_export__a_mislabelled_item_is_dropped_and_named_in_the_summary(
    tmp_path: Path, capfd
) -> None:
    bad = "S2B_33TWN_20210609_0_L2A"  # Earth Search says the offset is removed; it is not
    scenes = [
        Scene("old", 2, size=SIZE),
        Scene(bad, 9, baseline="05.09", flag=True, add_dn=1000, size=SIZE),
    ]
    centre = BoundingBox(X0 + 1200, Y0 - 1400, X0 + 1400, Y0 - 1200, crs=f"EPSG:{EPSG}").to_crs(
        "EPSG:4326"
    )
    bbox = ",".join(f"{v:.6f}" for v in centre)
    out, work = tmp_path / "e.zarr", tmp_path / "work"
    with serve_stac_api(tmp_path / "api", scenes, style="earth-search") as api:
        code = main([
            "--source", "stac-api", "--stac-url", api.url, "--stac-signing", "none",
            "--bbox", bbox, "--spacing", "200", "--patch-size", "32",
            "--start", "2021-06-01", "--end", "2021-06-30",
            "--models", "ssl4eo_resnet18_rgb", "--weights", "random",
            "--work-dir", str(work), "--out", str(out),
        ])  # fmt: skip
    captured = capfd.readouterr()
    assert code == 0, captured.err[-3000:]  # every point keeps the other date
    line = next(x for x in captured.out.splitlines() if x.startswith("imagery item dropped"))
    assert bad in line and "earthsearch:boa_offset_applied true" in line and "floor" in line


def test_export__a_signed_read_that_fails_leaks_the_token_nowhere(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Reads of signed URLs fail (403 for one scene's COGs, as an expired token gets): what the
    run prints, logs (every logger, Prefect's among them), and keeps (Prefect's database and
    result storage, the store, the work directory) holds no part of the token's signature."""
    scenes = [Scene("good", 2, size=SIZE), Scene("bad", 9, size=SIZE)]

    def expired(request: Request) -> Fault:  # the check reads "good", the first item found
        return 403 if "/blobs/bad/" in request.path else None

    out, work = tmp_path / "e.zarr", tmp_path / "work"
    caplog.set_level(logging.DEBUG)
    with serve_stac_api(tmp_path / "api", scenes, fault=expired) as api:
        code = main([
            "--source", "stac-api", "--stac-url", api.url, "--stac-signing", "planetary-computer",
            "--bbox", inner_bbox(),
            "--spacing", "400", "--patch-size", "32", "--chunk-size", "4",
            "--start", "2021-06-01", "--end", "2021-06-30", "--models", "ssl4eo_resnet18_rgb",
            "--weights", "random", "--work-dir", str(work), "--out", str(out),
        ])  # fmt: skip
        refused = [r for r in api.log if "/blobs/bad/" in r.path]
    flush_prefect_logs()
    captured = capfd.readouterr()
    assert code == 1, captured.err[-3000:]
    assert refused and all(signature(api.token) in r.path for r in refused)  # it was sent
    assert "?<redacted>" in captured.err  # the failure is said, its URL without the token
    secrets = {signature(api.token), unquote(signature(api.token))}
    places = {
        "stdout": captured.out, "stderr": captured.err,
        **{f"log {r.name} {r.levelname}": f"{r.getMessage()} {r.exc_text}" for r in caplog.records},
    }  # fmt: skip
    for folder in [out, work, *prefect_files()]:
        for path in folder.rglob("*"):
            if path.is_file():
                places[str(path)] = path.read_bytes().decode("utf-8", "replace")
    leaks = [f"{where}: ...{text[text.find(s) - 150 :][:300]}" for where, text in places.items()
             for s in secrets if s in text]  # fmt: skip
    assert not leaks, "\n".join(leaks)


def test_export__an_image_host_that_does_not_resolve_is_refused_before_the_store(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The API answers, its COGs are on a host that does not resolve: exit 2 with one line
    naming the host, before the store is laid out (not minutes of retries, then exit 1)."""
    out, work = tmp_path / "e.zarr", tmp_path / "work"
    with serve_stac_api(
        tmp_path / "api", [Scene("a", 2, size=SIZE)], style="earth-search",
        assets="http://cogs.nowhere.invalid",
    ) as api:  # fmt: skip
        code = main([
            "--source", "stac-api", "--stac-url", api.url, "--bbox", inner_bbox(),
            "--spacing", "400", "--patch-size", "32", "--start", "2021-06-01",
            "--end", "2021-06-30", "--models", "ssl4eo_resnet18_rgb", "--weights", "random",
            "--work-dir", str(work), "--out", str(out),
        ])  # fmt: skip
    err = capfd.readouterr().err
    assert code == 2, err[-3000:]
    assert len(err.strip().splitlines()) == 1 and err.startswith("swath: error:"), err
    assert "the image host cogs.nowhere.invalid cannot be reached" in err
    assert not out.exists()
