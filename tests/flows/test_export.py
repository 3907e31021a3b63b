"""The export flow end to end: the demo catalog served over loopback HTTP, real models with
seeded random weights, a real Zarr store, under the session's Prefect test server."""

import contextlib
import hashlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.flow_engine import run_flow

from embedders.spec import Status
from flows.export import ExportGaps, export
from flows.job import UsageError
from flows.params import Imagery, Inference, Output, Region, Window
from tasks.store.layout import open_store, read_meta

# Inside the demo sample's 10 m footprint: 10 points at 400 m.
INSIDE = (-67.655, -47.858, -67.63, -47.850)
# Reaches 2 km east of the footprint: the eastern points have no imagery.
PAST_EDGE = (-67.64, -47.858, -67.60, -47.852)
MODELS = ["dofa_base", "ssl4eo_resnet18_rgb"]


def params(tmp_path: Path, catalog: str, *, bbox=INSIDE, models=MODELS, store="e.zarr") -> dict:
    return {
        "region": Region(bbox=bbox, spacing_m=400),
        "window": Window(),
        "imagery": Imagery(catalog=catalog, patch_px=32),
        "inference": Inference(models=models, weights="random", batch_size=4),
        "output": Output(
            store=str(tmp_path / store), work_dir=str(tmp_path / "work"), chunk_size=4
        ),
    }


def snapshot(store: Path) -> dict[str, str]:
    return {
        str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(store.rglob("*"))
        if p.is_file()
    }


def tif_requests(log) -> int:
    return sum(1 for r in log if r.path.endswith(".tif"))


def test_export__writes_one_embedding_per_point_and_model(tmp_path, served_demo):
    summary = export(**params(tmp_path, served_demo.url))
    ds = xr.open_zarr(summary["store"])
    n = ds.sizes["point"]
    assert n == summary["points"] >= 4
    assert set(ds.coords) >= {"point_id", "lon", "lat", "time"}
    assert np.all((ds.lon > -67.66) & (ds.lon < -67.62)) and np.all(ds.lat < -47.84)
    assert ds["dofa_base"].shape == (1, n, 768)
    assert ds["ssl4eo_resnet18_rgb"].shape == (1, n, 512)
    for model in MODELS:
        emb = ds[model].values
        assert np.isfinite(emb).all(), model
        assert (ds[f"{model}_status"].values == Status.OK).all()
        assert (ds[f"{model}_valid_fraction"].values > 0.99).all()
        assert len({tuple(row[:8]) for row in emb[0]}) == n, "points must differ"
        assert read_meta(summary["store"])["models"][model]["weights"]["kind"] == "random"
    assert summary["all_ok"] is True


def test_export__rerun_fetches_nothing_and_leaves_the_store_identical(tmp_path, served_demo):
    first = export(**params(tmp_path, served_demo.url))
    before = snapshot(Path(first["store"]))
    fetched = tif_requests(served_demo.log)
    again = export(**params(tmp_path, served_demo.url))
    assert tif_requests(served_demo.log) == fetched, "the rerun read imagery again"
    assert snapshot(Path(again["store"])) == before


def test_export__a_new_model_reuses_the_prefetched_bands(tmp_path, served_demo):
    export(**params(tmp_path, served_demo.url, models=["dofa_base"], store="a.zarr"))
    fetched = tif_requests(served_demo.log)
    # ssl4eo needs B04, B03, B02: all already fetched for dofa_base
    export(**params(tmp_path, served_demo.url, models=["ssl4eo_resnet18_rgb"], store="b.zarr"))
    assert tif_requests(served_demo.log) == fetched


def test_export__points_without_imagery_are_recorded_as_nodata(tmp_path, served_demo):
    with pytest.raises(
        ExportGaps, match=r"not every point is ok \(ssl4eo_resnet18_rgb: ok \d+"
    ) as gaps:
        export(**params(tmp_path, served_demo.url, bbox=PAST_EDGE, models=["ssl4eo_resnet18_rgb"]))
    summary = gaps.value.summary
    ds = open_store(summary["store"])
    status = ds["ssl4eo_resnet18_rgb_status"].values[0]
    # the sample's 10 m bands end at x = 603000; patches are 320 m wide
    x = np.array([int(pid.split("-")[1]) for pid in ds.point_id.values])
    east = x - 160 >= 603000
    assert (x[~east] + 160 <= 603000).all()
    assert east.any() and (~east).any()
    assert (status[east] == Status.NODATA).all()
    assert all(r for r in ds["ssl4eo_resnet18_rgb_reason"].values[0][east])
    assert np.isnan(ds["ssl4eo_resnet18_rgb"].values[0][east]).all()
    assert (status[~east] == Status.OK).all()
    assert summary["all_ok"] is False


