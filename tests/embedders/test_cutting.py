"""Tiles cut on the device: the same tiles, weights and embeddings as the host path they
replaced (tests/embedders/host_reference.py), for every family and every way of cutting."""

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
import torch

from embedders import cutting, registry
from embedders.encoding import FLOAT32, INT16, encode_int16
from embedders.engine import embed_images, embed_patches
from embedders.patches import PatchStack
from embedders.spec import Embedder, InferenceOptions, ModelSpec, Status
from embedders.ssl4eo import RESNET18_SPEC
from tests.embedders import host_reference

CPU = torch.device("cpu")
ImageMaker = Callable[..., np.ndarray]
# The bound of the device path against the host path on the CPU: the tiles are the same to
# the bit, the forwards run in other batches (other blocking of the same float32 sums, which
# compounds through a deep model: 1.00007e-6 measured for scalemae_large's 24 layers on one
# CI processor). A tile cut, placed or stitched wrongly is off by more than 1e-2.
RELATIVE_BOUND = 1e-5

TILE = InferenceOptions(input_prep="tile", output="grid", tile_overlap_px=24, batch_size=3)
RESIZE = InferenceOptions(input_prep="resize", output="grid", batch_size=3)


def _cut(image: np.ndarray, spec: ModelSpec, options: InferenceOptions) -> cutting.Cut:
    where = cutting.layout(spec, options, image.shape[1], image.shape[2])
    with torch.inference_mode():
        return cutting.cut(torch.from_numpy(image)[None], FLOAT32, spec, where)


def _holed(make_image: ImageMaker, seed: int, height: int, width: int, bands: int) -> np.ndarray:
    image = make_image(seed, height, width, bands)
    image[:, 5:40, 30:90] = np.nan  # a cloud
    image[1, 100 % height, 7] = np.inf  # one band invalid invalidates the pixel
    return image


@pytest.mark.parametrize(
    ("height", "width", "options"),
    [
        (230, 300, TILE),  # overlap, last tile moved back to the edge
        (100, 150, TILE),  # padded (reflect) up to the tile
        (500, 300, RESIZE),  # shrunk, antialiased
        (100, 100, RESIZE),  # enlarged
    ],
)
def test_cut__tiles_and_weights_are_the_host_paths_to_the_bit(
    make_image: ImageMaker, height: int, width: int, options: InferenceOptions
) -> None:
    image = _holed(make_image, 3, height, width, 3)
    got = _cut(image, RESNET18_SPEC, options)
    expected = host_reference.prepare(image, RESNET18_SPEC, options)
    assert np.array_equal(got.tiles[0].numpy(), expected.tiles)
    np.testing.assert_allclose(got.weights[0].numpy(), expected.weights, rtol=1e-12)
    assert got.valid_fraction[0].item() == expected.valid_fraction


def test_cut__int16_values_give_the_tiles_of_their_float_values(make_image: ImageMaker) -> None:
    image = np.rint(_holed(make_image, 4, 230, 300, 3))  # whole digital numbers, NaN holes
    where = cutting.layout(RESNET18_SPEC, TILE, 230, 300)
    stored = torch.from_numpy(encode_int16(image))[None]
    with torch.inference_mode():
        compact = cutting.cut(stored, INT16, RESNET18_SPEC, where)
    floats = _cut(image.astype(np.float32), RESNET18_SPEC, TILE)
    assert stored.dtype == torch.int16
    assert torch.equal(compact.tiles, floats.tiles)
    assert torch.equal(compact.weights, floats.weights)


def test_cut__weights_count_each_valid_pixel_once_over_overlaps() -> None:
    valid = np.random.default_rng(1).random((300, 500)) > 0.3
    image = np.where(valid, 1000.0, np.nan).astype(np.float32)[None].repeat(3, 0)
    got = _cut(image, RESNET18_SPEC, InferenceOptions(input_prep="tile", tile_overlap_px=40))
    assert got.weights.shape == (1, 6)
    assert got.weights.sum().item() == pytest.approx(valid.sum())


