"""Time steps of kind `acquisitions` in the inputs store: each point's acquisitions drawn,
recorded, and read one step at a time (tasks/series.py holds the arrays and their resume).

The chunk group of tasks/series.py, with the draw recorded before any pixel:

    "acquisitions": [[date, orbit, [item ids]], ...]  the acquisitions drawn, by date
    "acquired": {point id: [index or -1, ...]}        each step's acquisition; -1: padded
    "padded": {point id: why}                          a point with fewer than K

A point's steps are `TimeSteps.choose` of its valid acquisitions (the source's listing,
tasks/sources/acquisitions.py), in date order; one with fewer than K has its last steps
padded (masked, and a note says why). Step s of a band is read, for every point at once, as
each point's s-th acquisition, and stored as any step is; a rerun reads the recorded draw
and fetches only the steps missing (a complete chunk lists nothing), so every step of every
band comes from the same acquisitions. `refresh` lists and draws again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import zarr

from tasks.inputs import MissingInputsError, PrefetchReport, check_patches, dict_attr, lock_for
from tasks.series import (
    STEP_NOTES_ATTR,
    STEPS_DONE_ATTR,
    Tally,
    create_band,
    fits,
    mark_done,
    series_group,
    steps_done,
    write_step,
)
from tasks.sources.acquisitions import Acquisition, Listing, acquisition_source
from tasks.sources.sensors import SENSORS, encoding_of

if TYPE_CHECKING:
    from tasks.plan.chunks import Chunk
    from tasks.sources.registry import ImagerySource, SensorConfig

ACQUISITIONS_ATTR = "acquisitions"
ACQUIRED_ATTR = "acquired"
PADDED_ATTR = "padded"

Draw = tuple[tuple[Acquisition | None, ...], ...]  # per point of the chunk, per step


def prefetch_acquisitions(
    source: ImagerySource,
    chunk: Chunk,
    bands: Sequence[str],
    config: SensorConfig,
    inputs_path: str,
    *,
    refresh: bool = False,
) -> PrefetchReport:
    """Fetch the chunk's steps not yet stored, each point's drawn acquisition a step, one
    listing a call at most (none when every step is there)."""
    assert config.steps is not None and config.steps.kind == "acquisitions"
    lister = acquisition_source(source, config)
    spans = [(a.isoformat(), b.isoformat()) for a, b in config.spans()]
    bands = list(dict.fromkeys(bands))
    group = series_group(inputs_path, config, chunk, spans)
    shape = (len(chunk.points), len(spans), config.patch_px, config.patch_px)
    encoding = encoding_of(config.sensor)
    total = Tally()
    listing: Listing | None = None
    steps = None if refresh else recorded_draw(group, chunk)
    if steps is None:
        listing = lister.acquisitions(chunk.points, bands, config)
        total.requests += listing.requests
        steps = record_draw(inputs_path, config, chunk, group, listing)
    done = {
        b: steps_done(group, b) if not refresh and fits(group, b, shape, encoding) else set()
        for b in bands
    }
    padded = {str(p): str(w) for p, w in dict_attr(group, PADDED_ATTR).items()}
    for step in range(len(spans)):
        todo = [b for b in bands if step not in done[b]]
        if not todo:
            continue
        chosen = [row[step] for row in steps]
        notes = {p.id: padded[p.id] for p, a in zip(chunk.points, chosen, strict=True) if not a}
        values = None
        if any(chosen):
            if listing is None:  # a rerun: the recorded draw, read from a new listing
                listing = lister.acquisitions(chunk.points, bands, config)
                total.requests += listing.requests
            patches = listing.read(chosen, todo)
            check_patches(patches, chunk, todo, config)
            total.add(patches, todo)
            notes |= patches.notes
            values = patches.bands
        for band in todo:
            if not fits(group, band, shape, encoding):
                create_band(group, band, shape, encoding)
            if values is not None:  # else every point is padded: the fill (masked) stays
                write_step(group, band, step, values[band], encoding)
            done[band].add(step)
        mark_done(inputs_path, config, chunk, group, done, {step: notes})
    return PrefetchReport(
        chunk.key,
        config.key(),
        tuple(b for b in bands if b in total.bands),
        tuple(b for b in bands if b not in total.bands),
        total.requests,
        total.bytes_read,
        resampled=total.resampled,
        flagged=tuple(sorted(total.flags.items())),
        steps=total.steps,
    )


def draw(listing: Listing, config: SensorConfig) -> Draw:
    """Each point's steps from its listed acquisitions: TimeSteps.choose, padded with None."""
    assert config.steps is not None
    k = config.steps.count
    out = []
    for acquisitions in listing.acquisitions:
        picked = [acquisitions[i] for i in config.steps.choose([a.key for a in acquisitions])]
        out.append((*picked, *([None] * (k - len(picked)))))
    return tuple(out)


