import numpy as np
import pytest

from embedders import tiling
from embedders.spec import InferenceOptions
from embedders.ssl4eo import RESNET18_SPEC


def test_tile_starts__exact_tile_is_one_tile() -> None:
    assert tiling.tile_starts(224, 224, 0) == [0]


def test_tile_starts__smaller_than_tile_is_one_tile_at_zero() -> None:
    assert tiling.tile_starts(40, 224, 0) == [0]


def test_tiling__last_tile_aligns_to_edge() -> None:
    assert tiling.tile_starts(230, 224, 0) == [0, 6]
    assert tiling.tile_starts(449, 224, 0) == [0, 224, 225]
    assert tiling.tile_starts(448, 224, 0) == [0, 224]


def test_tile_starts__overlap_steps_by_tile_minus_overlap() -> None:
    assert tiling.tile_starts(500, 224, 32) == [0, 192, 276]
    assert tiling.tile_starts(416, 224, 32) == [0, 192]


@pytest.mark.parametrize("overlap", [-1, 224, 300])
def test_tile_starts__rejects_overlap_outside_tile(overlap: int) -> None:
    with pytest.raises(ValueError, match=r"overlap must be in \[0, tile\)"):
        tiling.tile_starts(500, 224, overlap)


def test_tile_origins__non_square_image_is_cut_along_its_long_side() -> None:
    assert tiling.tile_origins(224, 300, 224, 0) == [(0, 0), (0, 76)]


def test_blend_window__strictly_positive_and_peaks_in_the_centre() -> None:
    window = tiling.blend_window(7)
    assert window.min() > 0
    assert window.argmax() == 3
    np.testing.assert_allclose(window, window[::-1])


def test_grid_shape__tile_mode_covers_the_unpadded_image() -> None:
    options = InferenceOptions(input_prep="tile")
    assert tiling.grid_shape(RESNET18_SPEC, options, 224, 224) == (7, 7)
    assert tiling.grid_shape(RESNET18_SPEC, options, 100, 230) == (4, 8)


def test_grid_shape__resize_mode_is_one_tile_grid() -> None:
    options = InferenceOptions(input_prep="resize")
    assert tiling.grid_shape(RESNET18_SPEC, options, 100, 230) == (7, 7)


def test_grid_blender__single_aligned_tile_is_returned_unchanged() -> None:
    grid = np.random.default_rng(0).random((5, 7, 7))
    blender = tiling.GridBlender.for_image(5, 224, 224, 32)
    blender.add(grid, 0, 0)
    np.testing.assert_allclose(blender.result((7, 7)), grid, rtol=1e-6)


def test_grid_blender__misaligned_overlapping_tiles_have_no_seams() -> None:
    # Every tile sees the same constant field, so the blend must be that constant.
    blender = tiling.GridBlender.for_image(2, 230, 300, 32)
    for y0, x0 in tiling.tile_origins(230, 300, 224, 40):
        blender.add(np.full((2, 7, 7), 3.5), y0, x0)
    out = blender.result((8, 10))
    assert out.shape == (2, 8, 10)
    np.testing.assert_allclose(out, 3.5, rtol=1e-6)


def test_grid_blender__tile_off_the_grid_splits_cells_by_overlap() -> None:
    # A tile starting half a cell in gives each image cell the mean of two tile cells.
    ramp = np.tile(np.arange(7.0), (1, 7, 1))
    blender = tiling.GridBlender.for_image(1, 224, 256, 32)
    blender.add(ramp, 0, 16)
    out = blender.result((7, 8))
    window = tiling.blend_window(7)
    expected_cell_3 = (window[2] * 2 + window[3] * 3) / (window[2] + window[3])
    np.testing.assert_allclose(out[0, 0, 0], 0.0)
    np.testing.assert_allclose(out[0, 0, 3], expected_cell_3)
