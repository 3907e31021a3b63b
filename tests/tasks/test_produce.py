"""The results store: produce tasks of one run, in threads or Dask worker processes, create it
and their groups at once."""

import itertools
import threading
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import zarr

from embedders import batching
from embedders.spec import InferenceOptions
from tasks.infer import resolve_model
from tasks.inputs import prefetch_chunk
from tasks.plan.chunks import Chunk
from tasks.plan.points import Point
from tasks.products.registry import ProductRequest
from tasks.results import ChunkResult, load_result, produce_chunk, result_complete, save_result
from tasks.sources.registry import Patches, SensorConfig


def test_save_result__many_writers_creating_a_new_results_store_at_once(tmp_path: Path) -> None:
    """Found by the local Dask cluster's export: two workers' first results raced to create
    the store's root group, and one failed with ContainsGroupError."""
    result = ChunkResult(
        np.arange(8, dtype="f4").reshape(2, 4), np.ones(2, "i1"), ["", "why"], np.ones(2, "f4")
    )
    for trial in range(5):
        path = str(tmp_path / f"results-{trial}.zarr")
        start = threading.Barrier(8)
        errors: list[BaseException] = []

        def save(
            i: int,
            path: str = path,
            start: threading.Barrier = start,
            errors: list[BaseException] = errors,
        ) -> None:
            start.wait()
            try:
                save_result(path, f"product-{i % 2}/chunk-{i}", result)
            except BaseException as e:  # collected, asserted below
                errors.append(e)

        threads = [threading.Thread(target=save, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        for i in range(8):
            group = f"product-{i % 2}/chunk-{i}"
            assert result_complete(path, group)
            np.testing.assert_array_equal(load_result(path, group).embeddings, result.embeddings)


class FlatSource:
    """An ImagerySource whose patches hold one digital number everywhere."""

    def fetch(self, points: Sequence[Point], bands: Sequence[str], config: SensorConfig) -> Patches:
        n = config.patch_px
        flat = np.full((len(points), n, n), 1000.0, dtype=np.float32)
        return Patches(point_ids=tuple(p.id for p in points), bands={b: flat for b in bands})


def test_produce__a_model_records_the_seconds_of_its_forwards_with_its_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = ProductRequest(
        start=date(2024, 1, 1),
        end=date(2024, 12, 31),
        patch_px=32,
        source="stac-catalog",
        catalog="catalog.json",
        collection="s2",
        max_cloud_cover=100.0,
        source_options={},
        options=InferenceOptions(batch_size=2),
        weights="random",
        device="cpu",
    )
    product = resolve_model("ssl4eo_resnet18_rgb", request)
    points = [Point(f"p{i}", 15.0, 45.0, 32633, 500_000.0 + 100 * i, 5e6) for i in range(3)]
    chunk = Chunk.of(0, 0, points)
    inputs, results = str(tmp_path / "inputs.zarr"), str(tmp_path / "results.zarr")
    prefetch_chunk(FlatSource(), chunk, product.spec.bands, product.config, inputs)
    ticks = itertools.count()
    monkeypatch.setattr(batching, "_clock", lambda: float(next(ticks)))  # 1 s per reading
    group = produce_chunk(product, chunk, inputs, results)
    attrs = zarr.open_group(results, path=group, mode="r").attrs
    timing = attrs["timing"]
    assert timing["forward_s"] == 2.0  # 3 one-tile patches in batches of 2: two forwards
    assert timing["device"] == "cpu" and timing["end"] >= timing["start"]
    assert attrs["complete"] is True
