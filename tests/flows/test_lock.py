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


def test_lock__the_lock_file_lies_beside_the_store_while_held_and_goes_with_its_holder(
    tmp_path: Path,
) -> None:
    """A file:// URL is the local store it names: locked beside it (not in the work dir). The
    holder removes the file while still holding it, so no `<store>.lock` outlives an export;
    a second holder afterwards makes and locks a new one."""
    from tasks.store.locks import StoreBusy, writer_lock

    store, work = tmp_path / "e.zarr", tmp_path / "work"
    beside = tmp_path / "e.zarr.lock"
    with writer_lock(f"file://{store}", wait=False, lock_dir=str(work / "locks")):
        assert beside.is_file()
        with pytest.raises(StoreBusy), writer_lock(str(store), wait=False, lock_dir=str(work)):
            pass
    assert not beside.exists() and not work.exists()
    with writer_lock(str(store), wait=False, lock_dir=str(work)):
        assert beside.is_file()
    assert not beside.exists()


def test_lock__a_waiter_on_a_removed_lock_file_locks_the_new_one(tmp_path: Path) -> None:
    """The holder removes its lock file as it lets go; one that opened the old file and waited
    must not hold a lock on a file no longer there while a third process locks a new one."""
    import fcntl

    from tasks.store.locks import _locked

    path = str(tmp_path / "e.zarr.lock")
    old = open(path, "a+")  # noqa: SIM115 - the first holder's file, removed as it lets go
    fcntl.flock(old, fcntl.LOCK_EX)
    os.remove(path)
    fcntl.flock(old, fcntl.LOCK_UN)
    held = _locked(path, "e.zarr", wait=False)  # the waiter: it must lock the file at `path`
    try:
        assert os.fstat(held.fileno()).st_ino == os.stat(path).st_ino
    finally:
        held.close()
        old.close()
