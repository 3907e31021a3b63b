"""What an export run did: its summary (the flow's result), the summary artifact the UI
shows, and the lines the command line prints from it."""

from typing import Any

from prefect.artifacts import create_markdown_artifact
from prefect.context import FlowRunContext
from prefect_dask.task_runners import DaskTaskRunner

from flows.job import Job, Todo
from flows.naming import setting
from flows.pipeline import PartReport
from tasks.sources.gdal_log import gdal_retries
from tasks.sources.registry import get_source, plain_http_origins
from tasks.store.layout import status_counts
from tasks.store.reading import reason_groups

# Why points are not ok, in the summary: the groups of most points, each with its first ids.
REASON_GROUPS = 10
FIRST_POINTS = 3


def run_summary(
    job: Job, t: int, report: PartReport, todo: Todo, *, seconds: float, gdal_retried: int
) -> dict[str, Any]:
    """The run's summary: per model its points per status, what was redone and how it is
    stored; what was fetched, from where, on which devices, in how long."""
    models: dict[str, dict[str, Any]] = {}
    for product in job.products:
        models[product.name] = {
            "status": status_counts(job.plan.store, product.name, t),
            "reasons": reasons(job.plan.store, product.name, t),
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


def reasons(store: str, model: str, t: int) -> list[dict[str, Any]]:
    """Why the points of `model` are not ok: identical reasons grouped, the groups of most
    points first (at most REASON_GROUPS, then one of the rest), each with its status, count
    and first point ids."""
    groups = reason_groups(store, model, t, first=FIRST_POINTS)
    out: list[dict[str, Any]] = [
        {"status": g.status, "reason": g.reason, "points": g.points, "first": list(g.first)}
        for g in groups[:REASON_GROUPS]
    ]
    rest = groups[REASON_GROUPS:]
    if rest:
        out.append(
            {
                "status": "other",
                "reason": f"{len(rest)} other reasons",
                "points": sum(g.points for g in rest),
                "first": list(rest[0].first),
            }
        )
    return out


def reason_text(group: dict[str, Any]) -> str:
    """One group of reasons in words: '59 points no data: <reason>'."""
    why = group["reason"] or "not written yet (their chunk did not finish)"
    status = {"nodata": "no data", "failed": "failed", "pending": "pending"}.get(
        group["status"], group["status"]
    )
    points = "1 point" if group["points"] == 1 else f"{group['points']} points"
    return f"{points} {status}: {why}"


def reason_lines(summary: dict[str, Any]) -> list[str]:
    """Why points are not ok, per model: a line per group of identical reasons, with its
    count and first point ids (the summary artifact, the command line)."""
    lines = []
    for name, m in summary["models"].items():
        for group in m.get("reasons", []):
            first = ", ".join(group["first"])
            more = ", ..." if group["points"] > len(group["first"]) else ""
            lines.append(f"{name}: {reason_text(group)} (first: {first}{more})")
    return lines


def gaps_message(summary: dict[str, Any]) -> str:
    """The failed run's message (the UI's state, ExportGaps): the counts per model, then the
    commonest reason of each model that has points not ok."""
    gaps = "; ".join(f"{m}: {counts(s['status'])}" for m, s in summary["models"].items())
    why = [
        f"{name}: {reason_text(m['reasons'][0])}"
        + (f" (and {len(m['reasons']) - 1} other reason(s))" if len(m["reasons"]) > 1 else "")
        for name, m in summary["models"].items()
        if m.get("reasons")
    ]
    return f"not every point is ok ({gaps}); " + (
        "; ".join(why) if why else "the store's <model>_reason says why"
    )


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
        f"no point has data; the likeliest causes: no scene in the window "
        f"({setting('start')}, {setting('end')}), a cloud limit too strict "
        f"({setting('max_cloud_cover')}), a region the collection does not cover, or "
        f"{setting('bbox')} axes swapped (it is west,south,east,north); each point's reason "
        "is in the store's <model>_reason"
    )


def summary_artifact(summary: dict[str, Any]) -> None:
    """The run's summary in the UI (`summary_markdown`)."""
    create_markdown_artifact(
        key="swath-export-summary",
        description="points per status and model",
        markdown=summary_markdown(summary),
    )


def summary_markdown(summary: dict[str, Any]) -> str:
    """The run's summary as the UI shows it: a narrow table (what a weights note explains is
    listed under it, not squeezed into a cell), why points are not ok, what was fetched,
    where the store is."""
    rows, notes = [], []
    for name, m in summary["models"].items():
        weights, _, note = str(m["weights"]).partition(" (")
        if note:
            notes.append(f"- {name}: {note.removesuffix(')')}")
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
    return (
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
        + _why_section(summary)
        + f"\n\n{imagery_line(summary['imagery'])}\n\n"
        + (f"{_code(line)}\n\n" if (line := nothing_ok_line(summary)) else "")
        + "".join(f"- {line}\n" for line in flagged_lines(summary.get("flagged_items", {})))
        + "".join(f"{d}: {use}\n\n" for d, use in summary.get("devices", {}).items())
        + (f"{line}\n\n" if (line := transit_line(summary["unprotected"])) else "")
        + f"store: `{summary['store']}`\n"
    )


def _code(line: str) -> str:
    """A line for markdown: `<model>_reason` as code (as text, it would read as a tag)."""
    return line.replace("<model>_reason", "`<model>_reason`")


def _why_section(summary: dict[str, Any]) -> str:
    """The artifact's section on why points are not ok: per model, a bullet per group of
    identical reasons, with its count and its first point ids; "" when every point is ok."""
    parts = []
    for name, m in summary["models"].items():
        bullets = []
        for group in m.get("reasons", []):
            first = ", ".join(f"`{p}`" for p in group["first"])
            more = ", ..." if group["points"] > len(group["first"]) else ""
            bullets.append(f"- {reason_text(group)}; first: {first}{more}")
        if bullets:
            parts.append(f"**{name}**\n\n" + "\n".join(bullets))
    if not parts:
        return ""
    return "\n\n### Why points are not ok\n\n" + "\n\n".join(parts)


class ExportGaps(RuntimeError):
    """The export ran to the end, but not every point of every product is ok; the store
    holds what was written and why the others were not. `summary` is the run's summary.
    (Raised by calling `flows.export.export`; defined here, in a module a deployment's run
    imports by name, so that the exception is one class however the flow was loaded.)"""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.summary))
