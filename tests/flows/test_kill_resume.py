"""Kill the export's whole process tree with SIGKILL at several moments, rerun the same
command each time, and check that the final store equals an uninterrupted run's."""

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import xarray as xr

from flows.export import export
from flows.params import Imagery, Inference, Output, Region, Window
from tests.waiting import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[2]
BBOX = (-67.655, -47.858, -67.63, -47.850)  # 10 points at 400 m


def command(store: Path, work: Path) -> list[str]:
    return [
        sys.executable, "-m", "flows.export",
        "--bbox", ",".join(map(str, BBOX)), "--spacing", "400",
        "--models", "ssl4eo_resnet18_rgb,dofa_base", "--weights", "random",
        "--patch-size", "32", "--chunk-size", "2", "--batch-size", "3",
        "--out", str(store), "--work-dir", str(work),
        "--verbose",  # the kill moments are found in Prefect's log lines
    ]  # fmt: skip


def run_until(argv: list[str], trigger: str | None, delay_s: float = 0.0) -> tuple[int, str]:
    """Run `argv` in its own session; SIGKILL the whole group `delay_s` after a line containing
    `trigger` (None: let it finish). Returns the exit code and the output."""
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(proc, lines), daemon=True).start()
    output: list[str] = []
    deadline = time.monotonic() + HANG_GUARD_S
    while True:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            if time.monotonic() < deadline:
                continue
            os.killpg(proc.pid, signal.SIGKILL)
            awaited = f"a line with {trigger!r}" if trigger is not None else "its end"
            raise AssertionError(
                f"waited {HANG_GUARD_S:.0f} s for {awaited} from the export "
                f"(a hang guard); its output:\n{''.join(output)[-3000:]}"
            ) from None
        if line is None:
            break
        output.append(line)
        if trigger is not None and trigger in line:
            time.sleep(delay_s)
            os.killpg(proc.pid, signal.SIGKILL)
            break
    code = proc.wait()  # it has closed its output, or was killed
    return code, "".join(output)


def _pump(proc: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.put(line)
    lines.put(None)


def band_files(work: Path) -> dict[str, float]:
    return {
        str(p): p.stat().st_mtime_ns for p in (work / "inputs.zarr").rglob("c/*") if p.is_file()
    }


def store_values(store: Path) -> dict[str, np.ndarray]:
    with xr.open_zarr(store) as ds:
        return {k: ds[k].values for k in [*ds.data_vars, "point_id", "lon", "lat", "time"]}


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    """The same variables, floats to 1e-5 and everything else exactly."""
    assert got.keys() == want.keys()
    for name in want:
        if want[name].dtype.kind == "f":
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, err_msg=name)
        else:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_kill__resume_after_sigkill_at_several_moments_equals_an_uninterrupted_run(tmp_path):
    reference = export(
        region=Region(bbox=BBOX, spacing_m=400),
        window=Window(),
        imagery=Imagery(patch_px=32),
        inference=Inference(
            models=["ssl4eo_resnet18_rgb", "dofa_base"], weights="random", batch_size=3
        ),
        output=Output(
            store=str(tmp_path / "reference.zarr"), work_dir=str(tmp_path / "ref-work"),
            chunk_size=2,
        ),
    )  # fmt: skip
    store, work = tmp_path / "killed.zarr", tmp_path / "work"
    argv = command(store, work)
    moments = [
        ("points in", 0.0),  # before the flow starts: no store yet
        ("Beginning flow run", 1.5),  # while models load, prefetch starts, the store is laid out
        ("written 1/", 0.0),  # right after a chunk's done mark
        ("written 3/", 0.4),  # in the middle of the next writes
    ]
    for trigger, delay in moments:
        before = band_files(work) if work.exists() else {}
        code, out = run_until(argv, trigger, delay)
        assert code == -signal.SIGKILL, f"not killed at '{trigger}':\n{out[-3000:]}"
        after = band_files(work) if work.exists() else {}
        changed = [p for p, t in before.items() if after.get(p) != t]
        assert not changed, f"prefetched inputs were fetched again: {changed[:3]}"
    before = band_files(work)
    code, out = run_until(argv, None)
    assert code == 0, out[-3000:]
    assert all(band_files(work)[p] == t for p, t in before.items()), "inputs fetched again"
    assert_same(store_values(store), store_values(Path(reference["store"])))
