"""Bad input that used to end in a traceback, a hang or a silent choice: each is refused with
exit 2 and one line naming the problem and the fix, before anything is written."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import main
from tests.waiting import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[2]
Completed = subprocess.CompletedProcess[str]


def _file(tmp_path: Path, content: bytes | str, name: str = "region.geojson") -> str:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def _square(crs: str | None) -> str:
    ring = [[-67.66, -47.86], [-67.64, -47.86], [-67.64, -47.845], [-67.66, -47.86]]
    obj: dict[str, object] = {"type": "Polygon", "coordinates": [ring]}
    if crs:
        obj["crs"] = {"type": "name", "properties": {"name": crs}}
    return json.dumps(obj)


def _loop(tmp_path: Path) -> str:
    (tmp_path / "loop.zarr").symlink_to(tmp_path / "loop.zarr")
    return str(tmp_path / "loop.zarr")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed once the block ends: nothing listens there


CASES = {
    "binary-region": (
        lambda t: ["--region", _file(t, bytes(range(256)) * 4)],
        r"--region .*region.geojson is not a GeoJSON file: it is not UTF-8 text",
    ),
    "folder-region": (
        lambda t: ["--region", str(t)],
        r"--region .* is a folder, not a GeoJSON file",
    ),
    "empty-object-region": (
        lambda t: ["--region", _file(t, "{}")],
        r'has no "type" member, so it is no GeoJSON object; give a Polygon',
    ),
    "crs-3857": (
        lambda t: ["--region", _file(t, _square("urn:ogc:def:crs:EPSG::3857"))],
        r"declares its coordinates in urn:ogc:def:crs:EPSG::3857; .*reproject it",
    ),
    "long-out": (
        lambda t: ["--out", str(t / ("e" * 296 + ".zarr"))],
        r"--out: the name e+\.\.\. is 301 bytes long .*allows 255: choose a shorter name",
    ),
    "unknown-protocol": (
        lambda t: ["--out", "foo://bucket/e.zarr"],
        r"no filesystem serves the protocol 'foo://'",
    ),
    "s3-without-s3fs": (
        lambda t: ["--out", "s3://bucket/e.zarr"],
        r"writing to s3:// needs the s3fs package .*pip install s3fs",
    ),
    "symlink-loop": (
        lambda t: ["--out", _loop(t)],
        r"--out .*loop.zarr is a loop of symbolic links",
    ),
    "dates-past-the-time-axis": (
        lambda t: ["--start", "0001-01-01", "--end", "9999-12-31"],
        r"invalid --start 0001-01-01: .*outside the days the store's time axis holds",
    ),
    "previous-month-with-start": (
        lambda t: ["--previous-month", "--start", "2024-03-01"],
        r"--previous-month picks its own window, and --start another",
    ),
    "dask-address-without-dask": (
        lambda t: ["--dask-address", "tcp://127.0.0.1:8786"],
        r"--dask-address is for --runner dask",
    ),
    "dask-workers-with-an-address": (
        lambda t: ["--runner", "dask", "--dask-address", "tcp://h:1", "--dask-workers", "2"],
        r"the cluster at tcp://h:1 has its own workers: leave --dask-workers out",
    ),
    "dask-address-nobody-answers": (
        lambda t: ["--runner", "dask", "--dask-address", f"tcp://127.0.0.1:{_closed_port()}"],
        r"no Dask scheduler answers there",
    ),
    "dask-address-not-an-address": (
        lambda t: ["--runner", "dask", "--dask-address", "scheduler"],
        r"--dask-address scheduler is not a scheduler address; give tcp://host:port",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input__one_line_exit_2_and_nothing_written(capsys, tmp_path, case):
    flags, message = CASES[case]
    argv = flags(tmp_path)
    out, work = tmp_path / "e.zarr", tmp_path / "work"
    if "--out" not in argv:
        argv += ["--out", str(out)]
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main([*argv, "--work-dir", str(work), "--models", "ssl4eo_resnet18_rgb"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("swath: error: ") and len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "something was written"


def test_bad_input__a_geojson_crs_of_lon_lat_is_honoured(capsys, tmp_path):
    region = _file(tmp_path, _square("urn:ogc:def:crs:OGC:1.3:CRS84"))
    code = main(["--dry-run", "--region", region, "--out", str(tmp_path / "e.zarr")])
    assert code == 0, capsys.readouterr().err
    assert "points" in capsys.readouterr().out


def _run(
    tmp_path: Path, *argv: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.export", *argv, "--out", str(tmp_path / "e.zarr"),
         "--work-dir", str(tmp_path / "work")],
        cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD_S, env=env or dict(os.environ),
    )  # fmt: skip


def test_bad_input__a_local_cluster_of_no_workers_is_refused_not_waited_for(tmp_path):
    """It used to create the store and wait forever for a worker (the timeout guards that)."""
    proc = _run(tmp_path, "--runner", "dask", "--dask-workers", "0")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip() == (
        "swath: error: --dask-workers 0: a local cluster needs at least 1 worker; give "
        "--dask-workers 1 or more"
    )
    assert not (tmp_path / "e.zarr").exists() and not (tmp_path / "work").exists()


def test_bad_input__a_prefect_home_that_cannot_be_written_is_named(tmp_path):
    """It used to fail after the temporary server's startup timeout, without the cause."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = "/proc/swath-prefect-home"  # /proc takes no new folder, even as root
    proc = _run(tmp_path, "--models", "ssl4eo_resnet18_rgb", "--weights", "random", env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1, line
    assert line.startswith("swath: error: PREFECT_HOME /proc/swath-prefect-home cannot be written")
    assert "set PREFECT_HOME to a writable folder" in line
    assert not (tmp_path / "e.zarr").exists()


def _chattr(flag: str, path: Path) -> bool:
    """Set or clear the immutable attribute: a read-only store even for root (chmod is not)."""
    try:
        done = subprocess.run(["chattr", "-R", flag, str(path)], capture_output=True, timeout=60)
    except FileNotFoundError:
        return False
    return done.returncode == 0


def test_bad_input__a_read_only_store_is_refused_with_advice_that_works(
    capsys, tmp_path, served_demo
):
    """The advice used to be 'rerun the same command', which fails the same way."""
    from flows.export import export
    from tests.flows.test_export import params

    summary = export(**params(tmp_path, served_demo.url, models=["ssl4eo_resnet18_rgb"]))
    store = Path(summary["store"])
    (store / "ssl4eo_resnet18_rgb_status" / "c" / "0" / "0").unlink()  # one chunk to redo
    if not _chattr("+i", store):
        pytest.skip("chattr +i is not available here (it makes a store read-only for root)")
    capsys.readouterr()  # the first export's log
    try:
        code = main(
            ["--catalog", served_demo.url, "--bbox", "-67.655,-47.858,-67.63,-47.850",
             "--spacing", "400", "--patch-size", "32", "--chunk-size", "4", "--models",
             "ssl4eo_resnet18_rgb", "--weights", "random", "--batch-size", "4",
             "--out", str(store), "--work-dir", str(tmp_path / "work")]
        )  # fmt: skip
    finally:
        _chattr("-i", store)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"output store {store} cannot be written" in err
    assert "make the store writable" in err and "then run the same command" in err
