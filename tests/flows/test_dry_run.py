"""`--dry-run` says what the run does: the same fetches, by the same rule, from the
products' declared facts (the dry run loads no model)."""

import dataclasses
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from embedders.steps import TimeSteps
from flows.dry_run import _size, dry_run
from flows.job import (
    Plan,
    UsageError,
    plan_job,
    planned_fetches,
    point_bytes,
    product_request,
    resolve_job,
    shared_fetches,
)
from flows.params import Imagery, Inference, Output, Region, Window
from tasks.products import registry as products
from tasks.products.product import Fetch, ProductEntry, ProductRequest, fetches_of, identity_key
from tasks.results import ModelOutput

# A product that reads Sentinel-2 and spells its resolution 10.0, beside models spelling 10.
TENTHS = dataclasses.replace(
    products.PRODUCTS["ssl4eo_resnet18_rgb"].facts,
    kind="precomputed",
    tile_px=None,
    stride_px=1,
    resolution_m=10.0,
    bands=("B11",),
)


@dataclass(frozen=True)
class Tenths:
    name: str
    fetches: tuple[Fetch, ...]
    uses_device: bool = False

    def identity(self) -> dict[str, Any]:
        return {"product": "tenths", "version": 1}

    def key(self) -> str:
        return identity_key(self.name, self.identity())

    def output(self) -> ModelOutput:
        return ModelOutput(self.name, TENTHS.dim, None, self.identity(), {}, TENTHS, 64)


def resolve_tenths(name: str, request: ProductRequest) -> Tenths:
    return Tenths(name, fetches_of(name, TENTHS, request))


@pytest.fixture
def plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Plan:
    entry = ProductEntry(TENTHS, f"{__name__}:resolve_tenths")
    monkeypatch.setitem(products.PRODUCTS, "tenths", entry)
    models = ["ssl4eo_resnet18_rgb", "tenths"]
    return plan_job(
        Region(spacing_m=1000),
        Window(),
        Imagery(),
        Inference.model_construct(**{**Inference().model_dump(), "models": models}),
        Output(store=str(tmp_path / "e.zarr"), work_dir=str(tmp_path / "work")),
        today=date(2025, 6, 1),
    )


def test_dry_run__fetches_what_the_run_fetches_10_and_10_0_in_one(plan: Plan) -> None:
    request = product_request(plan.imagery, plan.window, plan.work_dir)
    planned = planned_fetches(tuple(plan.inference.models), request)
    job = resolve_job(dataclasses.replace(plan, inference=plan.inference.model_copy(
        update={"weights": "random"})))  # fmt: skip
    run = shared_fetches(job.products)
    assert len(run) == 1
    assert [(f.config.key(), f.config, f.bands) for f in planned] == [
        (f.config.key(), f.config, f.bands) for f in run
    ]
    assert run[0].bands == ("B02", "B03", "B04", "B11")
    text = dry_run(plan)
    assert "(1 fetch + 2 produce)" in text
    assert "(1 sensor configuration(s): stac-catalog sentinel-2-l2a)" in text


def _tenths_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, facts: Any) -> Plan:
    monkeypatch.setitem(products.PRODUCTS, "tenths", ProductEntry(facts, "unused:resolve"))
    return plan_job(
        Region(spacing_m=1000),
        Window(start=date(2025, 1, 1), end=date(2025, 3, 31)),
        Imagery(),
        Inference.model_construct(**{**Inference().model_dump(), "models": ["tenths"]}),
        Output(store=str(tmp_path / "e.zarr"), work_dir=str(tmp_path / "work")),
        today=date(2025, 6, 1),
    )


def test_dry_run__a_time_series_of_t_steps_fetches_t_times_the_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    single = _tenths_plan(tmp_path, monkeypatch, TENTHS)
    n, patch = len(single.points), single.imagery.patch_px
    assert f"inputs fetched: {_size(n * patch * patch * 4)} " in dry_run(single)
    one = point_bytes(single.imagery, single.inference, single.window)
    stepped = dataclasses.replace(TENTHS, steps=TimeSteps("monthly", 3))
    series = _tenths_plan(tmp_path, monkeypatch, stepped)
    text = dry_run(series)
    assert f"inputs fetched: {_size(3 * n * patch * patch * 4)} " in text
    assert "stac-catalog sentinel-2-l2a x 3 steps (3 monthly steps, a composite each)" in text
    # chunks are sized by the work a task carries: each step's patches
    assert point_bytes(series.imagery, series.inference, series.window) == 3 * one


def test_dry_run__k_acquisitions_fetch_k_times_the_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    single = _tenths_plan(tmp_path, monkeypatch, TENTHS)
    n, patch = len(single.points), single.imagery.patch_px
    stepped = dataclasses.replace(TENTHS, steps=TimeSteps("acquisitions", 5, seed=2))
    text = dry_run(_tenths_plan(tmp_path, monkeypatch, stepped))
    assert f"inputs fetched: {_size(5 * n * patch * patch * 4)} " in text
    assert "x 5 steps (5 acquisitions drawn with seed 2, one read each)" in text


def test_dry_run__a_window_that_does_not_hold_a_models_steps_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stepped = dataclasses.replace(TENTHS, steps=TimeSteps("monthly", 12))
    with pytest.raises(UsageError, match=r"tenths: 12 monthly steps need a window of 12"):
        _tenths_plan(tmp_path, monkeypatch, stepped)


def test_dry_run__tessera_otf_fetches_two_series_and_runs_a_series_per_pixel(
    tmp_path: Path,
) -> None:
    plan = plan_job(
        Region(spacing_m=1000),
        Window(start=date(2024, 1, 1), end=date(2024, 12, 31)),
        Imagery(patch_px=16),
        Inference.model_construct(**{**Inference().model_dump(), "models": ["tessera_otf"]}),
        Output(store=str(tmp_path / "e.zarr"), work_dir=str(tmp_path / "work")),
        today=date(2025, 6, 1),
    )
    n = len(plan.points)
    text = dry_run(plan)
    s2, s1 = 10 * 12 * 16 * 16 * 4, 2 * 12 * 16 * 16 * 4  # bands x steps x pixels x float32
    assert f"inputs fetched: {_size(n * (s2 + s1))} (2 sensor configuration(s): " in text
    assert "sentinel-2-l2a x 12 steps" in text and "sentinel-1 x 12 steps" in text
    assert (
        f"model work: tessera_otf: {n * 256:,} pixel series of 12 steps x 2 sensor(s) "
        f"({n:,} points x 16 x 16 px)"
    ) in text


def test_dry_run__a_tile_series_model_names_its_work(tmp_path: Path) -> None:
    plan = plan_job(
        Region(spacing_m=1000),
        Window(start=date(2024, 1, 1), end=date(2024, 12, 31)),
        Imagery(patch_px=64),
        Inference.model_construct(**{**Inference().model_dump(), "models": ["olmoearth_nano"]}),
        Output(store=str(tmp_path / "e.zarr"), work_dir=str(tmp_path / "work")),
        today=date(2025, 6, 1),
    )
    n = len(plan.points)
    text = dry_run(plan)
    assert "sentinel-2-l2a x 12 steps" in text
    assert (
        f"model work: olmoearth_nano: {n:,} patches of 64 x 64 px in 64 px tiles, each tile "
        "12 steps x 1 sensor(s)"
    ) in text
