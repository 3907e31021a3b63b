"""One writer per real store: the writer lock is keyed on where the store really is, so a
second export that names the same store another way (through a symbolic link, or a path
with `..` past a linked folder) is refused, not let in beside the first."""

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.waiting import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[2]


def through_a_link(tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "real").mkdir()
    store = tmp_path / "real" / "e.zarr"
    (tmp_path / "link.zarr").symlink_to(store)  # dangling until the first export makes it
    return store, str(tmp_path / "link.zarr")


def through_dot_dot(tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "deep" / "x").mkdir(parents=True)
    (tmp_path / "sub").symlink_to(tmp_path / "deep" / "x")
    # sub/.. is deep (the link's parent), not tmp_path: the same store as deep/e.zarr
    return tmp_path / "deep" / "e.zarr", f"{tmp_path}/sub/../e.zarr"


@pytest.mark.slow
@pytest.mark.parametrize("other_name", [through_a_link, through_dot_dot], ids=["link", "dotdot"])
def test_lock__two_exports_of_one_store_by_two_names_0_2_s_apart_one_is_refused(
    tmp_path, demo_catalog_dir, other_name: Callable[[Path], tuple[Path, str]]
):
    store, other = other_name(tmp_path)

    def start(out: str) -> subprocess.Popen[str]:
        argv = [
            sys.executable, "-m", "flows.export",
            "--catalog", str(demo_catalog_dir / "catalog.json"), "--out", out,
            "--work-dir", str(tmp_path / "work"), "--models", "ssl4eo_resnet18_rgb",
            "--weights", "random", "--chunk-size", "8",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        return subprocess.Popen(
            argv, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

    first = start(str(store))
    time.sleep(0.2)
    second = start(other)
    outcomes = [p.communicate(timeout=HANG_GUARD_S) for p in (first, second)]
    codes = [first.returncode, second.returncode]
    assert sorted(codes) == [0, 2], [err[-1500:] for _, err in outcomes]
    refused = outcomes[codes.index(2)][1]
    assert "another export is writing" in refused and str(store) in refused, refused
    assert (store / "zarr.json").is_file(), "the store is where the path really leads"
    assert not (tmp_path / "e.zarr").exists(), "a `..` was taken lexically"
    assert not list(tmp_path.rglob("*.creating-*")), "a staging store was left behind"
