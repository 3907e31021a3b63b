"""From parameters to a validated export job: every check that can fail runs here, before
anything is written to the output store.

`plan_job` is cheap (no model is loaded); `resolve_products` checks the sources, then
resolves each product once (a model is loaded to learn which weights it carries, and stays
cached for the infer stage in this process); `open_job` checks the store, under its writer
lock. `job_for` does the three in that order, and a refusal at any step leaves nothing
behind. `chunks_to_do` is the one place that decides what a run does: which chunks are not
done for which products, and which fetches those share.

Names: a `Plan` is where and what (points, chunks, window, options); a `Job` is a plan with
its products resolved and its store checked; a `Todo` is what a run of a job still has to
do (a `ChunkTodo` per chunk).
"""

import atexit
import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import platformdirs
from shapely.geometry.base import BaseGeometry

from embedders.registry import unknown_model
from embedders.spec import InferenceOptions, WeightsChoice
from flows.checks import UsageError as UsageError  # raised by every check here
from flows.checks import (
    check_name_length,
    check_store_writable,
    check_writable,
    made,
    make_folder,
    store_location,
    undone_if_refused,
)
from flows.naming import given, setting
from flows.params import Imagery, Inference, Output, Region, Window, engine_options
from tasks.plan.chunks import Chunk, make_chunks
from tasks.plan.points import PointTable, discard_plan, plan_damage, plan_key, plan_points
from tasks.plan.regions import PlanError, axis_order_hint, bbox_region, geojson_region
from tasks.plan.shards import Shards
from tasks.products import registry as products
from tasks.products.registry import Fetch, Product, ProductError, ProductRequest
from tasks.sources.demo import build_demo_catalog, demo_catalog_path
from tasks.sources.registry import DEMO_CATALOG, ImagerySourceError, TransientSourceError
from tasks.sources.sensors import SENTINEL_1_SENSOR
from tasks.store import soundness
from tasks.store.compact import Dtype
from tasks.store.compatibility import check_store
from tasks.store.integrity import Damage, check_done
from tasks.store.layout import StoreLayout, StoreMismatch, is_url, time_index


@dataclass(frozen=True)
class Plan:
    """Where and what: the store, the points and their chunks, the window and the options,
    checked; no model is loaded."""

    store: str
    work_dir: str
    points: PointTable  # in the plan file; the flow never holds every point at once
    chunks: tuple[Chunk, ...]  # small keys: a task reads its own chunk's points
    region: Region
    window: tuple[date, date]  # first and last day, resolved
    imagery: Imagery
    inference: Inference
    options: InferenceOptions
    dtype: Dtype = "float32"  # how the store holds embeddings (tasks/store/compact.py)
    shards: Shards = "auto"  # how a new store's files are laid out (tasks/plan/shards.py)
    notes: tuple[str, ...] = ()  # what planning found and did about it, one line each

    @property
    def chunk_size(self) -> int:
        return self.chunks[0].size

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
    """A plan with its products resolved (models loaded) and its store checked: what an
    export runs, in this process (it is not serialised)."""

    plan: Plan
    products: tuple[Product, ...]
    layout: StoreLayout
    resume: bool  # the store exists and holds this export
    repaired: tuple[str, ...] = ()  # what was repaired in it, one line each (tasks/soundness)


@dataclass(frozen=True)
class ChunkTodo:
    """What a run does for one chunk: the fetches its products share, then the products."""

    chunk: Chunk
    fetches: tuple[Fetch, ...]  # one per sensor configuration, with the union of the bands
    products: tuple[Product, ...]  # those not done for this chunk


@dataclass(frozen=True)
class Todo:
    """What a run still has to do: the chunks not done, and per product the chunks that were marked
    done but whose data no longer matches its checksum (they are among the chunks redone)."""

    chunks: list[ChunkTodo]
    damaged: dict[str, list[Damage]]

    def damage_reports(self, window: str) -> list[str]:
        """One line per product with damaged chunks, naming the first few."""
        return [
            f"{name}: {len(found)} chunk(s) of window {window} damaged in the store "
            f"({_first_few(found)}): redoing them"
            for name, found in self.damaged.items()
            if found
        ]


def chunks_to_do(job: Job, t: int, *, refresh: bool) -> Todo:
    """For each chunk not done (for time entry `t`), what to fetch once and what to produce.

    A chunk is done when its status is set and its data matches the checksum recorded with
    it; `refresh` counts none as done."""
    chunks = list(job.plan.chunks)
    done: dict[str, list[bool]] = {}
    damaged: dict[str, list[Damage]] = {}
    for p in job.products:
        if refresh:
            done[p.name], damaged[p.name] = [False] * len(chunks), []
        else:
            done[p.name], damaged[p.name] = check_done(job.plan.store, p.name, chunks, t)
    todo = []
    for i, chunk in enumerate(chunks):
        not_done = tuple(p for p in job.products if not done[p.name][i])
        if not_done:
            todo.append(ChunkTodo(chunk, shared_fetches(not_done), not_done))
    return Todo(todo, damaged)


