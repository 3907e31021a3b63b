"""What an export run did: its summary (the flow's result), the summary artifact the UI
shows, and the lines the command line prints from it."""

from typing import Any

from prefect.artifacts import create_markdown_artifact
from prefect.context import FlowRunContext
from prefect_dask.task_runners import DaskTaskRunner

from flows.job import Job, Todo
from flows.pipeline import PartReport
from tasks.sources.gdal_log import gdal_retries
from tasks.sources.registry import get_source, plain_http_origins
from tasks.store.layout import status_counts


def run_summary(
    job: Job, t: int, report: PartReport, todo: Todo, *, seconds: float, gdal_retried: int
) -> dict[str, Any]:
    """The run's summary: per model its points per status, what was redone and how it is
    stored; what was fetched, from where, on which devices, in how long."""
    models: dict[str, dict[str, Any]] = {}
    for product in job.products:
        models[product.name] = {
            "status": status_counts(job.plan.store, product.name, t),
            "redone_damaged": [d.key for d in todo.damaged.get(product.name, [])],
            "weights": product.describe(),
            "dtype": job.layout.dtype,
            "warning": product.warning(),
        }
        if product.name in report.cosines:
            models[product.name]["worst_cosine_to_float32"] = report.cosines[product.name]
    return {
        "store": job.plan.store,
        "window": [str(d) for d in job.plan.window],
        "time_index": t,
        "points": len(job.plan.points),
        "chunks": len(job.plan.chunks),
        "models": models,
        "imagery": {**report.fetched, "gdal_retries": gdal_retried},
        "unprotected": unprotected(job),
        # items whose pixels were dropped: their values contradict their offset metadata
        "flagged_items": dict(sorted(report.flagged.items())),
        "seconds": round(seconds, 1),
        "all_ok": all(m["status"]["ok"] == len(job.plan.points) for m in models.values()),
        "devices": {name: use.describe() for name, use in report.devices.items()},
    }


def gdal_retries_so_far() -> int:
    """Requests GDAL retried so far in this process and, on Dask, in the cluster's workers
    (tasks/sources/gdal_log.py); the run's count is the difference over the run."""
    total = gdal_retries()
    context = FlowRunContext.get()
    runner = context.task_runner if context else None
    if isinstance(runner, DaskTaskRunner):
        total += sum(runner.client.run(gdal_retries).values())
    return total


def unprotected(job: Job) -> list[str]:
    """Where the run reads imagery over plain http:// (origins): nothing protects what
    comes from there in transit, where https has TLS's integrity checks."""
    found: set[str] = set()
    for product in job.products:
        for fetch in product.fetches:
            found |= get_source(fetch.config.source).plain_http(fetch.config)
    # A product's own settings may point it at a store of its own (--tessera-store).
    own = job.plan.imagery.product_options()
    found |= plain_http_origins([own[p.name].where() for p in job.products if p.name in own])
    return sorted(found)


def transit_line(origins: list[str]) -> str | None:
    """The summary's line for imagery read over plain http, or None when there is none."""
    if not origins:
        return None
    return (
        f"imagery read over plain http, unprotected in transit: {', '.join(origins)} "
        "(a byte changed on the way is not detected; use https where the server offers it)"
    )


def flagged_lines(flagged: dict[str, str]) -> list[str]:
    """The summary's lines for items whose pixels were dropped (tasks/sources/plausibility.py),
    one an item: its id, what its metadata claimed and what its pixels showed."""
    return [f"imagery item dropped, {item}: {why}" for item, why in flagged.items()]


def counts(status: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in status.items() if v)


def imagery_line(fetched: dict[str, int]) -> str:
    """What the run fetched, in one line (the summary artifact and the command line); the
    counts a source does not keep (requests of GDAL's own reads) are left out."""
    if not fetched["fetches"]:
        return "imagery: nothing fetched in this run"
    parts = [f"{fetched['fetches']} chunk fetch(es)"]
    if fetched["requests"]:
        parts.append(f"{fetched['requests']} request(s)")
    if fetched["bytes"]:
        parts.append(f"{fetched['bytes'] / 1e6:.1f} MB")
    gdal = fetched.get("gdal_retries", 0)
    by_gdal = f" ({gdal} of a request, by GDAL)" if gdal else ""
    parts.append(f"{fetched['retries'] + gdal} retried attempt(s){by_gdal}")
    if fetched.get("resampled"):
        parts.append(
            f"{fetched['resampled']} point(s) with pixels resampled from another UTM zone's "
            "scene (none of their own zone covers them)"
        )
    return "imagery: " + ", ".join(parts)


def nothing_ok_line(summary: dict[str, Any]) -> str | None:
    """After a run where no point of any model is ok: the likeliest causes, in one line."""
    models = summary["models"].values()
    if not summary["points"] or any(m["status"].get("ok", 0) for m in models):
        return None
    if not any(m["status"].get("nodata", 0) for m in models):
        return None  # failures, not missing imagery: each has its own reason in the store
    return (
        "no point has data; the likeliest causes: no scene in the window (--start/--end), "
        "a cloud limit too strict (--max-cloud-cover), a region the collection does not "
        "cover, or --bbox axes swapped (it is west,south,east,north); each point's reason "
        "is in the store's <model>_reason"
    )


def summary_artifact(summary: dict[str, Any]) -> None:
    """The run's summary in the UI: a narrow table (what a weights note explains is listed
    under it, not squeezed into a cell), what was fetched, where the store is."""
    rows, notes = [], []
    for name, m in summary["models"].items():
        weights, _, note = str(m["weights"]).partition(" (")
        if note:
            notes.append(f"- {name}: ({note}")
        stored = m["dtype"]
        if m.get("worst_cosine_to_float32") is not None:
            stored += f", cos ≥ {m['worst_cosine_to_float32']:.5f}"
        if m["warning"]:
            weights = "**RANDOM** " + weights.removeprefix("random ")
        status = m["status"]
        rows.append(
            f"| {name} | {status['ok']} | {status['failed']} | {status['nodata']} "
            f"| {status['pending']} | {weights} | {stored} |"
        )
    create_markdown_artifact(
        key="swath-export-summary",
        description="points per status and model",
        markdown=(
            f"## swath export\n\n{summary['points']} points, {summary['chunks']} chunks, window "
            f"{summary['window'][0]}..{summary['window'][1]}, {summary['seconds']} s\n\n"
            "| model | ok | failed | no data | pending | weights | stored |\n"
            "|---|---|---|---|---|---|---|\n"
            + "\n".join(rows)
            + ("\n\n" + "\n".join(notes) if notes else "")
            + (
                "\n\ncos: the worst cosine of a stored vector to its float32 value"
                if any("worst_cosine_to_float32" in m for m in summary["models"].values())
                else ""
            )
            + f"\n\n{imagery_line(summary['imagery'])}\n\n"
            + (f"{line}\n\n" if (line := nothing_ok_line(summary)) else "")
            + "".join(f"- {line}\n" for line in flagged_lines(summary.get("flagged_items", {})))
            + "".join(f"{d}: {use}\n\n" for d, use in summary.get("devices", {}).items())
            + (f"{line}\n\n" if (line := transit_line(summary["unprotected"])) else "")
            + f"store: `{summary['store']}`\n"
        ),
    )
