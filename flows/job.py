"""From parameters to a validated export job: every check that can fail runs here, before
anything is written to the output store.

`plan_job` is cheap (no model is loaded); `resolve_job` loads each model once (the loaded
models stay cached for the infer stage in this process) to learn which weights it carries.
"""

import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import platformdirs
from shapely.geometry.base import BaseGeometry

from embedders import registry
from embedders.spec import InferenceOptions, WeightsInfo
from embedders.tiling import grid_shape
from embedders.weights import WeightsUnavailable
from flows.params import DEMO_CATALOG, Imagery, Inference, Output, Region, Window
from tasks.demo import build_demo_catalog
from tasks.infer import ModelRun, devices_of, load_model, resolve_device
from tasks.plan import (
    Chunk,
    PlanError,
    Point,
    bbox_region,
    geojson_region,
    make_chunks,
    plan_points,
)
from tasks.sources import SensorConfig
from tasks.store import (
    ModelOutput,
    StoreLayout,
    StoreMismatch,
    check_store,
    is_url,
    time_index,
)


class UsageError(ValueError):
    """Input the user must fix; the CLI prints the message and exits 2."""


@dataclass(frozen=True)
class Plan:
    store: str
    work_dir: str
    points: tuple[Point, ...]
    chunks: tuple[Chunk, ...]
    region: Region
    window: tuple[date, date]  # first and last day, resolved
    imagery: Imagery
    inference: Inference
    options: InferenceOptions

    @property
    def inputs_path(self) -> str:
        return os.path.join(self.work_dir, "inputs.zarr")

    @property
    def locks_dir(self) -> str:
        return os.path.join(self.work_dir, "locks")

    @property
    def results_path(self) -> str:
        return os.path.join(self.work_dir, "results.zarr")


@dataclass(frozen=True)
class Job:
    plan: Plan
    runs: tuple[ModelRun, ...]
    weights: dict[str, WeightsInfo]
    layout: StoreLayout
    resume: bool  # the store exists and holds this export


def plan_job(
    region: Region,
    window: Window,
    imagery: Imagery,
    inference: Inference,
    output: Output,
    *,
    today: date,
) -> Plan:
    """Points, chunks and options, with every cheap check. Raises UsageError.

    `today` anchors a relative window (`previous_month`): the scheduled day of the run.
    """
    try:
        points = plan_points(_geometry(region), region.spacing_m)
    except PlanError as e:
        raise UsageError(str(e)) from e
    if not points:
        raise UsageError(
            f"the region yields no points at {region.spacing_m:g} m spacing; enlarge the region "
            "or reduce --spacing"
        )
    for name in inference.models:
        if name not in registry.MODELS:
            known = ", ".join(registry.MODELS)
            raise UsageError(f"unknown model '{name}'; known models: {known} (see --list-models)")
    store = output.store if is_url(output.store) else os.path.abspath(output.store)
    if not is_url(store) and os.path.exists(store) and not os.path.isdir(store):
        raise UsageError(f"output path {store} is a file, not a swath store; choose another --out")
    options = InferenceOptions(
        input_prep=inference.input_prep,
        output=inference.output,
        tile_overlap_px=inference.tile_overlap_px,
        precision=inference.precision,
        batch_size=inference.batch_size,
    )
    for name in inference.models:
        tile = registry.get_spec(name).tile_px
        if options.tile_overlap_px >= tile:
            raise UsageError(
                f"--tile-overlap {options.tile_overlap_px} is not smaller than {name}'s tile "
                f"({tile} px); use a smaller overlap"
            )
    work_dir = os.path.abspath(output.work_dir or platformdirs.user_cache_dir("swath"))
    chunks = make_chunks(points, output.chunk_size_for(len(points)))
    return Plan(
        store,
        work_dir,
        tuple(points),
        tuple(chunks),
        region,
        window.resolve(today),
        imagery,
        inference,
        options,
    )


def _geometry(region: Region) -> BaseGeometry:
    if region.geojson:
        text = region.geojson
        source = "GeoJSON"
        if not text.lstrip().startswith(("{", "[")):
            path = Path(text)
            if not path.is_file():
                raise UsageError(f"GeoJSON file {text} does not exist; check the --region path")
            text, source = path.read_text(), f"GeoJSON file {path}"
        return geojson_region(text, source=source)
    if region.bbox is None:
        raise UsageError(
            "no region given; pass --bbox west,south,east,north or --region file.geojson"
        )
    return bbox_region(*region.bbox)


def resolve_job(plan: Plan) -> Job:
    """Load each model once to resolve its weights, then check the output store.

    Raises UsageError.
    """
    catalog = plan.imagery.catalog
    if catalog == DEMO_CATALOG:
        catalog = str(build_demo_catalog(Path(plan.work_dir)))
    try:
        device = resolve_device(plan.inference.device)
    except ValueError as e:
        raise UsageError(str(e)) from e
    runs, weights, outputs = [], {}, []
    for name in plan.inference.models:
        spec = registry.get_spec(name)
        config = SensorConfig(
            sensor=spec.sensor,
            catalog=catalog,
            collection=plan.imagery.collection,
            resolution_m=spec.resolution_m,
            patch_px=plan.imagery.patch_px,
            start=plan.window[0].isoformat(),
            end=plan.window[1].isoformat(),
        )
        # loaded where the first infer will run, so that model is reused
        info = _load_weights(name, plan.inference.weights, devices_of(device)[0])
        run = ModelRun(name, config, plan.options, info.kind, info.identity, device)
        grid = None
        if plan.options.output == "grid":
            grid = grid_shape(spec, plan.options, plan.imagery.patch_px, plan.imagery.patch_px)
        provenance = {"weights_file": info.file, "weights_note": info.note, "device": device}
        outputs.append(ModelOutput(name, spec.embed_dim, grid, _layout_identity(run), provenance))
        runs.append(run)
        weights[str(name)] = info
    chunk_size = len(plan.chunks[0].points)
    layout = StoreLayout(plan.points, chunk_size, tuple(outputs))
    try:
        resume = check_store(plan.store, layout)
        if resume:
            time_index(plan.store, plan.window)  # refuses a clashing window
    except StoreMismatch as e:
        raise UsageError(str(e)) from e
    return Job(plan, tuple(runs), weights, layout, resume)


def _layout_identity(run: ModelRun) -> dict[str, object]:
    """What makes a model's variables in the store what they are, across time entries: the
    run's identity without the window (each window is its own time entry)."""
    identity = run.identity()
    sensor = dict(identity["sensor"])  # type: ignore[call-overload]
    del sensor["start"], sensor["end"]
    return {**identity, "sensor": sensor}


def _load_weights(name: str, choice: str, device: str) -> WeightsInfo:
    try:
        return load_model(name, choice, device).weights  # type: ignore[arg-type]
    except WeightsUnavailable as e:
        raise UsageError(str(e)) from e
