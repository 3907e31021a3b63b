"""The results store: produce tasks of one run, in threads or Dask worker processes, create it
and their groups at once."""

import threading
from pathlib import Path

import numpy as np

from tasks.produce import load_result, result_complete, save_result
from tasks.store import ChunkResult


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
