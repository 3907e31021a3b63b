"""The export flow, plan -> prefetch -> infer -> write, and its command line.

python -m flows.export                  # the offline demo
python -m flows.export --bbox W,S,E,N --spacing 250 --models dofa_base --out e.zarr
"""

import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from embedders.registry import get_spec
from flows.job import Job, plan_job, resolve_job
from flows.params import Imagery, Inference, Output, Region, Window
from tasks.infer import infer_task
from tasks.prefetch import prefetch_task
from tasks.store import create_store, done_mask, status_counts
from tasks.write import write_task


@flow(name="swath-export", task_runner=ThreadPoolTaskRunner(max_workers=4))  # type: ignore[arg-type]
def export(
    region: Region = Region(),  # noqa: B008 - pydantic models are immutable defaults
    window: Window = Window(),  # noqa: B008
    imagery: Imagery = Imagery(),  # noqa: B008
    inference: Inference = Inference(),  # noqa: B008
    output: Output = Output(),  # noqa: B008
) -> dict[str, Any]:
    """Export embeddings of every point of a region into one Zarr store."""
    logger = get_run_logger()
    started = time.monotonic()
    job = resolve_job(plan_job(region, window, imagery, inference, output))
    plan = job.plan
    logger.info(
        "%d points in %d chunks, models %s -> %s",
        len(plan.points),
        len(plan.chunks),
        ", ".join(r.model for r in job.runs),
        plan.store,
    )
    for name, info in job.weights.items():
        logger.info("weights of %s: %s", name, info.describe())
    if not job.resume:
        create_store(plan.store, job.layout, attrs={"region": region.model_dump(mode="json")})
    writes = _submit(job)
    failed = []
    for i, fut in enumerate(as_completed(writes), start=1):
        try:
            key = fut.result()
            logger.info("written %d/%d: %s", i, len(writes), key)
        except Exception as e:  # reported below; the chunk stays not done and reruns
            failed.append(f"{type(e).__name__}: {e}")
    summary = _summary(job, time.monotonic() - started)
    if failed:
        raise RuntimeError(
            f"{len(failed)} chunk task(s) failed, first: {failed[0]}; rerun the same command "
            "to redo only the chunks not done"
        )
    return summary


def _submit(job: Job) -> list[PrefectFuture[str]]:
    """Prefetch once per (chunk, sensor configuration), then infer and write per (chunk, model)."""
    plan = job.plan
    todo = {r.model: done_mask(plan.store, r.model, list(plan.chunks)) for r in job.runs}
    prefetches: dict[tuple[str, str], PrefectFuture[Any]] = {}
    for chunk_i, chunk in enumerate(plan.chunks):
        runs = [r for r in job.runs if not todo[r.model][chunk_i]]
        for config in {r.config for r in runs}:
            bands = sorted({b for r in runs if r.config == config for b in get_spec(r.model).bands})
            prefetches[(config.key(), chunk.key)] = prefetch_task.submit(
                chunk, bands, config, plan.inputs_path
            )
    writes = []
    for chunk_i, chunk in enumerate(plan.chunks):
        for run in job.runs:
            if todo[run.model][chunk_i]:
                continue
            pf = prefetches[(run.config.key(), chunk.key)]
            inferred = infer_task.submit(
                run, chunk, plan.inputs_path, plan.results_path, return_state=False, wait_for=[pf]
            )
            writes.append(
                write_task.submit(
                    plan.store, chunk, run.model, plan.results_path, inferred, return_state=False
                )
            )
    return writes


def _summary(job: Job, seconds: float) -> dict[str, Any]:
    models: dict[str, dict[str, Any]] = {}
    for run in job.runs:
        models[run.model] = {
            "status": status_counts(job.plan.store, run.model),
            "weights": job.weights[run.model].describe(),
        }
    return {
        "store": job.plan.store,
        "points": len(job.plan.points),
        "chunks": len(job.plan.chunks),
        "models": models,
        "seconds": round(seconds, 1),
        "all_ok": all(m["status"]["ok"] == len(job.plan.points) for m in models.values()),
    }


if __name__ == "__main__":
    from flows.cli import main

    raise SystemExit(main())
