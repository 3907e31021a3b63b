"""The inputs store's compact format: int16 imagery with a fill value and a checksum per
Zarr chunk, read back exactly, the first format (float32) still read, damage refetched."""

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from embedders.encoding import FLOAT32, INT16, INT16_FILL
from tasks.inputs import (
    CHUNK_POINTS,
    DamagedInputsError,
    prefetch_chunk,
    read_patches,
    read_stack,
    read_stacks,
)
from tasks.plan.chunks import Chunk
from tasks.plan.points import Point
from tasks.sources.registry import Patches, SensorConfig

CONFIG = SensorConfig(
    sensor="sentinel-2-l2a",
    catalog="unused",
    collection="test",
    resolution_m=10.0,
    patch_px=8,
    start="2021-01-01",
    end="2021-12-31",
)
GSE = SensorConfig(
    sensor="satellite-embedding",
    catalog="",
    collection="GOOGLE/SATELLITE_EMBEDDING/V1/ANNUAL",
    resolution_m=10.0,
    patch_px=8,
    start="2024-01-01",
    end="2024-12-31",
    source="earthengine",
)


def _chunk(n: int = 20) -> Chunk:
    points = [Point(f"p{k}", 0.0, 0.0, 32633, 500_000.0 + k, 5e6) for k in range(n)]
    return Chunk.of(0, 0, points)


def _band(n: int, seed: int) -> np.ndarray:
    """Median-composite-like values: halves, negatives (harmonised dark pixels), NaN holes."""
    rng = np.random.default_rng(seed)
    data = (rng.integers(-900, 9000, (n, 8, 8)) + rng.choice([0.0, 0.5], (n, 8, 8))).astype(
        np.float32
    )
    data[0, :2] = np.nan
    data[-1] = np.nan
    return data


class Source:
    def __init__(self, bands: dict[str, np.ndarray]) -> None:
        self.bands, self.calls = bands, 0

    def fetch(self, points: Sequence[Point], bands: Sequence[str], config: SensorConfig) -> Patches:
        self.calls += 1
        return Patches(tuple(p.id for p in points), {b: self.bands[b] for b in bands}, {})


def test_inputs__imagery_is_int16_with_a_fill_value_rounded_half_to_even(tmp_path: Path) -> None:
    chunk, inputs = _chunk(), str(tmp_path)
    values = {"B02": _band(20, 0), "B03": _band(20, 1)}
    values["B02"][1, 0, :4] = [40_000.0, -40_000.0, 2.5, 3.5]  # clipped, clipped, 2, 4
    prefetch_chunk(Source(values), chunk, ["B02", "B03"], CONFIG, inputs)
    array = zarr.open_array(inputs, path=f"{CONFIG.key()}/{chunk.key}/B02", mode="r")
    assert array.dtype == np.dtype("int16") and array.fill_value == INT16_FILL
    assert array.chunks == (CHUNK_POINTS, 8, 8)
    assert array.attrs["encoding"] == {"fill": INT16_FILL, "scale": 1.0, "offset": 0.0}
    got = read_patches(inputs, CONFIG, chunk, ["B02"]).bands["B02"]
    expected = np.clip(np.rint(values["B02"]), -32767, 32767)
    np.testing.assert_array_equal(got, expected)  # NaN where NaN, to the DN elsewhere
    assert got[1, 0, :4].tolist() == [32767.0, -32767.0, 2.0, 4.0]
    unclipped = np.isfinite(got)
    unclipped[1, 0, :2] = False
    assert np.abs(got - values["B02"])[unclipped].max() == 0.5


def test_inputs__a_stack_is_the_stored_values_in_band_order(tmp_path: Path) -> None:
    chunk, inputs = _chunk(), str(tmp_path)
    values = {"B02": _band(20, 0), "B04": _band(20, 2)}
    prefetch_chunk(Source(values), chunk, ["B02", "B04"], CONFIG, inputs)
    stack, notes = read_stack(inputs, CONFIG, chunk, ["B04", "B02"], pin=False)
    assert stack.encoding == INT16 and stack.values.dtype == torch.int16
    assert tuple(stack.values.shape) == (20, 2, 8, 8) and notes == {}
    decoded = read_patches(inputs, CONFIG, chunk, ["B04"]).bands["B04"]
    stored = stack.values[:, 0].numpy()
    np.testing.assert_array_equal(np.where(stored == INT16_FILL, np.nan, stored), decoded)


def test_inputs__embedding_products_stay_float32(tmp_path: Path) -> None:
    chunk, inputs = _chunk(), str(tmp_path)
    vectors = {"A00": np.random.default_rng(3).uniform(-1, 1, (20, 8, 8)).astype(np.float32)}
    prefetch_chunk(Source(vectors), chunk, ["A00"], GSE, inputs)
    got = read_patches(inputs, GSE, chunk, ["A00"]).bands["A00"]
    np.testing.assert_array_equal(got, vectors["A00"])  # not rounded


def _first_format(inputs: str, chunk: Chunk, band: str, data: np.ndarray) -> None:
    """A band as swath wrote it before the compact format: float32, NaN, no encoding."""
    group = zarr.open_group(inputs, path=f"{CONFIG.key()}/{chunk.key}", mode="a")
    group.create_array(band, shape=data.shape, dtype="float32", fill_value=np.nan)[...] = data
    group.attrs["bands_done"] = sorted({*group.attrs.get("bands_done", []), band})