def _first_few(found: list[Damage], n: int = 3) -> str:
    named = ", ".join(f"{d.key}: {d.why}" for d in found[:n])
    return named + (f", and {len(found) - n} more" if len(found) > n else "")


def shared_fetches(todo: tuple[Product, ...]) -> tuple[Fetch, ...]:
    """One fetch per sensor configuration, with every band its products read (the one rule,
    `products.share`, that `--dry-run` follows too)."""
    return products.share(f for product in todo for f in product.fetches)


def plan_job(
    region: Region,
    window: Window,
    imagery: Imagery,
    inference: Inference,
    output: Output,
    *,
    today: date,
    scratch: bool = False,
) -> Plan:
    """Points, chunks and options, with every cheap check. Raises UsageError.

    `today` anchors a relative window (`previous_month`): the scheduled day of the run.
    The points go to a plan file in the work directory (reused by a rerun), or, with
    `scratch` (a dry run), to a temporary folder removed when the process ends.
    """
    try:
        geometry = _geometry(region)
    except PlanError as e:
        raise UsageError(str(e)) from e
    for name in inference.models:
        if name not in products.PRODUCTS:
            raise UsageError(unknown_model(name, products.PRODUCTS))
    _check_orbit_pass(imagery, inference.models)
    store = store_location(output.store)  # symbolic links and `..` resolved: one lock per store
    if not is_url(store) and os.path.exists(store) and not os.path.isdir(store):
        raise UsageError(
            f"output path {store} is a file, not a swath store; choose another {setting('store')}"
        )
    options = engine_options(inference)
    if inference.precision == "fp16" and inference.device == "cpu":
        raise UsageError(
            f"{setting('precision')} fp16 needs a CUDA device, and {setting('device')} is cpu; "
            f"use {setting('precision')} bf16 or fp32 on the CPU"
        )
    work_dir = os.path.abspath(output.work_dir or platformdirs.user_cache_dir("swath"))
    if not is_url(store):
        check_writable(os.path.dirname(store), f"{setting('store')} {store}", must_exist=True)
    if not is_url(work_dir):
        check_name_length(os.path.join(work_dir, "plans", "x" * 40), setting("work_dir"))
        check_writable(work_dir, f"{setting('work_dir')} {work_dir}", must_exist=False)
    notes: list[str] = []
    if region.bbox is not None and not region.geojson:
        hint = axis_order_hint(*region.bbox)
        if hint:
            notes.append(hint)
    points = _plan(
        geometry, region, os.path.join(work_dir, "plans") if not scratch else None, notes
    )
    resolved = window.resolve(today)
    per_point = point_bytes(imagery, inference, resolved)
    size = output.chunk_size or chunk_size_for(len(points), per_point)
    chunks = make_chunks(points, size)
    return Plan(
        store,
        work_dir,
        points,
        tuple(chunks),
        region,
        resolved,
        imagery,
        inference,
        options,
        output.dtype,
        output.shards,
        tuple(notes),
    )


def _check_orbit_pass(imagery: Imagery, models: list[str]) -> None:
    """An orbit pass is read by Sentinel-1 fetches alone: given for a run of which no model
    reads Sentinel-1, it is refused, not ignored."""
    if imagery.orbit_pass is None:
        return
    radar = [
        name
        for name, entry in products.PRODUCTS.items()
        if entry.facts.sensor == SENTINEL_1_SENSOR and entry.facts.bands
    ]
    if not any(name in radar for name in models):
        raise UsageError(
            f"{given(orbit_pass=imagery.orbit_pass)} is for Sentinel-1, and no model of this "
            f"run reads Sentinel-1 ({', '.join(models)}); leave {setting('orbit_pass')} out, "
            f"or add a model that reads it to {setting('models')}: {', '.join(radar)}"
        )


def _plan(
    geometry: BaseGeometry, region: Region, plan_dir: str | None, notes: list[str]
) -> PointTable:
    if plan_dir is None:
        plan_dir = tempfile.mkdtemp(prefix="swath-plan-")
        atexit.register(shutil.rmtree, plan_dir, ignore_errors=True)
    path = os.path.join(plan_dir, f"{plan_key(geometry, region.spacing_m)}.zarr")
    why = plan_damage(path) if os.path.exists(path) else None
    if why:  # made again from the region: what a plan holds is computed, never lost
        discard_plan(path)
        notes.append(f"the plan file {path} was damaged ({why}): planned again")
    existed = os.path.exists(path)
    make_folder(plan_dir)
    try:
        points = plan_points(geometry, region.spacing_m, path=path)
    except PlanError as e:
        raise UsageError(str(e)) from e
    if not existed:
        made(path)
    if not len(points):
        raise UsageError(
            f"the region yields no points at {region.spacing_m:g} m spacing; enlarge the region "
            f"or reduce {setting('spacing_m')}"
        )
    return points


