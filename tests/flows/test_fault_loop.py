"""Faults at random moments: SIGKILL the export's whole process tree at a seeded random
moment of its progress, sometimes damage a random chunk file of its store (delete or
truncate), rerun the same command to the end, and check that the store equals an
uninterrupted run's and verifies.

A moment is drawn as a point in the run's own progress (its k-th "written" line, or its
flow's start) plus a random delay, not as seconds from the start: how long a run takes to
start differs from machine to machine, and a kill drawn in seconds may land before any
chunk is done on every iteration."""

import os
import random
from pathlib import Path

import numpy as np
import pytest

from flows.cli import main
from flows.export import export
from flows.params import Imagery, Inference, Output, Region, Window
from tests.flows.test_kill_resume import BBOX, command, run_until, store_values

MODELS = ["ssl4eo_resnet18_rgb", "dofa_base"]  # as in test_kill_resume.command
# One kill-damage-rerun by default (seed 0's first draw kills after the 6th write and damages
# a done chunk), so the suite affords it; SWATH_FAULT_LOOP_ITERATIONS=20 runs the long loop.
ITERATIONS = int(os.environ.get("SWATH_FAULT_LOOP_ITERATIONS", "1"))
ARRAYS = ("", "_status", "_reason", "_valid_fraction", "_checksum")  # a model's, by suffix


def damage_a_done_chunk(store: Path, rng: random.Random) -> str | None:
    """Delete or truncate one file of a chunk marked done, in any of its model's arrays.
    What was done, if anything (None when no chunk is done yet)."""
    done = sorted(store.glob("*_status/c/0/*"))  # a status file exists once a chunk is done
    if not done:
        return None
    status = rng.choice(done)
    model, chunk = status.parts[-4].removesuffix("_status"), status.name
    files = []
    for suffix in ARRAYS:  # a chunk's file, or its files under c/0/<chunk>/ for 3-d arrays
        path = store / f"{model}{suffix}" / "c" / "0" / chunk
        files += [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    path = rng.choice(files)
    if rng.random() < 0.5:
        path.unlink()
        return f"deleted {path.relative_to(store)}"
    path.write_bytes(path.read_bytes()[: rng.randrange(path.stat().st_size)])
    return f"truncated {path.relative_to(store)}"


@pytest.mark.slow
def test_fault_loop__kills_and_damaged_files_at_random_end_in_the_clean_store(tmp_path):
    reference = export(
        region=Region(bbox=BBOX, spacing_m=400),
        window=Window(),
        imagery=Imagery(patch_px=32),
        inference=Inference(models=MODELS, weights="random", batch_size=3),
        output=Output(
            store=str(tmp_path / "reference.zarr"), work_dir=str(tmp_path / "ref-work"),
            chunk_size=2,
        ),
    )  # fmt: skip
    want = store_values(Path(reference["store"]))
    rng = random.Random(0)
    history = []
    for i in range(ITERATIONS):
        store, work = tmp_path / f"run{i}.zarr", tmp_path / f"work{i}"
        argv = command(store, work)
        # Drawn up front, so the draws do not depend on how far each run got. 10 chunk
        # writes in all (5 chunks x 2 models); k = 0 kills before the first.
        written, delay = rng.randint(0, 9), rng.uniform(0.0, 2.0)
        damage, damage_rng = rng.random() < 0.8, random.Random(rng.random())
        trigger = f"written {written}/" if written else "points in 5 chunks, window"
        code, _ = run_until(argv, trigger, delay)
        damaged = damage_a_done_chunk(store, damage_rng) if damage else None
        history.append(f"run {i}: killed {delay:.1f} s after {trigger!r} (exit {code}), {damaged}")
        code, out = run_until(argv, None)
        assert code == 0, "\n".join(history) + "\n" + out[-3000:]
        redone = [line.split(" - ")[-1] for line in out.splitlines() if "redoing them" in line]
        history.append(f"  rerun: {'; '.join(redone) or 'no damaged chunk'}")
        got = store_values(store)
        assert got.keys() == want.keys()
        for name in want:
            if name.endswith("_checksum"):
                continue  # checked below: they stand for the values, which may differ by 1e-6
            if want[name].dtype.kind == "f":
                np.testing.assert_allclose(got[name], want[name], rtol=1e-5, err_msg=name)
            else:
                np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        assert main(["--verify", "--out", str(store)]) == 0, "\n".join(history)
    print("\n".join(history))
    assert any("redoing them" in h for h in history), "the seed damaged no done chunk"
