"""`python -m flows.export`: bad input gets one clear line, exit 2, and nothing is written."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from flows.cli import clock_text, main
from tests.waiting import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "e.zarr"


def run_main(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.err


def polygon_file(tmp_path: Path, obj: object) -> str:
    path = tmp_path / "region.geojson"
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bbox", "-67.62,-47.86,-67.66,-47.84"], r"west \(-67.62\) is not less than east"),
        (["--bbox", "-67.66,-97,-67.62,-47.84"], "latitude out of range"),
        (["--spacing", "0"], r"invalid --spacing 0.0: .*greater than 0"),
        (["--spacing", "-250"], r"invalid --spacing -250.0: .*greater than 0"),
        (["--spacing", "nan"], r"invalid --spacing nan: not a finite number of metres"),
        (
            ["--models", "dofa_base,ssl4eo_resnet18_rgb,dofa_base"],
            "dofa_base named more than once; name each model once",
        ),
        (["--bbox", "-67.641,-47.851,-67.640,-47.850", "--spacing", "5000"], "yields no points"),
        (
            ["--models", "dofa_base,prithvi_9000"],
            "unknown model 'prithvi_9000'; known models: dofa_base",
        ),
        (
            ["--start", "2024-06-01", "--end", "2024-01-01"],
            "end date 2024-01-01 is before start date",
        ),
        (["--source", "stac-api"], "--source stac-api needs --stac-url"),
        (["--stac-url", "earth-search"], "--stac-url is for --source stac-api"),
        (["--source", "earthengine", "--catalog", "c.json"], "--catalog is for --source stac-c"),
        (["--max-cloud-cover", "120"], r"invalid --max-cloud-cover 120.0: .*less than or equal"),
    ],
)
def test_cli__bad_input_is_one_line_and_exit_2(capsys, out, argv, message):
    code, err = run_main(capsys, *argv, "--out", str(out))
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("swath: error: ")
    assert __import__("re").search(message, err), err
    assert not out.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{oops", "does not parse as JSON"),
        (
            {"type": "LineString", "coordinates": [[0, 0], [1, 1]]},
            "holds a LineString, not a polygon",
        ),
    ],
)
def test_cli__bad_geojson_is_refused(capsys, tmp_path, out, content, message):
    code, err = run_main(capsys, "--region", polygon_file(tmp_path, content), "--out", str(out))
    assert code == 2 and message in err
    assert not out.exists()


def test_cli__missing_geojson_file_is_named(capsys, tmp_path, out):
    code, err = run_main(capsys, "--region", str(tmp_path / "nope.geojson"), "--out", str(out))
    assert code == 2 and "nope.geojson does not exist" in err


def test_cli__an_output_path_holding_something_else_is_refused_and_kept(capsys, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    code, err = run_main(
        capsys,
        "--out",
        str(out),
        "--models",
        "ssl4eo_resnet18_rgb",
        "--weights",
        "random",
        "--work-dir",
        str(tmp_path / "work"),
    )
    assert code == 2 and "is not a swath store" in err and "choose another --out" in err
    assert sorted(os.listdir(out)) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "precious"


def test_cli__list_models_names_every_model(capsys):
    assert main(["--list-models"]) == 0
    text = capsys.readouterr().out
    for name in ("dofa_base", "ssl4eo_resnet18_rgb", "ssl4eo_resnet50_rgb"):
        assert name in text
    otf = next(line for line in text.split("\n") if line.startswith("tessera_otf "))
    assert otf.endswith("pixel series  sentinel-2-l2a B04,B02,B03,B08,B8A,B05,B06,B07,B11,B12 "
                        "+ sentinel-1 VV,VH; 12 monthly steps")  # fmt: skip


def test_cli__list_models_says_which_checkpoints_are_in_the_hub_cache(
    capsys, tmp_path, monkeypatch
):
    from embedders.registry import get_spec

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / get_spec("croma_base").checkpoint
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert main(["--list-models"]) == 0
    blocks = capsys.readouterr().out.split("\n")
    croma = blocks.index(next(b for b in blocks if b.startswith("croma_base ")))
    assert blocks[croma + 3].strip() == f"cached: yes, {cached}"
    dofa = blocks.index(next(b for b in blocks if b.startswith("dofa_large ")))
    assert blocks[dofa + 3].strip() == "cached: no"
    assert blocks[-2] == f"pretrained checkpoints are looked for in {cached.parent}"


def test_cli__bad_input_in_a_real_process_prints_no_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.export",
            "--bbox",
            "10,0,5,1",
            "--out",
            str(tmp_path / "o.zarr"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "west (10.0) is not less than east (5.0)" in proc.stderr
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--out", "/proc/x.zarr"], r"--out /proc/x.zarr cannot be written"),
        (["--out", "{tmp}/missing/e.zarr"], r"the folder .*missing does not exist"),
        (["--work-dir", "/proc/wd"], r"--work-dir /proc/wd cannot be written"),
    ],
)
def test_cli__unwritable_paths_are_refused_up_front(capsys, tmp_path, flags, message):
    flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    if "--out" not in flags:
        flags += ["--out", str(tmp_path / "e.zarr")]
    code, err = run_main(capsys, "--catalog", str(tmp_path / "catalog.json"), *flags)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "e.zarr").exists()


@pytest.mark.slow
def test_cli__two_exports_started_together_the_second_is_refused_at_once(
    tmp_path, demo_catalog_dir
):
    argv = [
        sys.executable, "-m", "flows.export", "--catalog", str(demo_catalog_dir / "catalog.json"),
        "--out", str(tmp_path / "e.zarr"), "--work-dir", str(tmp_path / "work"),
        "--models", "ssl4eo_resnet18_rgb", "--weights", "random",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert first.stdout is not None
        assert "points in" in first.stdout.readline()  # the first holds the lock from here on
        second = subprocess.run(
            argv, cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD_S, env=env
        )
        assert second.returncode == 2, second.stderr
        assert "another export is writing" in second.stderr and "--wait" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.wait(timeout=HANG_GUARD_S)
    assert first.returncode == 0


def _bad_catalog(tmp_path: Path, demo_catalog_dir: Path, kind: str) -> str:
    import shutil

    root = tmp_path / "catalog"
    shutil.copytree(demo_catalog_dir, root)
    item_path = root / "xrspatial-sentinel-2-sample" / "xrspatial-sentinel-2-sample.json"
    item = json.loads(item_path.read_text())
    if kind == "missing":
        return str(tmp_path / "nowhere" / "catalog.json")
    if kind == "not-stac":
        (root / "catalog.json").write_text(json.dumps({"hello": "world"}))
    elif kind == "no-band":
        del item["assets"]["B02"]
    elif kind == "asset-gone":
        for tif in root.glob("*/*.tif"):
            tif.unlink()
    item_path.write_text(json.dumps(item))
    return str(root / "catalog.json")


@pytest.mark.parametrize(
    ("kind", "flags", "message"),
    [
        ("missing", [], r"reading the STAC catalog .*nowhere/catalog.json"),
        ("not-stac", [], r"reading the STAC catalog"),
        ("collection", ["--collection", "landsat-c2-l2"], r"no item in collection 'landsat-c2-l2'"),
        ("no-band", [], r"B02"),
        ("asset-gone", [], r"reading the header of asset"),
    ],
)
def test_cli__a_bad_catalog_is_refused_before_anything_is_written(
    capsys, tmp_path, demo_catalog_dir, kind, flags, message
):
    catalog = _bad_catalog(tmp_path, demo_catalog_dir, kind)
    out, work = tmp_path / "e.zarr", tmp_path / "work"
    argv = ["--catalog", catalog, *flags, "--out", str(out), "--work-dir", str(work)]
    code, err = run_main(capsys, *argv, "--models", "dofa_base", "--weights", "random")
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert __import__("re").search(message, err), err
    assert not out.exists() and not (work / "inputs.zarr").exists()


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_cli__a_signal_stops_the_export_at_once_and_a_rerun_finishes(
    tmp_path, demo_catalog_dir, signum
):
    argv = [
        sys.executable, "-m", "flows.export", "--catalog", str(demo_catalog_dir / "catalog.json"),
        "--out", str(tmp_path / "e.zarr"), "--work-dir", str(tmp_path / "work"),
        "--models", "ssl4eo_resnet18_rgb", "--weights", "random", "--chunk-size", "8",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None and "points in" in proc.stdout.readline()
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)  # a hang guard, not a timing
    assert proc.returncode == 128 + signum
    assert f"stopped by {signal.Signals(signum).name}; the store is resumable" in err
    assert "Traceback" not in err
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left running: {alive}"
    again = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, env=env, timeout=HANG_GUARD_S
    )
    assert again.returncode == 0, again.stderr


@pytest.mark.slow
def test_cli__the_local_dask_cluster_shares_one_prefect_api(tmp_path, demo_catalog_dir):
    env = {
        k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_LOGGING_LEVEL")
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.export",
            "--runner",
            "dask",
            "--verbose",
            "--catalog",
            str(demo_catalog_dir / "catalog.json"),
            "--out",
            str(tmp_path / "e.zarr"),
            "--work-dir",
            str(tmp_path / "work"),
            "--models",
            "ssl4eo_resnet18_rgb",
            "--weights",
            "random",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        env={**env, "PYTHONUNBUFFERED": "1"},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    # One temporary Prefect server, this process's (swath's own, on a port it holds): no
    # worker starts one of Prefect's.
    assert out.count("Starting temporary server") == 0, out[-3000:]


def test_cli__the_flow_runs_the_job_the_command_line_resolved_and_reports_its_progress(
    capsys, tmp_path, demo_catalog_dir, monkeypatch
):
    """Planned, resolved and locked once, by the command line; the flow run exports that
    job and tells the command line's progress bar of each (chunk, product) written."""
    import flows.cli
    import flows.job

    resolved, heard = [], []

    def resolve_products(plan):
        resolved.append(plan.store)
        return real_resolve(plan)

    @contextlib.contextmanager
    def progress_bar(started, total):
        heard.append((0, total))
        yield flows.cli._Bar(lambda done, total: heard.append((done, total)))

    real_resolve = flows.job.resolve_products
    monkeypatch.setattr(flows.job, "resolve_products", resolve_products)
    monkeypatch.setattr(flows.cli, "_progress_bar", progress_bar)
    out = tmp_path / "e.zarr"
    code = main(["--catalog", str(demo_catalog_dir / "catalog.json"), "--out", str(out),
                 "--work-dir", str(tmp_path / "work"), "--models", "ssl4eo_resnet18_rgb",
                 "--weights", "random", "--chunk-size", "16"])  # fmt: skip
    assert code == 0, capsys.readouterr()
    assert resolved == [str(out)]
    assert heard and heard[-1][0] == heard[-1][1] > 0
    assert "ssl4eo_resnet18_rgb" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("elapsed", "left", "took", "text"),
    [
        (115.2, 10.4, None, "0:01:55 elapsed, about 0:00:10 left"),
        (115.2, None, None, "0:01:55 elapsed"),  # no rate yet (or the bar is full)
        (115.2, 0.4, None, "0:01:55 elapsed"),  # never "about 0:00:00 left"
        (0.0, 0.0, None, "0:00:00 elapsed"),
        (130.0, 0.2, 125.4, "in 0:02:05"),  # ended: the summary's duration
    ],
)
def test_cli__the_bar_clock_says_elapsed_and_left_only_while_something_is_left(
    elapsed, left, took, text
):
    assert clock_text(elapsed, left, took) == text