# Tasks are sized by the work they carry, not by the region: a chunk holds at most this many
# bytes of input patches (its prefetch writes them, its infer task reads them at once), and
# at most MAX_CHUNK_POINTS points. A small region is still cut into MIN_CHUNKS chunks (of
# at least 32 points) so that prefetch, infer and write overlap.
TASK_INPUT_BYTES = 512 * 2**20
MAX_CHUNK_POINTS = 2048
MIN_CHUNKS = 8


def chunk_size_for(n_points: int, bytes_per_point: int) -> int:
    """The default points per chunk: bounded by the work a task carries, whatever the
    region's size (a larger region has more chunks, not larger ones)."""
    by_work = max(1, min(MAX_CHUNK_POINTS, TASK_INPUT_BYTES // max(bytes_per_point, 1)))
    return max(1, min(by_work, max(32, -(-n_points // MIN_CHUNKS))))


def product_request(
    imagery: Imagery,
    window: tuple[date, date],
    work_dir: str,
    *,
    options: InferenceOptions | None = None,
    weights: WeightsChoice = "auto",
    device: str = "cpu",
) -> ProductRequest:
    """The settings each product of a run is resolved from; a product's fetches follow from
    them and its facts alone. Where the demo catalog lies is named (it is built by
    `resolve_products`, before the sources are checked)."""
    own = imagery.source_options()
    catalog = own[imagery.source].where()
    if _demo(imagery):
        catalog = str(demo_catalog_path(Path(work_dir)))
    return ProductRequest(
        start=window[0],
        end=window[1],
        patch_px=imagery.patch_px,
        source=imagery.source,
        catalog=catalog,
        collection=imagery.collection,
        max_cloud_cover=imagery.max_cloud_cover,
        source_options=own,
        product_options=imagery.product_options(),
        options=options or InferenceOptions(),
        weights=weights,
        device=device,
    )


def _demo(imagery: Imagery) -> bool:
    """Whether the run reads the offline demo catalog."""
    own = imagery.source_options()[imagery.source]
    return imagery.source == "stac-catalog" and own.where() == DEMO_CATALOG


def planned_fetches(models: tuple[str, ...], request: ProductRequest) -> tuple[Fetch, ...]:
    """The fetches a run of `models` shares, from the products' facts alone (nothing is
    loaded): what `--dry-run` reports, by the run's own rule (`products.share`)."""
    try:
        return products.planned_fetches(models, request)
    except ProductError as e:
        raise UsageError(str(e)) from e


def point_bytes(imagery: Imagery, inference: Inference, window: tuple[date, date]) -> int:
    """Bytes of input patches one point carries through a chunk's tasks (float32): each band
    of each step of every shared fetch (Fetch.point_bytes). Where the catalog lies does not
    change them; the window does only for time series (how many steps it holds)."""
    request = product_request(imagery, window, "")
    fetches = planned_fetches(tuple(inference.models), request)
    return max(sum(f.point_bytes() for f in fetches), imagery.patch_px**2 * 4)


def _geometry(region: Region) -> BaseGeometry:
    if region.geojson:
        text = region.geojson
        source = "GeoJSON"
        if not text.lstrip().startswith(("{", "[")):
            text, source = _read_region_file(Path(text)), f"GeoJSON file {text}"
        return geojson_region(text, source=source)
    if region.bbox is None:
        raise UsageError(
            f"no region given; give {setting('bbox')} (west,south,east,north) or "
            f"{setting('geojson')}"
        )
    return bbox_region(*region.bbox)


def _read_region_file(path: Path) -> str:
    if path.is_dir():
        raise UsageError(
            f"{setting('geojson')} {path} is a folder, not a GeoJSON file; give the file's path"
        )
    if not path.is_file():
        raise UsageError(f"GeoJSON file {path} does not exist; check the {setting('geojson')} path")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(
            f"{setting('geojson')} {path} is not a GeoJSON file: it is not UTF-8 text (byte "
            f"{e.start} is {e.object[e.start : e.start + 1]!r}); give a GeoJSON file"
        ) from e
    except OSError as e:
        raise UsageError(
            f"{setting('geojson')} {path} cannot be read ({e.strerror or e}); check it"
        ) from e


@contextlib.contextmanager
def job_for(
    region: Region,
    window: Window,
    imagery: Imagery,
    inference: Inference,
    output: Output,
    *,
    today: date,
    across_machines: bool,
    planned: Callable[[Plan], None] = lambda plan: None,
) -> Iterator[Job]:
    """Plan, check and resolve an export, take its store's writer lock and check the store;
    the job, held under that lock until the block ends. Every refusal (UsageError,
    StoreBusy) comes before anything is written, and leaves the out and work folders as they
    were. `planned` hears of the plan before the slower checks start."""
    from tasks.store.locks import writer_lock

    with contextlib.ExitStack() as held:
        with undone_if_refused():
            plan = plan_job(region, window, imagery, inference, output, today=today)
            planned(plan)
            resolved = resolve_products(plan)
            if is_url(plan.store) and not plan.store.startswith("file://"):
                make_folder(plan.locks_dir)  # an object store's lock lies in the work dir
            lock = writer_lock(
                plan.store,
                wait=output.wait,
                lock_dir=plan.locks_dir,
                across_machines=across_machines,
            )
            held.enter_context(lock)
            job = open_job(plan, resolved)
        yield job


def resolve_job(plan: Plan) -> Job:
    """`resolve_products`, then `open_job` (without the writer lock: for what only reads)."""
    return open_job(plan, resolve_products(plan))


def resolve_products(plan: Plan) -> tuple[Product, ...]:
    """The sources can serve the plan's fetches (the demo catalog is built first: it is read
    as any catalog), then each product is resolved once (models are loaded). Raises
    UsageError; torch is imported only once the sources and the precomputed products have
    passed, and only when a model runs."""
    imagery = plan.imagery
    if _demo(imagery):
        catalog = demo_catalog_path(Path(plan.work_dir)).parent
        existed = catalog.exists()
        make_folder(plan.work_dir)
        build_demo_catalog(Path(plan.work_dir))
        if not existed:
            made(str(catalog))
    planned = product_request(imagery, plan.window, plan.work_dir)
    _check_sources(planned_fetches(tuple(plan.inference.models), planned))
    # Precomputed products first (a store that cannot be opened is refused without torch),
    # then the device, then the models.
    names = plan.inference.models
    is_model = {n: products.PRODUCTS[n].facts.kind == "model" for n in names}
    device: str | None = None  # resolved for the first model
    resolved: dict[str, Product] = {}
    for name in sorted(names, key=lambda n: is_model[n]):
        if is_model[name] and device is None:
            from tasks.infer import resolve_device  # torch

            try:
                device = resolve_device(plan.inference.device)
            except ValueError as e:
                raise UsageError(str(e)) from e
        request = product_request(
            imagery,
            plan.window,
            plan.work_dir,
            options=plan.options,
            weights=plan.inference.weights,
            device=device or "cpu",
        )
        try:
            resolved[name] = products.resolve(name, request)
        except ProductError as e:
            raise UsageError(str(e)) from e
    return tuple(resolved[n] for n in names)


def open_job(plan: Plan, resolved: tuple[Product, ...]) -> Job:
    """The job of a plan and its resolved products, once its store is checked: free, or
    this export's (then what a rerun repairs is repaired). Raises UsageError."""
    outputs = tuple(p.output() for p in resolved)
    layout = StoreLayout(plan.points, plan.chunk_size, outputs, plan.dtype, plan.shards)
    resume, repaired = _open_store(plan, layout)
    return Job(plan, resolved, layout, resume, repaired)


def _open_store(plan: Plan, layout: StoreLayout) -> tuple[bool, tuple[str, ...]]:
    """Whether the store exists and holds this export (then what a rerun repairs in it is
    repaired, one line each), or is free; UsageError for anything else."""
    repaired: list[str] = []
    try:
        resume = check_store(plan.store, layout)
        if resume and not is_url(plan.store):
            check_store_writable(plan.store)
        if resume:  # this export's store: what a rerun can repair is repaired first
            repaired = soundness.repair(plan.store, layout.points)
            time_index(plan.store, plan.window)  # refuses a clashing window
    except soundness.RootDamaged as e:
        raise UsageError(
            f"output store {plan.store} is damaged and a rerun cannot repair it: {e}; "
            f"export into another {setting('store')}"
        ) from e
    except StoreMismatch as e:
        raise UsageError(str(e)) from e
    return resume, tuple(repaired)


def _check_sources(fetches: tuple[Fetch, ...]) -> None:
    """Each shared fetch's source can serve it: catalog, collection, bands, one header. A
    permanent failure refuses the run; a transient one (429, 5xx, a dropped connection) does
    not: the prefetch tasks retry it with backoff."""
    from tasks.sources.acquisitions import acquisition_source
    from tasks.sources.registry import get_source

    for fetch in fetches:
        try:
            source = get_source(fetch.config.source)
            if fetch.config.steps is not None and fetch.config.steps.kind == "acquisitions":
                acquisition_source(source, fetch.config)  # refused unless it lists them
            source.check(fetch.bands, fetch.config)
        except ImagerySourceError as e:
            raise UsageError(str(e)) from e
        except TransientSourceError:
            continue