def test_cut__overlap_is_shared_between_tiles_and_an_invalid_tile_weighs_nothing() -> None:
    image = np.full((3, 224, 300), 1000.0, dtype=np.float32)
    shared = _cut(image, RESNET18_SPEC, InferenceOptions(input_prep="tile"))
    # 148 shared columns count half for each tile: 224 * (224 - 74) each.
    np.testing.assert_allclose(shared.weights[0].numpy(), [224 * 150, 224 * 150])
    half = np.full((3, 224, 448), 1000.0, dtype=np.float32)
    half[:, :, 224:] = np.nan
    np.testing.assert_array_equal(
        _cut(half, RESNET18_SPEC, InferenceOptions(input_prep="tile")).weights[0].numpy(),
        [224 * 224, 0],
    )


def test_cut__reflect_pads_wider_than_the_image_and_padding_is_invalid() -> None:
    image = np.arange(3 * 40 * 40, dtype=np.float32).reshape(3, 40, 40)
    got = _cut(image, RESNET18_SPEC, InferenceOptions(input_prep="tile"))
    filled, _ = host_reference.normalise(image, RESNET18_SPEC)
    tile = got.tiles[0, 0].numpy()
    assert tile.shape == (3, 224, 224) and np.isfinite(tile).all()
    np.testing.assert_array_equal(tile[:, :40, :40], filled)
    np.testing.assert_array_equal(tile[:, :40, 40], filled[:, :, 38])  # mirrored
    assert got.weights[0, 0].item() == 40 * 40


def test_cut__edge_repeats_the_last_pixel_and_pads_only_the_short_side() -> None:
    spec = ModelSpec(**{**RESNET18_SPEC.__dict__, "pad_mode": "edge"})
    image = np.random.default_rng(0).uniform(0, 3000, (3, 100, 300)).astype(np.float32)
    got = _cut(image, spec, InferenceOptions(input_prep="tile"))
    filled, _ = host_reference.normalise(image, spec)
    assert got.tiles.shape == (1, 2, 3, 224, 224)  # 300 px wide: two tiles, no x padding
    np.testing.assert_array_equal(got.tiles[0, 0, :, 223, :].numpy(), filled[:, 99, :224])
    assert got.weights.sum().item() == 100 * 300


def test_cut__resize_keeps_a_constant_image_constant_and_nan_never_spreads() -> None:
    image = np.full((3, 500, 300), 1000.0, dtype=np.float32)
    image[:, 200:260, :] = np.nan
    got = _cut(image, RESNET18_SPEC, InferenceOptions(input_prep="resize"))
    tile = got.tiles[0, 0].numpy()
    assert tile.shape == (3, 224, 224) and np.isfinite(tile).all()
    mean, std = RESNET18_SPEC.norm_mean[0], RESNET18_SPEC.norm_std[0]
    np.testing.assert_allclose(tile[0, :50], (1000.0 - mean) / std, rtol=1e-6)


def test_cut__resized_mask_is_thresholded_at_one_half() -> None:
    image = np.zeros((3, 448, 448), dtype=np.float32)
    image[:, :, :224] = np.nan
    got = _cut(image, RESNET18_SPEC, InferenceOptions(input_prep="resize"))
    assert got.weights[0, 0].item() == 224 * 112  # the right half of the tile is valid