def test_cli__dry_run_says_what_an_export_would_do_and_writes_nothing(capsys, tmp_path):
    out, work = tmp_path / "e.zarr", tmp_path / "work"
    code = main(["--dry-run", "--out", str(out), "--work-dir", str(work), "--output", "grid"])
    text = capsys.readouterr().out
    assert code == 0
    assert "59 points, 2 chunks of up to 32" in text
    assert "1 chunk(s) per shard" in text
    assert "1 flow run, at most 10 task runs each (2 chunks x (1 fetch + 2 produce) + 2 " in text
    # dofa_base and ssl4eo_resnet18_rgb share one fetch of 6 bands: 59 x 6 x 64 x 64 x 4 bytes
    assert f"inputs fetched: {59 * 6 * 64 * 64 * 4 / 2**20:,.1f} MB" in text
    # grids: 768 x 4 x 4 (DOFA, 16 px cells) and 512 x 2 x 2 (ResNet, 32 px cells) per point
    per_window = 59 * (768 * 16 + 512 * 4) * 4 + 2 * 59 * 6
    assert f"store per window: {per_window / 2**20:,.1f} MB" in text
    assert not out.exists() and not work.exists()


def test_cli__dry_run_counts_child_runs_of_whole_write_blocks(capsys, tmp_path):
    out, work = tmp_path / "e.zarr", tmp_path / "work"
    code = main(["--dry-run", "--out", str(out), "--work-dir", str(work), "--chunk-size", "1",
                 "--chunks-per-run", "20"])  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0
    # 59 chunks in blocks of 14 (a quarter of them): 14, 14, 14, 14 + 3 chunks per child run
    assert "59 chunks of up to 1; 14 chunk(s) per shard (write block)" in text
    assert "1 flow run + 4 child runs, at most 55 task runs each (17 chunks x (1 fetch + " in text