def record_draw(
    inputs_path: str, config: SensorConfig, chunk: Chunk, group: zarr.Group, listing: Listing
) -> Draw:
    """Draw the steps and record them (and why points are padded) before any pixel; steps
    stored from an earlier draw are no longer done."""
    steps = draw(listing, config)
    table = sorted({a for row in steps for a in row if a}, key=lambda a: (a.key, a.ids))
    index = {a: i for i, a in enumerate(table)}
    padded = {
        p.id: padding_reason(len(listing.acquisitions[i]), config)
        for i, p in enumerate(chunk.points)
        if None in steps[i]
    }
    with lock_for(f"{inputs_path}/{config.key()}/{chunk.key}"):
        group.attrs.update(
            {
                ACQUISITIONS_ATTR: [a.record() for a in table],
                ACQUIRED_ATTR: {
                    p.id: [index[a] if a else -1 for a in steps[i]]
                    for i, p in enumerate(chunk.points)
                },
                PADDED_ATTR: padded,
                STEPS_DONE_ATTR: {},
                STEP_NOTES_ATTR: {},
                "bands_done": [],
            }
        )
    return steps


def padding_reason(found: int, config: SensorConfig) -> str:
    assert config.steps is not None
    sensor = SENSORS.get(config.sensor)
    clouds = sensor is not None and config.source in sensor.cloud_cover_property
    limit = (
        f" of cloud cover {config.max_cloud_cover:g}% or less"
        if clouds and config.max_cloud_cover < 100
        else ""
    )
    orbit = f" ({config.orbit_pass} passes)" if config.orbit_pass else ""
    return (
        f"{found} acquisition(s){orbit} of {config.collection}{limit} between {config.start} "
        f"and {config.end} cover its {config.patch_px} px patch, fewer than "
        f"{config.steps.count}: its last {config.steps.count - found} step(s) are padded "
        "(masked)"
    )


def recorded_draw(group: zarr.Group, chunk: Chunk) -> Draw | None:
    """The draw recorded in the group; None when there is none (or it does not read)."""
    table = group.attrs.get(ACQUISITIONS_ATTR)
    acquired = dict_attr(group, ACQUIRED_ATTR)
    if not isinstance(table, list) or not acquired:
        return None
    try:
        records = [Acquisition.from_record(r) for r in table]
        return tuple(
            tuple(records[i] if i >= 0 else None for i in acquired[p.id]) for p in chunk.points
        )
    except (ValueError, KeyError, IndexError, TypeError):
        return None  # drawn again: nothing stored under it is kept


def read_draw(group: zarr.Group, chunk: Chunk, where: str) -> Draw:
    """The recorded draw, for reading a series; MissingInputsError naming the group when
    absent."""
    found = recorded_draw(group, chunk)
    if found is None:
        raise MissingInputsError(
            f"{where} records no acquisitions drawn ({ACQUISITIONS_ATTR}, {ACQUIRED_ATTR}); "
            "run prefetch for it"
        )
    return found
