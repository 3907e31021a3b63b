"""Exit 2 as a newcomer meets it: a refusal that needs neither a model nor a server comes
before torch and Prefect are imported (seconds, not a minute), and no refusal leaves
anything behind in the out or work folder (no lock file, no plan, no demo catalog, no
store). Each case runs the command line in a process of its own, which says at the end
whether torch and Prefect were imported."""

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.waiting import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[2]

RUN = """
import json, sys
from flows.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "torch": "torch" in sys.modules,
                  "prefect": "prefect" in sys.modules}))
"""


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens there once the block ends


def _file(path: Path) -> Path:
    path.write_text("not a folder\n")
    return path


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# case -> (flags given the test's folder, the message, whether it may import torch: it
# needs a model or a device to know)
CASES: dict[str, tuple[Callable[[Path], list[str]], str, bool]] = {
    "missing-catalog": (
        lambda t: ["--catalog", str(t / "nowhere" / "catalog.json")],
        r"reading the STAC catalog .*nowhere/catalog.json",
        False,
    ),
    "missing-region-file": (
        lambda t: ["--region", str(t / "nowhere.geojson")],
        r"GeoJSON file .*nowhere.geojson does not exist",
        False,
    ),
    "out-is-a-file": (
        lambda t: ["--out", str(_file(t / "notes.txt"))],
        r"notes.txt is a file, not a swath store",
        False,
    ),
    "out-under-a-file": (
        lambda t: ["--out", str(_file(t / "notes.txt") / "e.zarr")],
        r"--out .*notes.txt/e.zarr: .*notes.txt is a file, not a folder",
        False,
    ),
    "work-dir-is-a-file": (
        lambda t: ["--work-dir", str(_file(t / "work.txt"))],
        r"--work-dir .*work.txt is a file, not a folder",
        False,
    ),
    "work-dir-under-a-file": (
        lambda t: ["--work-dir", str(_file(t / "work.txt") / "w")],
        r"--work-dir .*work.txt/w is under .*work.txt, which is a file, not a folder",
        False,
    ),
    "stac-api-offline": (
        lambda t: ["--source", "stac-api", "--stac-url", f"http://127.0.0.1:{_closed_port()}/v1"],
        r"cannot connect .*check --stac-url",
        False,
    ),
    "tessera-store-offline": (
        lambda t: [
            "--models",
            "tessera,ssl4eo_resnet18_rgb",
            "--tessera-store",
            f"http://127.0.0.1:{_closed_port()}/store",
        ],
        r"cannot open the Tessera store",
        False,
    ),
    "sensor-not-in-the-catalog": (
        lambda t: ["--models", "dofa_base_s1"],  # the demo catalog holds Sentinel-2 only
        r"no item in collection 'sentinel-1-rtc' \(sentinel-1\); its collections are "
        r"\['sentinel-2-l2a'\]: give a catalog that holds sentinel-1 items, or choose models",
        False,
    ),
    "orbit-pass-without-sentinel-1": (  # it was ignored: the run read both passes' scenes
        lambda t: ["--orbit-pass", "ascending"],
        r"--orbit-pass ascending is for Sentinel-1, and no model of this run reads Sentinel-1 "
        r"\(ssl4eo_resnet18_rgb\); leave --orbit-pass out, or add a model that reads it to "
        r"--models: (\w+, )*dofa_base_s1",
        False,
    ),
    "fp16-on-the-cpu": (
        lambda t: ["--precision", "fp16", "--device", "cpu"],
        r"--precision fp16 needs a CUDA device, and --device is cpu",
        False,
    ),
    "dask-nobody-answers": (
        lambda t: ["--runner", "dask", "--dask-address", f"tcp://127.0.0.1:{_closed_port()}"],
        r"no Dask scheduler answers there",
        False,
    ),
    # Past the sources' checks (the demo catalog is built for them): the device needs torch.
    "cuda-without-a-gpu": (lambda t: ["--device", "cuda"], r"--device cuda", True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_refusal__before_torch_and_prefect_and_nothing_left(tmp_path: Path, case: str) -> None:
    if case == "cuda-without-a-gpu":
        pytest.importorskip("torch")
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a CUDA device")
    flags, message, needs_torch = CASES[case]
    argv = flags(tmp_path)
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "e.zarr")]
    if "--work-dir" not in argv:
        argv += ["--work-dir", str(tmp_path / "work")]
    if "--models" not in argv:
        argv += ["--models", "ssl4eo_resnet18_rgb"]
    argv += ["--weights", "random"]
    before = _tree(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", RUN, *argv],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["code"] == 2, done.stderr[-2000:]
    assert done.stderr.startswith("swath: error: "), done.stderr[-2000:]
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr[-2000:]
    assert re.search(message, done.stderr), done.stderr
    assert not report["prefect"], "Prefect was imported before the refusal"
    if not needs_torch:
        assert not report["torch"], "torch was imported before the refusal"
    assert _tree(tmp_path) == before, "the refusal left something behind"


def test_refusal__a_store_of_another_export_leaves_no_lock_and_no_new_plan(
    tmp_path: Path, demo_catalog_dir: Path
) -> None:
    """Refused under the writer lock (the store holds another export): the lock file goes
    with the process that took it, and the plan this run made is removed again."""
    out, work = tmp_path / "e.zarr", tmp_path / "work"
    common = ["--catalog", str(demo_catalog_dir / "catalog.json"), "--out", str(out),
              "--work-dir", str(work), "--weights", "random", "--chunk-size", "16"]  # fmt: skip
    first = subprocess.run(
        [sys.executable, "-c", RUN, *common, "--models", "ssl4eo_resnet18_rgb"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=HANG_GUARD_S,
    )  # fmt: skip
    assert json.loads(first.stdout.strip().splitlines()[-1])["code"] == 0, first.stderr[-2000:]
    assert not (tmp_path / "e.zarr.lock").exists(), "the lock file outlived its export"
    before = _tree(tmp_path)
    again = subprocess.run(
        [sys.executable, "-c", RUN, *common, "--models", "ssl4eo_resnet18_rgb",
         "--spacing", "120"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=HANG_GUARD_S,
    )  # fmt: skip
    assert json.loads(again.stdout.strip().splitlines()[-1])["code"] == 2, again.stderr[-2000:]
    assert again.stderr.startswith("swath: error: "), again.stderr
    assert _tree(tmp_path) == before, "the refusal left something behind"


# case -> (the flow's parameters as the UI's form or the Python API gives them, the form's
# words the Failed message says): tasks/-level refusals, and the orbit pass no model reads
FORM_CASES: dict[str, tuple[Callable[[], dict], str]] = {
    "stac-api-offline": (
        lambda: {"source": "stac-api", "stac_url": f"http://127.0.0.1:{_closed_port()}/v1"},
        "check imagery › STAC API URL (stac-api): the API's root URL",
    ),
    "stac-api-without-url": (
        lambda: {"source": "stac-api"},
        "imagery › Imagery source: stac-api needs imagery › STAC API URL (stac-api)",
    ),
    "orbit-pass-without-sentinel-1": (
        lambda: {"orbit_pass": "descending"},
        "imagery › Orbit pass (Sentinel-1): descending is for Sentinel-1, and no model of this "
        "run reads Sentinel-1 (ssl4eo_resnet18_rgb); leave imagery › Orbit pass (Sentinel-1) "
        "out, or add a model that reads it to inference › Models: ",
    ),
}


@pytest.mark.parametrize("case", list(FORM_CASES))
def test_refusal__a_run_from_the_form_ends_failed_naming_the_forms_fields(
    tmp_path: Path, case: str
) -> None:
    """Issue 22: the UI's run (the Python API's too) is refused in the form's words, not the
    command line's flags, also where tasks/ words the refusal; nothing is left behind."""
    from flows.export import export

    imagery, words = FORM_CASES[case]
    before = _tree(tmp_path)
    state = export(
        imagery=imagery(),
        inference={"models": ["ssl4eo_resnet18_rgb"], "weights": "random"},
        output={"store": str(tmp_path / "e.zarr"), "work_dir": str(tmp_path / "work")},
        return_state=True,
    )
    assert state.is_failed()
    assert words in (state.message or ""), state.message
    assert not re.search(r"(?<![\w-])--[a-z]", state.message or ""), state.message
    assert _tree(tmp_path) == before, "the refusal left something behind"


# What a newcomer reads and types: the help, a list with spaces, a box in lat,lon order, the
# line after a run where nothing had data.


def test_help__every_flag_says_what_it_is_and_the_exit_codes_are_named() -> None:
    from flows.flags import parser

    p = parser()
    bare = [a.option_strings for a in p._actions if a.option_strings != ["-h", "--help"]]
    missing = [o for a, o in zip(p._actions[1:], bare, strict=True) if not (a.help or "").strip()]
    assert not missing, f"flags without help: {missing}"
    for code in ("0 every point", "1 some points", "2 bad input", "130", "143"):
        assert code in (p.epilog or ""), code


def test_models__a_list_written_with_spaces_after_its_commas_is_one_list() -> None:
    from flows import flags

    for typed in (["dofa_base,", "ssl4eo_resnet18_rgb"], ["dofa_base", ",ssl4eo_resnet18_rgb"]):
        argv = flags.glue_negative_values(["--models", *typed, "--spacing", "500"])
        params = flags.params(flags.parser().parse_args(argv))
        assert tuple(params["inference"].models) == ("dofa_base", "ssl4eo_resnet18_rgb")


def test_bbox__lat_lon_order_is_warned_of_with_the_box_it_probably_meant(capsys, tmp_path):
    from flows.cli import main

    swapped = "-47.86,-67.66,-47.84,-67.64"  # the demo's box, latitude first
    code = main(["--dry-run", "--bbox", swapped, "--spacing", "500",
                 "--out", str(tmp_path / "e.zarr"), "--work-dir", str(tmp_path / "w")])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "outside the latitudes Sentinel-2 images systematically" in out
    assert "give --bbox -67.66,-47.86,-67.64,-47.84" in out
    main(["--dry-run", "--bbox", "-67.66,-47.86,-67.64,-47.84", "--spacing", "500",
          "--out", str(tmp_path / "e.zarr"), "--work-dir", str(tmp_path / "w")])  # fmt: skip
    assert "lat,lon" not in capsys.readouterr().out, "the right order is not warned of"


def test_summary__no_point_with_data_names_the_likeliest_causes() -> None:
    from flows.naming import named_as
    from flows.summary import nothing_ok_line

    def summary(**status: int) -> dict:
        full = {"ok": 0, "failed": 0, "nodata": 0, "pending": 0} | status
        return {"points": 4, "models": {"m": {"status": full}}}

    line = nothing_ok_line(summary(nodata=4))  # the UI's run: the form's fields
    assert line and "imagery › Max cloud cover (%)" in line and "axes swapped" in line
    assert "--" not in line
    with named_as("flags"):  # the command line's: its flags
        line = nothing_ok_line(summary(nodata=4))
    assert line and "--max-cloud-cover" in line and "--start" in line
    assert nothing_ok_line(summary(ok=1, nodata=3)) is None
    assert nothing_ok_line(summary(failed=4)) is None


def _gappy_summary() -> dict:
    """A run's summary: 7 points of m not ok, for two reasons; n all ok."""
    none = {"ok": 0, "failed": 0, "nodata": 0, "pending": 0}
    far = "no sentinel-2-l2a item of cloud cover 80% or less between 2026-11-01 and 2026-11-30"
    return {
        "store": "/data/e.zarr", "window": ["2026-11-01", "2026-11-30"], "points": 9,
        "chunks": 2, "seconds": 1.5, "unprotected": [],
        "imagery": {"fetches": 2, "requests": 0, "bytes": 0, "retries": 0},
        "models": {
            "m": {
                "status": none | {"ok": 2, "nodata": 5, "failed": 2},
                "reasons": [
                    {"status": "nodata", "reason": far, "points": 5,
                     "first": ["32719-1-1", "32719-1-2", "32719-1-3"]},
                    {"status": "failed", "reason": "ValueError: boom", "points": 2,
                     "first": ["32719-2-1", "32719-2-2"]},
                ],
                "weights": "pretrained w1 (cached in /cache)", "dtype": "float32",
                "warning": None,
            },
            "n": {"status": none | {"ok": 9}, "reasons": [], "weights": "random seed=0",
                  "dtype": "float32", "warning": "random"},
        },
    }  # fmt: skip


def test_summary__a_failed_runs_message_says_why_with_the_counts() -> None:
    from flows.summary import gaps_message

    message = gaps_message(_gappy_summary())
    assert message.startswith("not every point is ok (m: ok 2, failed 2, nodata 5; n: ok 9); ")
    assert "m: 5 points no data: no sentinel-2-l2a item of cloud cover 80% or less" in message
    assert "(and 1 other reason(s))" in message


def test_summary__the_artifact_lists_the_reasons_grouped_with_their_first_points() -> None:
    from flows.summary import summary_markdown

    text = summary_markdown(_gappy_summary())
    assert "### Why points are not ok" in text
    assert (
        "- 5 points no data: no sentinel-2-l2a item of cloud cover 80% or less between "
        "2026-11-01 and 2026-11-30; first: `32719-1-1`, `32719-1-2`, `32719-1-3`, ..."
    ) in text
    assert "- 2 points failed: ValueError: boom; first: `32719-2-1`, `32719-2-2`\n" in text
    assert "- m: cached in /cache\n" in text  # the weights note, not "- m: (cached ..."
    bullets = [line for line in text.splitlines() if line.startswith("- ")]
    assert bullets and not any(": (" in b or b.startswith("- (") for b in bullets), bullets


def test_inspect__time_without_patch_is_refused_not_ignored(capsys, tmp_path):
    from flows.inspect import main as inspect

    assert inspect([str(tmp_path / "e.zarr"), "--time", "2020-01-01"]) == 2
    assert "--time is for --patch POINT_ID" in capsys.readouterr().err


def test_dask__the_local_cluster_is_quiet_without_verbose(
    tmp_path: Path, demo_catalog_dir: Path
) -> None:
    """Dask's scheduler, nanny and worker log lines (about 70 INFO lines a run, "Worker
    process ... was killed by signal 9" among them) stay off unless --verbose."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_LOGGING", "DASK_"))}
    done = subprocess.run(
        [sys.executable, "-m", "flows.export", "--runner", "dask",
         "--catalog", str(demo_catalog_dir / "catalog.json"), "--out", str(tmp_path / "e.zarr"),
         "--work-dir", str(tmp_path / "work"), "--models", "ssl4eo_resnet18_rgb",
         "--weights", "random"],
        cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=HANG_GUARD_S,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "distributed." not in out, out[-3000:]