def test_cli__dry_run_with_shards_none_writes_one_file_per_chunk(capsys, tmp_path):
    out, work = tmp_path / "e.zarr", tmp_path / "work"
    code = main(["--dry-run", "--out", str(out), "--work-dir", str(work), "--chunk-size", "1",
                 "--chunks-per-run", "20", "--shards", "none"])  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0
    assert "59 chunks of up to 1; no shards (one file per chunk and array)" in text
    assert (
        "1 flow run + 3 child runs, at most 100 task runs each (20 chunks x (1 fetch + 2 " in text
    )
    assert "+ 20 blocks x 2 write)" in text  # a write task per chunk: no two share a file


def test_cli__shards_flag_reaches_the_output_settings():
    from flows.flags import params, parser

    assert params(parser().parse_args([]))["output"].shards == "auto"
    assert params(parser().parse_args(["--shards", "none"]))["output"].shards == "none"
    assert "--shards {auto,none}" in parser().format_help()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--weights", "pretrained"], r"pretrained weights .* unavailable"),
        (["--device", "cuda"], r"--device cuda was asked for but torch sees no CUDA device"),
        (["--precision", "fp16"], r"fp16 needs a CUDA device"),
    ],
)
def test_cli__device_weights_and_precision_are_refused_before_the_demo_catalog_is_written(
    capsys, tmp_path, flags, message
):
    import torch

    if "cuda" in flags and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    out, work = tmp_path / "e.zarr", tmp_path / "work"
    code, err = run_main(capsys, *flags, "--models", "ssl4eo_resnet18_rgb", "--out", str(out),
                         "--work-dir", str(work))  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert __import__("re").search(message, err), err
    assert not out.exists() and not (work / "demo-catalog-v1").exists()


