"""Prefetch: a chunk's bands into the inputs Zarr store, fetched once, read back by infer."""

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import zarr
from prefect.states import Failed

from tasks.inputs import MissingInputsError, prefetch_chunk, read_patches
from tasks.plan.chunks import Chunk
from tasks.plan.points import Point
from tasks.prefetch import PREFETCH_RETRIES, prefetch_task, retry_if_transient
from tasks.sources.demo import DEMO_COLLECTION, build_demo_catalog
from tasks.sources.registry import ImagerySourceError, Patches, SensorConfig, TransientSourceError
from tasks.sources.stac_catalog import StacCatalogSource

CONFIG = SensorConfig(
    sensor="sentinel-2-l2a",
    catalog="unused",
    collection="test",
    resolution_m=10.0,
    patch_px=4,
    start="2021-01-01",
    end="2021-12-31",
)


class CountingSource:
    """An ImagerySource whose pixels encode (point, band, row, col); it records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[str, ...], tuple[str, ...]]] = []

    def fetch(self, points: Sequence[Point], bands: Sequence[str], config: SensorConfig) -> Patches:
        self.calls.append((tuple(p.id for p in points), tuple(bands)))
        return Patches(
            point_ids=tuple(p.id for p in points),
            bands={b: expected_band(points, b, config.patch_px) for b in bands},
            notes={points[-1].id: "no item covers it"},
        )


# What the inputs store records of the configuration: every field but the source's options
# (how to reach it), each number in its canonical spelling (10.0 m is recorded as 10).
RECORDED = {
    "sensor": "sentinel-2-l2a",
    "catalog": "unused",
    "collection": "test",
    "resolution_m": 10,
    "patch_px": 4,
    "start": "2021-01-01",
    "end": "2021-12-31",
    "composite": "median",
    "source": "stac-catalog",
    "max_cloud_cover": 100.0,
}


def expected_band(points: Sequence[Point], band: str, n: int) -> np.ndarray:
    i, r, c = np.meshgrid(np.arange(len(points)), np.arange(n), np.arange(n), indexing="ij")
    data = (int(band[1:]) * 1000 + i * 100 + r * 10 + c).astype(np.float32)
    data[-1] = np.nan  # the last point has no data
    return data


def make_chunk(index: int, n_points: int = 3) -> Chunk:
    points = tuple(
        Point(f"c{index}-p{k}", lon=0.0, lat=0.0, epsg=32633, x=500_000.0 + k, y=5e6)
        for k in range(n_points)
    )
    return Chunk.of(index, index * n_points, points)


def test_prefetch__stores_bands_points_notes_and_config(tmp_path: Path) -> None:
    inputs, chunk = str(tmp_path / "inputs"), make_chunk(0)
    report = prefetch_chunk(CountingSource(), chunk, ["B02", "B04"], CONFIG, inputs)
    assert (report.chunk, report.config) == (chunk.key, CONFIG.key())
    assert (report.fetched, report.reused) == (("B02", "B04"), ())
    config_group = zarr.open_group(inputs, path=CONFIG.key(), mode="r")
    assert config_group.attrs["config"] == RECORDED
    group = zarr.open_group(inputs, path=f"{CONFIG.key()}/{chunk.key}", mode="r")
    assert group.attrs["point_ids"] == [p.id for p in chunk.points]
    assert group.attrs["bands_done"] == ["B02", "B04"]
    assert group.attrs["notes"] == {"c0-p2": "no item covers it"}
    array = group["B04"]
    assert isinstance(array, zarr.Array)
    assert (array.shape, array.dtype) == ((3, 4, 4), np.dtype("int16"))  # see test_inputs


def test_prefetch__rerun_with_every_band_present_fetches_nothing(tmp_path: Path) -> None:
    source, chunk, inputs = CountingSource(), make_chunk(0), str(tmp_path)
    prefetch_chunk(source, chunk, ["B02", "B04"], CONFIG, inputs)
    report = prefetch_chunk(source, chunk, ["B04", "B02"], CONFIG, inputs)
    assert len(source.calls) == 1
    assert (report.fetched, report.reused) == ((), ("B04", "B02"))


def test_prefetch__new_band_is_fetched_alone_in_one_call(tmp_path: Path) -> None:
    source, chunk, inputs = CountingSource(), make_chunk(0), str(tmp_path)
    prefetch_chunk(source, chunk, ["B02"], CONFIG, inputs)
    report = prefetch_chunk(source, chunk, ["B02", "B08", "B11"], CONFIG, inputs)
    assert source.calls[1] == (tuple(p.id for p in chunk.points), ("B08", "B11"))
    assert (report.fetched, report.reused) == (("B08", "B11"), ("B02",))
    patches = read_patches(inputs, CONFIG, chunk, ["B02", "B08", "B11"])
    np.testing.assert_array_equal(patches.bands["B02"], expected_band(chunk.points, "B02", 4))


def test_prefetch__array_written_but_not_marked_done_is_fetched_again(tmp_path: Path) -> None:
    source, chunk, inputs = CountingSource(), make_chunk(0), str(tmp_path)
    prefetch_chunk(source, chunk, ["B02"], CONFIG, inputs)
    group = zarr.open_group(inputs, path=f"{CONFIG.key()}/{chunk.key}", mode="r+")
    group.create_array("B04", shape=(3, 4, 4), dtype="float32")  # a prefetch died here
    report = prefetch_chunk(source, chunk, ["B02", "B04"], CONFIG, inputs)
    assert report.fetched == ("B04",)
    np.testing.assert_array_equal(
        read_patches(inputs, CONFIG, chunk, ["B04"]).bands["B04"],
        expected_band(chunk.points, "B04", 4),
    )


def test_read_patches__round_trip_keeps_values_nan_ids_and_notes(tmp_path: Path) -> None:
    chunk, inputs = make_chunk(5), str(tmp_path)
    prefetch_chunk(CountingSource(), chunk, ["B02", "B03"], CONFIG, inputs)
    patches = read_patches(inputs, CONFIG, chunk, ["B03"])
    assert patches.point_ids == tuple(p.id for p in chunk.points)
    assert list(patches.bands) == ["B03"]
    np.testing.assert_array_equal(patches.bands["B03"], expected_band(chunk.points, "B03", 4))
    assert np.isnan(patches.bands["B03"][-1]).all()
    assert patches.notes == {"c5-p2": "no item covers it"}


def test_read_patches__missing_band_names_chunk_config_and_band(tmp_path: Path) -> None:
    chunk, inputs = make_chunk(0), str(tmp_path)
    prefetch_chunk(CountingSource(), chunk, ["B02"], CONFIG, inputs)
    pattern = rf"chunk {chunk.key} of sensor configuration {CONFIG.key()}.*\['B08'\]"
    with pytest.raises(MissingInputsError, match=pattern):
        read_patches(inputs, CONFIG, chunk, ["B02", "B08"])


def test_read_patches__chunk_never_prefetched_says_run_prefetch(tmp_path: Path) -> None:
    chunk = make_chunk(0)
    with pytest.raises(MissingInputsError, match=rf"chunk {chunk.key} .* run prefetch"):
        read_patches(str(tmp_path), CONFIG, chunk, ["B02"])


def test_prefetch__concurrent_chunks_of_one_config_in_threads(tmp_path: Path) -> None:
    chunks, inputs, source = (
        [make_chunk(i) for i in range(12)],
        str(tmp_path / "in"),
        CountingSource(),
    )
    with ThreadPoolExecutor(max_workers=6) as pool:
        reports = list(
            pool.map(lambda c: prefetch_chunk(source, c, ["B02"], CONFIG, inputs), chunks)
        )
    assert [r.fetched for r in reports] == [("B02",)] * 12
    for chunk in chunks:
        patches = read_patches(inputs, CONFIG, chunk, ["B02"])
        np.testing.assert_array_equal(patches.bands["B02"], expected_band(chunk.points, "B02", 4))
    config_attrs = zarr.open_group(inputs, path=CONFIG.key(), mode="r").attrs
    assert config_attrs["config"] == RECORDED


def test_prefetch__demo_catalog_through_the_stac_source(tmp_path: Path) -> None:
    catalog = build_demo_catalog(tmp_path / "cache")
    config = SensorConfig(
        "sentinel-2-l2a", str(catalog), DEMO_COLLECTION, 10.0, 16, "2024-01-01", "2024-12-31"
    )
    points = (
        Point("in", -67.64, -47.85, 32719, 601_500.0, 4_699_000.0),
        Point("out", -67.0, -47.85, 32719, 650_000.0, 4_699_000.0),
    )
    chunk, inputs = Chunk.of(0, 0, points), str(tmp_path / "inputs")
    report = prefetch_chunk(StacCatalogSource(), chunk, ["B04", "B11"], config, inputs)
    patches = read_patches(inputs, config, chunk, ["B11", "B04"])
    assert report.fetched == ("B04", "B11")
    assert np.isfinite(patches.bands["B04"][0]).all() and np.isnan(patches.bands["B04"][1]).all()
    assert list(patches.notes) == ["out"]


def test_prefetch_task__retries_transient_source_errors_only() -> None:
    assert prefetch_task.retries == PREFETCH_RETRIES >= 3
    assert prefetch_task.retry_condition_fn is retry_if_transient
    assert prefetch_task.retry_jitter_factor is not None and prefetch_task.retry_jitter_factor > 0
    delays = prefetch_task.retry_delay_seconds
    assert isinstance(delays, list) and delays == sorted(delays) and delays[-1] > delays[0]
    assert retry_if_transient(prefetch_task, None, Failed(data=TransientSourceError("503")))
    assert not retry_if_transient(prefetch_task, None, Failed(data=ImagerySourceError("404")))
