import itertools
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
import torch

from embedders import batching, registry
from embedders.engine import NODATA_REASON, EmbedResult, cut_tiles, embed_images
from embedders.spec import Embedder, InferenceOptions, Status
from tests.embedders.fakes import Wrapper
from tests.embedders.host_reference import normalise

CPU = torch.device("cpu")
ImageMaker = Callable[..., np.ndarray]

TILE_GRID = InferenceOptions(input_prep="tile", output="grid", tile_overlap_px=40, batch_size=16)
TILE_POOLED = InferenceOptions(input_prep="tile", output="pooled", batch_size=16)

# One tile, just larger than a tile, smaller than a tile, non-square.
SIZES = [(224, 224), (230, 230), (100, 100), (224, 300)]


def _run(embedder: Embedder, images: list[np.ndarray], options: InferenceOptions) -> EmbedResult:
    return embed_images(embedder, images, options, CPU)


def _assert_same(a: EmbedResult, b: EmbedResult, rows: slice | list[int] = slice(None)) -> None:
    np.testing.assert_allclose(a.pooled[rows], b.pooled[rows], rtol=1e-5, atol=1e-7)
    if a.grid is not None or b.grid is not None:
        assert a.grid is not None and b.grid is not None
        np.testing.assert_allclose(a.grid[rows], b.grid[rows], rtol=1e-5, atol=1e-7)


@pytest.fixture
def images(make_image: ImageMaker) -> list[np.ndarray]:
    return [make_image(seed, h, w) for seed, (h, w) in enumerate(SIZES)]


@pytest.fixture
def clean(resnet18: Embedder, images: list[np.ndarray]) -> EmbedResult:
    return _run(resnet18, images, TILE_GRID)


def test_embed__batch_sizes_give_the_same_result(
    resnet18: Embedder, images: list[np.ndarray]
) -> None:
    results = [
        _run(resnet18, images, replace(TILE_GRID, batch_size=bs)) for bs in (1, 7, 64, "auto")
    ]
    for r in results[1:]:
        _assert_same(results[0], r)
    r = results[0]
    assert r.grid is not None and r.grid.shape == (4, 512, 8, 10)
    assert (r.status == Status.OK).all() and r.reason == [""] * 4
    assert np.isfinite(r.pooled).all()
    # Each image's grid covers its own cells and is NaN beyond them.
    assert np.isfinite(r.grid[2, :, :4, :4]).all() and np.isnan(r.grid[2, :, 4:, :]).all()
    assert np.isfinite(r.grid[3, :, :7, :10]).all() and np.isnan(r.grid[3, :, 7:, :]).all()
    # The images differ, so equal results above are not equal by accident.
    assert np.abs(r.pooled[0] - r.pooled[1]).max() > 1e3 * 1e-5 * np.abs(r.pooled[0]).max()


def test_embed__resize_mode_batch_sizes_give_the_same_result(
    resnet18: Embedder, images: list[np.ndarray]
) -> None:
    one = InferenceOptions(input_prep="resize", output="grid", batch_size=1)
    many = InferenceOptions(input_prep="resize", output="grid", batch_size=3)
    a, b = _run(resnet18, images, one), _run(resnet18, images, many)
    _assert_same(a, b)
    assert a.grid is not None and a.grid.shape == (4, 512, 7, 7) and np.isfinite(a.grid).all()


