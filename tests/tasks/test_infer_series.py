"""A pixel time-series model over a chunk (tasks/infer.py `infer_series_chunk`): each sensor's
series read from the inputs store, side by side in the model's channel order, each step at
its middle day of year; a point without data says why, per sensor and step."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from embedders import registry
from embedders.pixels import PixelSeries, embed_series
from embedders.spec import Embedder, InferenceOptions, Status
from embedders.steps import TimeSteps
from tasks.infer import SeriesWork, infer_series_chunk
from tasks.plan.chunks import Chunk
from tasks.plan.points import Point
from tasks.products.product import Fetch
from tasks.series import prefetch_series
from tasks.sources.registry import Patches, SensorConfig

N = 3
MONTHS = TimeSteps("monthly", 12)
S2 = ("B04", "B02", "B03", "B08", "B8A", "B05", "B06", "B07", "B11", "B12")


class Made:
    """A source of seeded values in each sensor's units; point p1 has no Sentinel-1 at all."""

    def fetch(self, points: Sequence[Point], bands: Sequence[str], config: SensorConfig) -> Patches:
        rng = np.random.default_rng(int(config.start.replace("-", "")))
        radar = config.sensor == "sentinel-1"
        mean, spread = (-14.0, 3.0) if radar else (2000.0, 500.0)
        digits = 2 if radar else 0  # as the inputs store keeps them: hundredths of dB, whole DN
        out = {
            b: rng.normal(mean, spread, (len(points), N, N)).round(digits).astype(np.float32)
            for b in bands
        }
        notes = {}
        if radar:
            for b in bands:
                out[b][1] = np.nan
            notes = {"p1": "no scene"}
        return Patches(tuple(p.id for p in points), out, notes)

    def check(self, bands: Sequence[str], config: SensorConfig) -> None:
        return None

    def plain_http(self, config: SensorConfig) -> set[str]:
        return set()


def _config(sensor: str) -> SensorConfig:
    return SensorConfig(sensor, "", sensor, 10, N, "2024-01-01", "2024-12-31", steps=MONTHS)


def test_infer_series_chunk__reads_both_series_and_says_why_a_point_has_no_data(
    tmp_path: Path,
) -> None:
    points = [Point(f"p{k}", 15.0, 45.0, 32633, 500_000.0 + 100 * k, 5e6) for k in range(2)]
    chunk = Chunk.of(0, 0, points)
    inputs = str(tmp_path / "inputs.zarr")
    fetches = (Fetch(_config("sentinel-2-l2a"), S2), Fetch(_config("sentinel-1"), ("VV", "VH")))
    for fetch in fetches:
        prefetch_series(Made(), chunk, fetch.bands, fetch.config, inputs)
    model = registry.build("tessera_otf", "random", torch.device("cpu"))

    def on(device: str) -> Embedder:
        return model

    options = InferenceOptions(batch_size=4)
    result = infer_series_chunk(SeriesWork(on, fetches, options, "cpu"), chunk, inputs)
    assert result.status.tolist() == [Status.OK, Status.NODATA]
    assert result.reason[1].startswith(
        "sentinel-1: no data in any step: 2024-01-01..2024-01-31: no scene; "
    )
    # the same as the engine on the series made by hand: S2 then S1, January's middle day 16
    made = [Made().fetch(points, f.bands, f.config.step(s)) for f in fetches for s in range(12)]
    values = np.stack(
        [np.stack([made[g * 12 + s].bands[b] for s in range(12)], axis=1) for g, f in
         enumerate(fetches) for b in f.bands], axis=2)  # fmt: skip
    middle = [16, 15, 16, 15, 16, 15, 16, 16, 15, 16, 15, 16]  # 2024: February has 29 days
    days = np.array([[np.cumsum([0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30])] * 2] * 2)
    days += middle  # (points, sensors, steps)
    series = PixelSeries(values, days.astype(np.float32))
    by_hand = embed_series(model, series, options, torch.device("cpu"))
    np.testing.assert_allclose(result.embeddings[0], by_hand.pooled[0], rtol=0, atol=1e-4)
