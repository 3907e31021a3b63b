"""`--dry-run`: what an export would do, from the registry alone; nothing is loaded or written."""

from typing import Any


def dry_run(plan: Any) -> str:
    """What an export of `plan` would do, from the registry alone: nothing is loaded or
    written. Products that read the same sensor at the same resolution share one fetch."""
    from embedders.registry import MODELS
    from flows.job import fetch_bands
    from tasks.products import PRODUCTS

    n, chunks, patch = len(plan.points), len(plan.chunks), plan.imagery.patch_px
    grid = plan.options.output == "grid"
    # imagery to prefetch: shared by products of one source and sensor
    fetches = fetch_bands(plan.imagery, tuple(plan.inference.models))
    out_bytes = 0
    for name in plan.inference.models:
        card = PRODUCTS[name].card
        if name in MODELS:
            cells = (patch // MODELS[name].spec.grid_stride_px) ** 2 if grid else 1
        else:
            cells = patch * patch if grid else 1
        width = {"float32": 4, "float16": 2, "int8": 1}[plan.dtype]
        scales = 4 * cells if plan.dtype == "int8" else 0  # one float32 scale per vector
        out_bytes += n * (card.dim * cells * width + scales) + n * 6  # + status, valid fraction
    in_bytes = sum(n * len(bands) * patch * patch * 4 for bands in fetches.values())
    products = len(plan.inference.models)
    tasks = chunks * (len(fetches) + 2 * products)
    lines = [
        f"dry run: {n:,} points, {chunks:,} chunks of up to {plan.chunk_size}",
        f"  window {plan.window[0]}..{plan.window[1]}; {products} product(s)",
        f"  1 flow run, {tasks:,} task runs ({chunks:,} x ({len(fetches)} fetch + "
        f"{products} produce + {products} write))",
        f"  inputs fetched: {_size(in_bytes)} ({len(fetches)} sensor configuration(s): "
        + ", ".join(f"{source} {sensor}" for source, sensor, _ in fetches)
        + ")",
        f"  store per window: {_size(out_bytes)} (embeddings as {plan.dtype})",
        "  nothing was written",
    ]
    return "\n".join(lines)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} TB"