def test_inputs__the_first_format_is_read_as_float32_never_misread(tmp_path: Path) -> None:
    chunk, inputs = _chunk(), str(tmp_path)
    values = {"B02": _band(20, 0), "B03": _band(20, 1)}
    prefetch_chunk(Source(values), chunk, ["B03"], CONFIG, inputs)  # a later run's band
    _first_format(inputs, chunk, "B02", values["B02"])
    np.testing.assert_array_equal(
        read_patches(inputs, CONFIG, chunk, ["B02"]).bands["B02"], values["B02"]
    )
    alone, _ = read_stack(inputs, CONFIG, chunk, ["B02"], pin=False)
    assert alone.encoding == FLOAT32 and alone.values.dtype == torch.float32
    mixed, _ = read_stack(inputs, CONFIG, chunk, ["B02", "B03"], pin=False)
    assert mixed.encoding == FLOAT32  # one old band: all decoded to float32
    np.testing.assert_array_equal(mixed.values[:, 0].numpy(), values["B02"])
    np.testing.assert_array_equal(mixed.values[:, 1].numpy(), np.rint(values["B03"]))


def test_inputs__a_damaged_chunk_is_refused_and_fetched_again(tmp_path: Path) -> None:
    chunk, inputs = _chunk(), str(tmp_path)
    values = {"B02": _band(20, 0)}
    source = Source(values)
    prefetch_chunk(source, chunk, ["B02"], CONFIG, inputs)
    shard = tmp_path / CONFIG.key() / chunk.key / "B02" / "c" / "1" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte on disk
    shard.write_bytes(bytes(raw))
    with pytest.raises(DamagedInputsError, match=r"band B02 is damaged.*rerun the export"):
        read_stack(inputs, CONFIG, chunk, ["B02"], pin=False)
    group = zarr.open_group(inputs, path=f"{CONFIG.key()}/{chunk.key}", mode="r")
    assert group.attrs["bands_done"] == []  # the next prefetch fetches it again
    report = prefetch_chunk(source, chunk, ["B02"], CONFIG, inputs)
    assert report.fetched == ("B02",) and source.calls == 2
    np.testing.assert_array_equal(
        read_patches(inputs, CONFIG, chunk, ["B02"]).bands["B02"], np.rint(values["B02"])
    )


def test_inputs__an_unknown_encoding_is_refused_with_what_to_do(tmp_path: Path) -> None:
    chunk, inputs = _chunk(), str(tmp_path)
    prefetch_chunk(Source({"B02": _band(20, 0)}), chunk, ["B02"], CONFIG, inputs)
    group = zarr.open_group(inputs, path=f"{CONFIG.key()}/{chunk.key}", mode="a")
    group.create_array("B02", shape=(20, 8, 8), dtype="uint8", overwrite=True)
    with pytest.raises(DamagedInputsError, match=r"remove the work directory.s inputs\.zarr"):
        read_patches(inputs, CONFIG, chunk, ["B02"])


S1 = replace(CONFIG, sensor="sentinel-1", collection="test-s1")


class NotingSource(Source):
    """A source that says why some points have no data."""

    def __init__(self, bands: dict[str, np.ndarray], notes: dict[str, str]) -> None:
        super().__init__(bands)
        self.notes = notes

    def fetch(self, points: Sequence[Point], bands: Sequence[str], config: SensorConfig) -> Patches:
        patches = super().fetch(points, bands, config)
        return Patches(patches.point_ids, patches.bands, self.notes)


def test_inputs__sensors_of_one_grid_stack_side_by_side_in_the_order_asked(
    tmp_path: Path,
) -> None:
    chunk, inputs = _chunk(), str(tmp_path)
    db = {b: (_band(20, k) / 500 - 15).astype(np.float32) for k, b in enumerate(("VV", "VH"))}
    prefetch_chunk(Source({"B02": _band(20, 9)}), chunk, ["B02"], CONFIG, inputs)
    prefetch_chunk(NotingSource(db, {"p3": "no scene"}), chunk, ["VV", "VH"], S1, inputs)
    sensors = [(CONFIG, ["B02"]), (S1, ["VH", "VV"])]
    stack, notes = read_stacks(inputs, sensors, chunk, pin=False)
    # int16 digital numbers and int16 hundredths of a dB: decoded to float32, NaN where masked
    assert stack.encoding == FLOAT32 and stack.bands == 3
    expected = [read_patches(inputs, c, chunk, [b]).bands[b] for c, bands in sensors for b in bands]
    np.testing.assert_array_equal(stack.values.numpy(), np.stack(expected, axis=1))
    assert notes == {"p3": "sentinel-1: no scene"}
    alone, _ = read_stacks(inputs, sensors[:1], chunk, pin=False)  # one sensor: as stored
    assert alone.encoding == INT16 and alone.values.dtype == torch.int16


def test_inputs__sensors_on_different_grids_are_refused(tmp_path: Path) -> None:
    coarse = replace(S1, patch_px=16)
    with pytest.raises(
        ValueError,
        match=r"sentinel-2-l2a patches are 8 px at 10 m and sentinel-1 patches 16 px at "
        r"10 m: a model that stacks their bands needs one grid; fetch both at the same "
        r"resolution and patch size",
    ):
        read_stacks(str(tmp_path), [(CONFIG, ["B02"]), (coarse, ["VV"])], _chunk(), pin=False)