class _Records(logging.Handler):
    """What a logger lets through (after its filters), kept."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def deployment_logs() -> Iterator[list[logging.LogRecord]]:
    """The records of the logger a deployment's run logs to (`prefect.flow_runs`), as its
    engine process logs them (prefect/engine.py passes it as `error_logger`)."""
    logger, handler = logging.getLogger("prefect.flow_runs"), _Records()
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


def run_as_deployment(parameters: dict) -> BaseException:
    """Run the flow as a deployment's engine process does; what it raises at the end."""
    with pytest.raises(Exception) as raised:
        run_flow(export, parameters=parameters, error_logger=logging.getLogger("prefect.flow_runs"))
    return raised.value


def tracebacks(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if r.exc_info]


def latest_summary_artifact() -> Any:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["swath-export-summary"]))
        )
    return max(found, key=lambda a: a.created)


def test_export__a_run_with_gaps_ends_failed_in_the_ui_saying_why_without_a_traceback(
    tmp_path, served_demo
):
    """Issue 22: the UI said Failed but not why, and logged ExportGaps' traceback."""
    p = params(tmp_path, served_demo.url, bbox=PAST_EDGE, models=["ssl4eo_resnet18_rgb"])
    with deployment_logs() as records:
        raised = run_as_deployment(p)
    assert isinstance(raised, ExportGaps)  # a Python caller still learns of it
    assert tracebacks(records) == []
    artifact = latest_summary_artifact()
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(artifact.flow_run_id)
    assert run.state is not None and run.state.is_failed()
    message = run.state.message or ""
    assert re.search(r"not every point is ok \(ssl4eo_resnet18_rgb: ok \d+, nodata \d+\)", message)
    why = re.search(r"ssl4eo_resnet18_rgb: (\d+) points no data: (.+)$", message)
    assert why, message
    nodata = raised.summary["models"]["ssl4eo_resnet18_rgb"]["status"]["nodata"]
    assert int(why[1]) == nodata
    ds = open_store(raised.summary["store"])
    reasons = {str(r) for r in ds["ssl4eo_resnet18_rgb_reason"].values[0] if r}
    assert reasons == {why[2]}, "the message carries the store's reason"
    has_reason = np.array([bool(r) for r in ds["ssl4eo_resnet18_rgb_reason"].values[0]])
    first = [str(i) for i in ds.point_id.values[has_reason][:3]]
    table = str(artifact.data)
    assert "### Why points are not ok" in table
    assert (
        f"- {nodata} points no data: {why[2]}; first: " + ", ".join(f"`{i}`" for i in first)
        in table
    )


def test_export__a_window_ending_before_it_starts_fails_naming_the_forms_fields(tmp_path):
    """A rule across fields, which the form's schema cannot hold: the run ends Failed before
    anything is planned, its log and message worded with the form's fields, no traceback
    (Prefect's own parameter validation logged it outside the run, with a traceback)."""
    p = {
        "window": {"start": "2024-12-31", "end": "2024-01-01"},
        "output": {"store": str(tmp_path / "w.zarr")},
    }
    with deployment_logs() as records:
        raised = run_as_deployment(p)
    assert isinstance(raised, UsageError)
    assert str(raised) == (
        "window: end date 2024-01-01 is before start date 2024-12-31; give window › First "
        "day on or before window › Last day"
    )
    assert tracebacks(records) == []
    assert any(r.levelno == logging.ERROR and r.getMessage() == str(raised) for r in records)
    assert not (tmp_path / "w.zarr").exists()


def test_export__each_bad_field_is_named_as_the_form_shows_it(tmp_path):
    p = {"region": {"spacing_m": 0}, "imagery": {"patch_px": 4, "max_cloud_cover": 150}}
    state = export(**p, return_state=True)
    assert state.is_failed()
    assert state.message == (
        "region › Grid spacing (m): Input should be greater than 0; "
        "imagery › Max cloud cover (%): Input should be less than or equal to 100; "
        "imagery › Patch size (px): Input should be greater than or equal to 8"
    )


def test_export__a_refused_run_ends_failed_with_the_refusal_and_no_traceback(tmp_path):
    (tmp_path / "file").write_text("not a folder\n")
    store = str(tmp_path / "file" / "e.zarr")
    p = {"output": {"store": store, "work_dir": str(tmp_path / "work")}}
    with deployment_logs() as records:
        raised = run_as_deployment(p)
    assert isinstance(raised, UsageError)
    assert "output › Output store" in str(raised) and "--out" not in str(raised)
    assert tracebacks(records) == []
    assert any(r.levelno == logging.ERROR and str(raised) in r.getMessage() for r in records)
    state = export(**p, return_state=True)
    assert state.is_failed() and state.message == str(raised)


def test_export__a_store_of_another_layout_is_refused_and_left_alone(tmp_path, served_demo):
    first = export(**params(tmp_path, served_demo.url, models=["ssl4eo_resnet18_rgb"]))
    before = snapshot(Path(first["store"]))
    with pytest.raises(UsageError, match="holds a different export"):
        export(**params(tmp_path, served_demo.url, models=["dofa_base"]))
    assert snapshot(Path(first["store"])) == before