def test_cli__dry_run_imports_neither_torch_nor_prefect(tmp_path):
    """Sizing a continental export costs a plan, not a model library or a Prefect server."""
    import subprocess
    import sys

    code = (
        "import sys, runpy\n"
        f"sys.argv = ['flows.export', '--dry-run', '--out', {str(tmp_path / 'e.zarr')!r}]\n"
        "try:\n    runpy.run_module('flows.export', run_name='__main__')\n"
        "except SystemExit as e:\n    print('EXIT', e.code)\n"
        "print('LOADED', [m for m in ('torch', 'prefect', 'timm') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "dry run: 59 points" in out.stdout and "EXIT 0" in out.stdout, out.stdout + out.stderr
    assert "LOADED []" in out.stdout, out.stdout
    assert not (tmp_path / "e.zarr").exists()


def test_cli__a_run_without_imagery_says_why_and_names_the_flags(
    tmp_path: Path, served_demo, capsys
) -> None:
    """Issue 22: the reasons, grouped with their counts; the likeliest causes in flags (the
    flow runs in a thread of its own: it names settings as the command line does)."""
    code = main([
        "--catalog", served_demo.url, "--start", "2026-11-01", "--end", "2026-11-30",
        "--bbox", "-67.655,-47.858,-67.63,-47.850", "--spacing", "400", "--patch-size", "32",
        "--models", "ssl4eo_resnet18_rgb", "--weights", "random",
        "--out", str(tmp_path / "e.zarr"), "--work-dir", str(tmp_path / "work"),
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1, out
    assert re.search(
        r"swath: ssl4eo_resnet18_rgb: \d+ points no data: no sentinel-2-l2a item of cloud cover "
        r"80% or less between 2026-11-01 and 2026-11-30 covers its 32 px patch \(first: ",
        out,
    ), out
    assert "(--start, --end)" in out and "(--max-cloud-cover)" in out, out
    markdown = read_summary_artifact_markdown()
    assert "(--start, --end)" in markdown and "### Why points are not ok" in markdown


def read_summary_artifact_markdown() -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["swath-export-summary"]))
        )
    return str(max(found, key=lambda a: a.created).data)


def test_cli__a_reason_a_task_words_names_the_flags_and_the_forms_run_the_fields(
    tmp_path: Path, demo_catalog_dir: Path, capsys
) -> None:
    """Issue 22: a message built inside a task (a thread of Prefect's task runner, which runs
    in a copy of the flow's context) names settings as the run's reader does: the flags on
    the command line, the form's fields for a run of the UI or the Python API. The server
    refuses one band's reads (403) after the source's check has passed."""
    from flows.export import export
    from tests.fakes import serve_directory

    def refused(request) -> int | None:
        return 403 if request.path.endswith("/B03.tif") else None  # the check reads B04

    common = ["--spacing", "400", "--patch-size", "32", "--models", "ssl4eo_resnet18_rgb",
              "--weights", "random"]  # fmt: skip
    with serve_directory(demo_catalog_dir, fault=refused) as base:
        catalog = f"{base}/catalog.json"
        code = main([*common, "--catalog", catalog, "--out", str(tmp_path / "cli.zarr"),
                     "--work-dir", str(tmp_path / "w1")])  # fmt: skip
        said = capsys.readouterr()
        out = said.out + said.err
        state = export(
            region={"spacing_m": 400},
            imagery={"catalog": catalog, "patch_px": 32},
            inference={"models": ["ssl4eo_resnet18_rgb"], "weights": "random"},
            output={"store": str(tmp_path / "api.zarr"), "work_dir": str(tmp_path / "w2")},
            return_state=True,
        )
    assert code == 1, out
    assert "403" in out and "(Planetary Computer's: --stac-signing planetary-computer)" in out
    assert "›" not in out, out
    assert state.is_failed()
    message = state.message or ""
    assert "(Planetary Computer's: imagery › Asset URL signing (stac-api): planetary-computer)" in (
        message
    ), message
    assert not re.search(r"(?<![\w-])--[a-z]", message), message
