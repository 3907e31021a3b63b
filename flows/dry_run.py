"""`--dry-run`: what an export would do, from the registry alone; nothing is loaded or written."""

from typing import Any


def dry_run(plan: Any, *, chunks_per_run: int | None = None) -> str:
    """What an export of `plan` would do, from the registry alone: nothing is loaded or
    written. The products' fetches come from their declared facts and are shared by the
    run's own rule (flows.job.planned_fetches): the same fetches as the run's.
    A new store's write blocks and the child flow runs are counted as the export makes them
    (at most `chunks_per_run` chunks per flow run)."""
    from flows.job import planned_fetches, product_request
    from flows.params import CHILD_CHUNKS
    from tasks.plan.shards import choose_block_chunks, group_blocks, split_blocks
    from tasks.products.registry import PRODUCTS
    from tasks.store.layout import REASON_BYTES

    n, chunks, patch = len(plan.points), len(plan.chunks), plan.imagery.patch_px
    grid = plan.options.output == "grid"
    # imagery to prefetch: shared as the run shares it
    request = product_request(plan.imagery, plan.window, plan.work_dir)
    fetches = planned_fetches(tuple(plan.inference.models), request)
    out_bytes = 0
    widest = 0  # bytes per point of the largest array: bounds the shard size
    for name in plan.inference.models:
        card = PRODUCTS[name].facts
        cells = (patch // card.stride_px) ** 2 if grid else 1
        width = {"float32": 4, "float16": 2, "int8": 1}[plan.dtype]
        scales = 4 * cells if plan.dtype == "int8" else 0  # one float32 scale per vector
        out_bytes += n * (card.dim * cells * width + scales) + n * 6  # + status, valid fraction
        widest = max(widest, card.dim * cells * width, REASON_BYTES)
    in_bytes = sum(n * f.point_bytes() for f in fetches)  # each step of a time series
    products = len(plan.inference.models)
    chunk_size = plan.chunks[0].stop - plan.chunks[0].start
    per_run = chunks_per_run or CHILD_CHUNKS
    k = choose_block_chunks(chunks, widest * chunk_size, at_most=per_run)
    if plan.shards == "none":
        k = 1
    groups = group_blocks(split_blocks(plan.chunks, k, lambda c: c.index), max(k, per_run))
    biggest = max(groups, key=lambda g: sum(len(b) for b in g))
    in_run, blocks = sum(len(b) for b in biggest), len(biggest)
    tasks = in_run * (len(fetches) + products) + blocks * products
    runs = "1 flow run" if len(groups) == 1 else f"1 flow run + {len(groups):,} child runs"
    lines = [
        f"dry run: {n:,} points, {chunks:,} chunks of up to {chunk_size}; "
        + (
            "no shards (one file per chunk and array)"
            if plan.shards == "none"
            else f"{k} chunk(s) per shard (write block)"
        ),
        f"  window {plan.window[0]}..{plan.window[1]}; {products} product(s)",
        f"  {runs}, at most {tasks:,} task runs each ({in_run:,} chunks x "
        f"({len(fetches)} fetch + {products} produce) + {blocks:,} blocks x {products} write)",
        f"  inputs fetched: {_size(in_bytes)} ({len(fetches)} sensor configuration(s): "
        + ", ".join(_fetch_words(f) for f in fetches)
        + ")",
        f"  store per window: {_size(out_bytes)} (embeddings as {plan.dtype})",
        *_series_work(plan.inference.models, fetches, n, patch),
        "  nothing was written",
    ]
    return "\n".join(lines)


def _series_work(names: Any, fetches: Any, n: int, patch: int) -> list[str]:
    """The forwards of each time-series product: a pixel-series model (1 px tiles) runs one
    per pixel of every patch, each a series of its steps; a tile-series model one per tile of
    every patch, each tile carrying every step."""
    from tasks.products.registry import PRODUCTS

    lines = []
    for name in names:
        facts = PRODUCTS[name].facts
        if facts.steps is None:
            continue
        steps = next(len(f.config.spans()) for f in fetches if f.config.sensor == facts.sensor)
        sensors = len(facts.sensor_bands())
        if facts.tile_px == 1:
            lines.append(
                f"  model work: {name}: {n * patch * patch:,} pixel series of {steps} steps x "
                f"{sensors} sensor(s) ({n:,} points x {patch} x {patch} px)"
            )
        else:
            lines.append(
                f"  model work: {name}: {n:,} patches of {patch} x {patch} px in "
                f"{facts.tile_px} px tiles, each tile {steps} steps x {sensors} sensor(s)"
            )
    return lines


def _fetch_words(fetch: Any) -> str:
    """`stac-catalog sentinel-2-l2a`; a time series adds its steps, each one composite (or
    one acquisition) a chunk: `stac-catalog sentinel-2-l2a x 12 steps (monthly steps, a
    composite each)`."""
    words = f"{fetch.config.source} {fetch.config.sensor}"
    if fetch.config.steps is None:
        return words
    t = len(fetch.config.spans())
    each = "one read each" if fetch.config.steps.kind == "acquisitions" else "a composite each"
    return f"{words} x {t} steps ({fetch.config.steps.describe()}, {each})"


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} TB"
