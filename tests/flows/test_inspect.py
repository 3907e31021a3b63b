"""`python -m flows.inspect`: a store's models, time entries and status counts; `--patch` writes
the true-colour patch a point got, from the work directory's inputs store."""

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from flows.inspect import PATCH_MIN_PX, NotFound, find_point, main, read_true_colour
from tasks.inputs import prefetch_chunk
from tasks.plan.chunks import make_chunks
from tasks.plan.points import Point
from tasks.sources.registry import Patches, SensorConfig
from tasks.store.layout import TEXT_BLOCK, open_store, read_meta
from tests.stores import SENSOR, WINDOW, Written, write_store, write_wide_store

ROOT = Path(__file__).parents[2]


class FlatSource:
    """An ImagerySource whose patches are one colour per band; the first point's top row is
    NaN (masked), the second point's patch all NaN (no imagery)."""

    VALUES: ClassVar[dict[str, float]] = {"B04": 3000.0, "B03": 1500.0, "B02": 0.0}

    def fetch(self, points: Sequence[Point], bands: Sequence[str], config: SensorConfig) -> Patches:
        n = config.patch_px
        data = {}
        for band in bands:
            data[band] = np.full((len(points), n, n), self.VALUES[band], dtype=np.float32)
            data[band][0, 0, :] = np.nan
            data[band][1:2] = np.nan
        return Patches(point_ids=tuple(p.id for p in points), bands=data)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Written:
    return write_store(tmp_path_factory.mktemp("inspect") / "e.zarr")


@pytest.fixture(scope="module")
def work_dir(written: Written, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("work")
    for chunk in make_chunks(written.points, written.layout.chunk_size):
        prefetch_chunk(
            FlatSource(), chunk, ["B02", "B03", "B04"], SENSOR, str(work / "inputs.zarr")
        )
    return work


def rows(out: str) -> list[list[str]]:
    """The cells of every row of the tables printed."""
    return [[c.strip() for c in line.strip("│ ").split("│")] for line in out.splitlines()]


def test_inspect__prints_models_weights_sources_and_counts(written, capsys):
    assert main([written.path]) == 0
    out = capsys.readouterr().out
    assert "41 points, 1 time entry" in out
    assert "bbox [-67.66, -47.86, -67.64, -47.845], spacing 250 m" in out
    table = rows(out)
    for row in (
        ["pooled_model", "model", "6", "-", "pretrained W.V1", "catalog /data/catalog.json"],
        ["grid_model", "model", "4", "2 x 2", "random seed=0", "catalog /data/catalog.json"],
        ["tessera", "precomputed", "3", "-", "dataset v1.1", "store /data/tessera.zarr"],
        ["0", "2024-01-01..2024-12-31", "pooled_model", "39", "1", "1", "0"],
        ["0", "2024-01-01..2024-12-31", "grid_model", "38", "1", "1", "1"],
        ["0", "2024-01-01..2024-12-31", "tessera", "0", "0", "41", "0"],
    ):
        assert row in table, row


def test_inspect__patch_writes_the_true_colour_png(written, work_dir, tmp_path, capsys):
    out = tmp_path / "patch.png"
    point = written.points[0].id
    assert (
        main([written.path, "--patch", point, "--work-dir", str(work_dir), "--out", str(out)]) == 0
    )
    scale = PATCH_MIN_PX // SENSOR.patch_px
    said = capsys.readouterr().out
    assert f"{SENSOR.patch_px * scale} x {SENSOR.patch_px * scale} px" in said
    assert said.endswith(", 12% of it no data (transparent)\n"), said  # its top row of 8
    rgba = np.asarray(Image.open(out))
    assert rgba.shape == (SENSOR.patch_px * scale, SENSOR.patch_px * scale, 4)
    np.testing.assert_array_equal(
        rgba[-1, -1], [255, 127, 0, 255]
    )  # B04 / 3000 = 1, B03 / 3000 = 0.5
    assert (rgba[:scale, :, 3] == 0).all(), "the masked top row is transparent"


def test_inspect__patch_without_a_valid_pixel_is_not_drawn_and_says_why(
    written, work_dir, tmp_path, capsys
):
    out = tmp_path / "nodata.png"
    point = written.points[1].id  # no data in every model that reads imagery
    assert (
        main([written.path, "--patch", point, "--work-dir", str(work_dir), "--out", str(out)]) == 1
    )
    said = capsys.readouterr()
    assert said.out == "" and "true colour" not in said.err
    assert said.err == (
        f"swath inspect: point {point} has no valid pixel in its patch for 2024-01-01..2024-12-31 "
        "(the store says: pooled_model: no item covers it); no PNG written\n"
    )
    assert not out.exists()


def test_inspect__patch_of_a_point_not_in_the_store_exits_1(written, work_dir, capsys):
    assert main([written.path, "--patch", "32719-1-2", "--work-dir", str(work_dir)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("swath inspect: point 32719-1-2 is not in this store (41 points")


def test_inspect__patch_without_its_inputs_exits_1(written, tmp_path, capsys):
    point = written.points[0].id
    assert main([written.path, "--patch", point, "--work-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"no inputs for point {point}: inputs store {tmp_path}/inputs.zarr does not" in err


def test_inspect__patch_of_another_window_exits_2(written, work_dir, capsys):
    point = written.points[0].id
    argv = [written.path, "--patch", point, "--time", "2023-01-01", "--work-dir", str(work_dir)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no time entry starting 2023-01-01; it has 2024-01-01" in err


def test_inspect__a_path_that_is_not_a_store_exits_2_with_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "nothing.zarr")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a swath store" in err


def test_inspect_and_to_parquet__import_neither_torch_nor_prefect():
    code = (
        "import sys, flows.inspect, flows.to_parquet; "
        "print(sorted(m for m in ('torch', 'prefect') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def test_inspect__patch_of_a_later_chunk_is_found_with_or_without_the_chunk(written, work_dir):
    # the last point is in chunk 5 of 8-point chunks: looked for there first, or anywhere
    point = written.points[-1].id
    inputs, meta = str(work_dir / "inputs.zarr"), read_meta(written.path)
    meta = {"swath": meta["swath"], "models": meta["models"]}
    for chunk in (5, 0, None):
        rgba = read_true_colour(inputs, meta, point, WINDOW, chunk=chunk)
        assert rgba.shape == (SENSOR.patch_px, SENSOR.patch_px, 4)


def test_find_point__reads_the_ids_a_block_at_a_time(tmp_path):
    n = write_wide_store(tmp_path / "w.zarr", 40_000, 2, lambda lon, lat: np.zeros((len(lon), 2)))
    assert n > 2 * TEXT_BLOCK
    with open_store(str(tmp_path / "w.zarr")) as ds:
        ids = ds["point_id"]
        for i in (0, TEXT_BLOCK - 1, TEXT_BLOCK, n - 1):
            assert find_point(ds, str(ids[i].values)) == i
        with pytest.raises(NotFound, match=f"{n} points, e.g. "):
            find_point(ds, "32632-1-2")