def test_embed__result_does_not_depend_on_neighbours_or_order(
    resnet18: Embedder, images: list[np.ndarray], clean: EmbedResult
) -> None:
    reordered = _run(resnet18, [images[3], images[1]], TILE_GRID)
    assert reordered.grid is not None and clean.grid is not None
    np.testing.assert_allclose(reordered.pooled, clean.pooled[[3, 1]], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(reordered.grid, clean.grid[[3, 1]], rtol=1e-5, atol=1e-7)
    alone = _run(resnet18, [images[1]], TILE_GRID)
    assert alone.grid is not None
    np.testing.assert_allclose(alone.pooled[0], clean.pooled[1], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(alone.grid[0], clean.grid[1, :, :8, :8], rtol=1e-5, atol=1e-7)


def test_embed__result_does_not_depend_on_which_images_share_a_call_or_their_order(
    resnet18: Embedder, images: list[np.ndarray], clean: EmbedResult
) -> None:
    options = replace(TILE_GRID, batch_size=3)  # batches now mix the tiles of other images
    first = _run(resnet18, [images[2], images[0]], options)
    second = _run(resnet18, [images[3], images[1]], options)
    assert first.grid is not None and second.grid is not None and clean.grid is not None
    for result, rows in ((first, [2, 0]), (second, [3, 1])):
        np.testing.assert_allclose(result.pooled, clean.pooled[rows], rtol=1e-5, atol=1e-7)
        for k, row in enumerate(rows):
            gh, gw = result.grid.shape[2:]
            expected = clean.grid[row, :, :gh, :gw]
            np.testing.assert_allclose(
                result.grid[k], expected, rtol=1e-5, atol=1e-7, equal_nan=True
            )


def test_embed__an_error_while_cutting_tiles_is_raised_to_the_caller(
    resnet18: Embedder, images: list[np.ndarray]
) -> None:
    with pytest.raises(ValueError, match=r"overlap must be in \[0, tile\)"):
        _run(resnet18, images, replace(TILE_GRID, tile_overlap_px=224))


def test_cut_tiles__are_the_normalised_image_cut_bit_for_bit(
    resnet18: Embedder, make_image: ImageMaker
) -> None:
    image = make_image(3, 230, 300)
    image[:, 5:9, 100:140] = np.nan
    image[2, 200, 7] = np.inf
    tiles = cut_tiles(image, resnet18.spec, TILE_GRID)
    filled, _ = normalise(image, resnet18.spec)
    origins = [(0, 0), (0, 76), (6, 0), (6, 76)]  # overlap 40: starts 0, 184 -> moved to 76
    expected = np.stack([filled[:, y : y + 224, x : x + 224] for y, x in origins])
    assert np.array_equal(tiles, expected)
    assert (tiles[0][:, 5:9, 100:140] == 0).all()


def test_embed__out_of_memory_halves_the_batch_and_retries_the_same_tiles(
    resnet18: Embedder, images: list[np.ndarray], clean: EmbedResult
) -> None:
    reference = Wrapper(resnet18)
    _run(reference, images, TILE_GRID)
    flaky = Wrapper(resnet18, oom_above=3)
    result = _run(flaky, images, replace(TILE_GRID, batch_size=16))
    _assert_same(result, clean)
    assert max(flaky.batches) == 2  # 16 -> 8 -> 4 -> 2
    assert sorted(flaky.tiles) == sorted(reference.tiles)  # every tile exactly once
    assert len(flaky.tiles) == 8


def test_embed__out_of_memory_on_a_single_tile_is_raised(
    resnet18: Embedder, images: list[np.ndarray]
) -> None:
    with pytest.raises(torch.OutOfMemoryError, match="out of memory with a batch of one tile"):
        _run(Wrapper(resnet18, oom_above=0), images, TILE_GRID)


def test_embed__a_failing_tile_fails_only_its_image(
    resnet18: Embedder, images: list[np.ndarray], clean: EmbedResult
) -> None:
    marked = [img.copy() for img in images]
    marked[1][0, 5, 5] = 1e9  # 1e5 after normalising: the wrapper raises on it
    result = _run(Wrapper(resnet18, fail_above_value=1e4), marked, TILE_GRID)
    assert result.status.tolist() == [Status.OK, Status.FAILED, Status.OK, Status.OK]
    assert result.reason[1] == "ValueError: marker tile"
    assert np.isnan(result.pooled[1]).all()
    assert result.grid is not None and np.isnan(result.grid[1]).all()
    _assert_same(result, clean, [0, 2, 3])


def test_embed__all_nan_image_is_nodata_and_never_reaches_the_model(
    resnet18: Embedder, make_image: ImageMaker
) -> None:
    empty = np.full((3, 230, 230), np.nan, dtype=np.float32)
    spy = Wrapper(resnet18)
    result = _run(spy, [empty], TILE_GRID)
    assert result.status.tolist() == [Status.NODATA]
    assert result.reason == [NODATA_REASON]
    assert result.valid_fraction.tolist() == [0.0]
    assert np.isnan(result.pooled).all()
    assert spy.batches == []


def test_embed__nan_half_counts_nothing_and_does_not_poison_the_valid_half(
    resnet18: Embedder, make_image: ImageMaker
) -> None:
    image = make_image(7, 224, 448)
    image[:, :, 224:] = np.nan
    image[1, 10, 10] = np.nan  # a pixel with one band missing is invalid as a whole
    left = image[:, :, :224]
    options = InferenceOptions(input_prep="tile", output="grid")  # two tiles, no overlap
    half, alone = _run(resnet18, [image, left], options), _run(resnet18, [left], options)
    expected_fraction = (224 * 224 - 1) / (224 * 448)
    assert half.valid_fraction[0] == pytest.approx(expected_fraction, rel=1e-6)
    assert half.status.tolist() == [Status.OK, Status.OK]
    np.testing.assert_allclose(half.pooled[0], alone.pooled[0], rtol=1e-5, atol=1e-7)
    assert half.grid is not None and alone.grid is not None
    np.testing.assert_allclose(half.grid[0, :, :, :7], alone.grid[0], rtol=1e-5, atol=1e-7)
    assert np.isfinite(half.grid[0]).all()


def test_embed__pooled_output_skips_tiles_without_valid_pixels(
    resnet18: Embedder, make_image: ImageMaker
) -> None:
    image = make_image(7, 224, 448)
    image[:, :, 224:] = np.nan
    spy = Wrapper(resnet18)
    result = _run(spy, [image], TILE_POOLED)
    assert spy.batches == [1] and result.grid is None
    assert result.status.tolist() == [Status.OK]


def test_embed__bf16_returns_float32_close_to_fp32(
    resnet18: Embedder, images: list[np.ndarray]
) -> None:
    fp32 = _run(resnet18, images[:1], TILE_POOLED)
    bf16 = _run(resnet18, images[:1], InferenceOptions(input_prep="tile", precision="bf16"))
    assert bf16.pooled.dtype == np.float32
    cos = np.dot(fp32.pooled[0], bf16.pooled[0])
    cos /= np.linalg.norm(fp32.pooled[0]) * np.linalg.norm(bf16.pooled[0])
    assert cos > 0.99


def test_embed__fp16_on_cpu_is_refused(resnet18: Embedder, images: list[np.ndarray]) -> None:
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        _run(resnet18, images, InferenceOptions(precision="fp16"))


def test_embed__wrong_band_count_names_the_image_and_the_bands(resnet18: Embedder) -> None:
    with pytest.raises(ValueError, match=r"image 0: model ssl4eo_resnet18_rgb takes .* C=3"):
        _run(resnet18, [np.zeros((4, 50, 50), np.float32)], TILE_POOLED)


def test_embed__forward_seconds_add_up_the_model_forwards_and_nothing_else(
    resnet18: Embedder, images: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    ticks = itertools.count()
    monkeypatch.setattr(batching, "_clock", lambda: float(next(ticks)))  # 1 s per reading
    spy = Wrapper(resnet18)
    result = _run(spy, images, replace(TILE_POOLED, batch_size=2))
    assert len(spy.batches) > 1
    assert result.forward_s == len(spy.batches)  # read before and after each forward only
    empty = np.full((3, 100, 100), np.nan, dtype=np.float32)
    assert _run(resnet18, [empty], TILE_POOLED).forward_s == 0.0  # no tile, no forward


def test_embed__no_images_gives_empty_arrays(resnet18: Embedder) -> None:
    result = _run(resnet18, [], TILE_GRID)
    assert result.pooled.shape == (0, 512) and result.status.shape == (0,)
    assert result.grid is not None and result.grid.shape[:2] == (0, 512)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_embed__cuda_gives_the_same_result_at_every_batch_size_and_matches_cpu(
    images: list[np.ndarray], clean: EmbedResult
) -> None:
    cuda = torch.device("cuda")
    model = registry.build("ssl4eo_resnet18_rgb", "random", cuda)
    results = [
        embed_images(model, images, replace(TILE_GRID, batch_size=bs), cuda)
        for bs in (1, 7, 64, "auto")
    ]
    for r in results[1:]:
        _assert_same(results[0], r)
    np.testing.assert_allclose(results[0].pooled, clean.pooled, rtol=1e-4, atol=1e-6)