def test_export__refresh_redoes_every_chunk_and_gives_the_same_store(tmp_path, served_demo):
    first = export(**params(tmp_path, served_demo.url, models=["ssl4eo_resnet18_rgb"]))
    before = {k: v for k, v in xr.open_zarr(first["store"]).load().data_vars.items()}
    fetched = tif_requests(served_demo.log)
    p = params(tmp_path, served_demo.url, models=["ssl4eo_resnet18_rgb"])
    p["output"] = p["output"].model_copy(update={"refresh": True})
    export(**p)
    assert tif_requests(served_demo.log) > fetched, "--refresh must fetch again"
    after = xr.open_zarr(first["store"]).load()
    for name, var in before.items():
        np.testing.assert_array_equal(after[name].values, var.values, err_msg=name)


def artifacts_of(state) -> dict:
    run_filter = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        return {a.key: a for a in client.read_artifacts(flow_run_filter=run_filter)}


def test_export__leaves_a_progress_and_a_summary_artifact(tmp_path, served_demo):
    p = params(tmp_path, served_demo.url, models=["ssl4eo_resnet18_rgb"])
    state = export(**p, return_state=True)
    summary = state.result()
    artifacts = artifacts_of(state)
    progress, n = artifacts["swath-export-progress"], summary["chunks"]
    assert progress.data == 100.0
    # A percentage, and what it is of:
    assert progress.description == (
        f"{n} of {n} (chunk, model) pairs of {summary['store']} finished: {n} written by this run"
    )
    rerun = artifacts_of(export(**p, return_state=True))["swath-export-progress"]
    assert rerun.data == 100.0
    assert rerun.description == (
        f"{n} of {n} (chunk, model) pairs of {summary['store']} finished: 0 written by this "
        f"run, {n} done before it"
    )
    table = str(artifacts["swath-export-summary"].data)
    assert f"| ssl4eo_resnet18_rgb | {summary['points']} | 0 | 0 | 0 |" in table
    row = next(line for line in table.splitlines() if line.startswith("| ssl4eo"))
    assert row.endswith("| **RANDOM** seed=0 | float32 |"), row  # narrow cells
    assert summary["store"] in table
    quicklook = str(artifacts["swath-quicklook-ssl4eo-resnet18-rgb"].data)
    assert "](data:image/png;base64," in quicklook
    png = Path(f"{summary['store']}.quicklook/ssl4eo_resnet18_rgb-{summary['window'][0]}.png")
    assert png.is_file() and png.name in quicklook


def test_export__int8_store_decodes_close_to_float32_and_reports_its_cosine(tmp_path, served_demo):
    model = ["ssl4eo_resnet18_rgb"]
    full = export(**params(tmp_path, served_demo.url, models=model, store="f.zarr"))
    p = params(tmp_path, served_demo.url, models=model, store="q.zarr")
    p["output"] = p["output"].model_copy(update={"dtype": "int8"})
    small = export(**p)  # the same results, written compact
    cosine = small["models"]["ssl4eo_resnet18_rgb"]["worst_cosine_to_float32"]
    assert 0.999 <= cosine < 1.0
    assert "worst_cosine_to_float32" not in full["models"]["ssl4eo_resnet18_rgb"]
    assert xr.open_zarr(small["store"]).ssl4eo_resnet18_rgb.dtype == np.int8
    a = open_store(full["store"]).ssl4eo_resnet18_rgb.values[0].astype("f8")
    b = open_store(small["store"]).ssl4eo_resnet18_rgb.values[0].astype("f8")
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() == pytest.approx(cosine, abs=1e-6)


def test_export__shards_none_writes_a_store_gdal_reads_and_a_rerun_keeps_it(tmp_path, served_demo):
    """GDAL before 3.13 reads no Zarr shard: `shards="none"` stores plain chunks, which
    rasterio's GDAL reads value for value; the setting is part of the store's layout."""
    import rasterio

    model = "ssl4eo_resnet18_rgb"
    p = params(tmp_path, served_demo.url, bbox=PAST_EDGE, models=[model])
    p["output"] = p["output"].model_copy(update={"shards": "none"})
    with pytest.raises(ExportGaps) as gaps:  # the eastern points have no imagery
        export(**p)
    store = gaps.value.summary["store"]
    with xr.open_zarr(store) as ds:
        assert (ds[f"{model}_status"].values == Status.NODATA).any()
        for name in (model, f"{model}_status", f"{model}_reason", f"{model}_valid_fraction"):
            want = ds[name].values
            with rasterio.open(f'ZARR:"{store}":/{name}') as r:
                got = r.read()
            np.testing.assert_array_equal(got.reshape(want.shape), want, err_msg=name)
    before = snapshot(Path(store))
    p["output"] = p["output"].model_copy(update={"shards": "auto"})
    with pytest.raises(
        UsageError, match=r"to resume give output › Store file layout \(shards\): none"
    ):
        export(**p)
    assert snapshot(Path(store)) == before
