"""A run's plan: tasks sized by the work they carry, not by the region."""

from datetime import date
from pathlib import Path

from flows.job import MAX_CHUNK_POINTS, TASK_INPUT_BYTES, plan_job, point_bytes
from flows.params import Imagery, Inference, Output, Region, Window

TODAY = date(2025, 1, 15)


def plan(tmp_path: Path, bbox: tuple[float, float, float, float], **imagery: object):
    return plan_job(
        Region(bbox=bbox, spacing_m=100),
        Window(),
        Imagery(**imagery),  # type: ignore[arg-type]
        Inference(models=["ssl4eo_resnet18_rgb", "dofa_base"]),
        Output(store=str(tmp_path / "e.zarr"), work_dir=str(tmp_path / "work")),
        today=TODAY,
    )


def test_chunks__a_region_ten_times_larger_has_more_chunks_of_the_same_size(tmp_path):
    small = plan(tmp_path, (10.0, 45.0, 10.3, 45.2))
    large = plan(tmp_path, (10.0, 45.0, 11.0, 45.6))
    assert len(large.points) > 9 * len(small.points)
    assert small.chunk_size == large.chunk_size == MAX_CHUNK_POINTS
    assert len(large.chunks) > 9 * len(small.chunks)


def test_chunks__hold_a_bounded_amount_of_input_patches(tmp_path):
    """Larger patches make smaller chunks: a task's patches stay under the budget."""
    big = plan(tmp_path, (10.0, 45.0, 10.3, 45.2), patch_px=448)
    per_point = point_bytes(big.imagery, big.inference, big.window)
    assert per_point == 6 * 448 * 448 * 4  # the union of both models' bands: one fetch
    assert big.chunk_size * per_point <= TASK_INPUT_BYTES < (big.chunk_size + 1) * per_point


def test_chunks__a_small_region_is_still_cut_to_overlap_the_stages(tmp_path):
    tiny = plan(tmp_path, (10.0, 45.0, 10.03, 45.02))
    assert 256 < len(tiny.points) < MAX_CHUNK_POINTS  # one chunk's worth, cut in eight
    assert tiny.chunk_size == -(-len(tiny.points) // 8) and len(tiny.chunks) == 8


def test_plan__is_written_once_to_the_work_dir_and_reused(tmp_path):
    first = plan(tmp_path, (10.0, 45.0, 10.3, 45.2))
    files = list((tmp_path / "work" / "plans").iterdir())
    assert len(files) == 1 and first.points.path == str(files[0])
    again = plan(tmp_path, (10.0, 45.0, 10.3, 45.2))
    assert [c.key for c in again.chunks] == [c.key for c in first.chunks]
    assert list((tmp_path / "work" / "plans").iterdir()) == files