# One model per family; their spec's tile and normalisation, random weights.
FAMILIES = (
    "ssl4eo_resnet18_rgb",
    "ssl4eo_resnet18_s2_moco",
    "ssl4eo_vits16_s2_moco",
    "dofa_base",
    "croma_base",
    "panopticon_base",
    "copernicusfm_base",
    "scalemae_large",
)


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("name", FAMILIES)
def test_embed__equals_the_host_path_for_every_family_and_way_of_cutting(
    name: str, make_image: ImageMaker
) -> None:
    embedder = registry.build(name, "random", CPU)
    spec = embedder.spec
    t, c = spec.tile_px, len(spec.bands)
    cases: list[tuple[InferenceOptions, list[np.ndarray]]] = [
        (TILE, [_holed(make_image, 1, t, t + 20, c), _holed(make_image, 2, t // 2, t // 2, c)]),
        (RESIZE, [_holed(make_image, 3, t + t // 2, t, c)]),
    ]
    for options, images in cases:
        got = embed_images(embedder, images, options, CPU)
        assert (got.status == Status.OK).all()
        for i, image in enumerate(images):
            ref = host_reference.embed(embedder, image, options, CPU)
            assert ref.pooled is not None and ref.grid is not None and got.grid is not None
            assert _relative(got.pooled[i], ref.pooled) <= RELATIVE_BOUND
            gh, gw = ref.grid.shape[1:]
            assert _relative(got.grid[i, :, :gh, :gw], ref.grid) <= RELATIVE_BOUND
            assert got.valid_fraction[i] == pytest.approx(ref.valid_fraction, rel=1e-7)


def test_embed__patch_stacks_give_the_result_of_their_images_at_every_batch_size(
    resnet18: Embedder, make_image: ImageMaker
) -> None:
    images = [np.rint(_holed(make_image, s, 230, 230, 3)) for s in range(5)]
    images[3][:] = np.nan  # no valid pixel: NODATA
    stored = PatchStack(torch.from_numpy(np.stack([encode_int16(i) for i in images])), INT16)
    pooled = InferenceOptions(input_prep="tile", tile_overlap_px=16)
    reference = embed_images(resnet18, [i.astype(np.float32) for i in images], pooled, CPU)
    for size in (1, 7, "auto"):
        options = InferenceOptions(input_prep="tile", tile_overlap_px=16, batch_size=size)
        got = embed_patches(resnet18, stored, options, CPU)
        assert got.status.tolist() == [Status.OK] * 3 + [Status.NODATA, Status.OK]
        ok = got.status == Status.OK
        assert _relative(got.pooled[ok], reference.pooled[ok]) <= RELATIVE_BOUND
        assert np.isnan(got.pooled[3]).all()


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
# CUDA against the CPU in float32 (IEEE, no TF32): other kernels, other rounding.
CUDA_BOUND = 1e-4


@CUDA
@pytest.mark.parametrize("name", FAMILIES)
def test_embed__cuda_equals_the_cpu_for_every_family_and_way_of_cutting(
    name: str, make_image: ImageMaker
) -> None:
    cuda = torch.device("cuda")
    on_cpu, on_gpu = registry.build(name, "random", CPU), registry.build(name, "random", cuda)
    t, c = on_cpu.spec.tile_px, len(on_cpu.spec.bands)
    images = [_holed(make_image, 1, t, t + 20, c), _holed(make_image, 2, t // 2, t // 2, c)]
    for options in (TILE, RESIZE):
        a = embed_images(on_cpu, images, options, CPU)
        b = embed_images(on_gpu, images, options, cuda)
        assert (b.status == Status.OK).all() and a.grid is not None and b.grid is not None
        assert _relative(b.pooled, a.pooled) <= CUDA_BOUND
        ok = np.isfinite(a.grid)
        assert np.array_equal(ok, np.isfinite(b.grid))
        assert _relative(b.grid[ok], a.grid[ok]) <= CUDA_BOUND


@CUDA
def test_embed__cuda_int16_patches_at_every_batch_size_equal_the_cpu(
    resnet18: Embedder, make_image: ImageMaker
) -> None:
    cuda = torch.device("cuda")
    model = registry.build("ssl4eo_resnet18_rgb", "random", cuda)
    images = [np.rint(_holed(make_image, s, 230, 230, 3)) for s in range(9)]
    stored = torch.from_numpy(np.stack([encode_int16(i) for i in images]))
    options = InferenceOptions(input_prep="tile", output="grid", tile_overlap_px=16)
    cpu = embed_patches(resnet18, PatchStack(stored, INT16), options, CPU)
    assert cpu.grid is not None
    for size in (1, 7, "auto"):
        got = embed_patches(
            model, PatchStack(stored, INT16).pinned(), replace(options, batch_size=size), cuda
        )
        assert got.grid is not None and (got.status == Status.OK).all()
        assert _relative(got.pooled, cpu.pooled) <= CUDA_BOUND
        assert _relative(got.grid, cpu.grid) <= CUDA_BOUND
        assert got.forward_s > 0 and got.embed_s >= got.forward_s
