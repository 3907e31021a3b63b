"""A test run leaves no temporary space behind but that of its failed tests: the session's
Prefect home and torch cache (`swath-tests-*`) go at its end, and a passed test's tmp_path
goes with it (a run's tmp_path folders used to reach 4.6 GB, three runs kept)."""

import subprocess
import sys
from pathlib import Path

from tests.waiting import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import os


def test_passes(tmp_path):
    (tmp_path / "big").write_bytes(b"x" * 1000)
    assert os.path.basename(os.environ["PREFECT_HOME"]) == "prefect"


def test_fails(tmp_path):
    (tmp_path / "kept").write_text("for the post-mortem")
    assert False
"""


def test_temp_space__a_run_removes_its_home_and_the_folders_of_passed_tests(tmp_path):
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "test_probe.py").write_text(PROBE)
    temp = tmp_path / "temp"  # the run's TMPDIR: all it leaves is found here
    temp.mkdir()
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT), str(tmp_path / "probe")],
        cwd=ROOT, env={"PATH": "/usr/bin:/bin", "TMPDIR": str(temp)}, capture_output=True,
        text=True, timeout=HANG_GUARD_S,
    )  # fmt: skip
    assert "1 failed, 1 passed" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]
    left = sorted(str(p.relative_to(temp)) for p in temp.rglob("*"))
    assert not [p for p in left if "swath-tests-" in p], left
    assert not [p for p in left if p.endswith("/big")], left
    assert [p for p in left if p.endswith("/kept")], left
