"""Whether an item's pixels fit the offset its metadata made swath remove (Sentinel-2 L2A).

swath removes ESA's +1000 DN offset per item from the item's metadata (tasks/sources/sensors.py
s2_offset_decision). Metadata is sometimes wrong: Earth Search items whose
`earthsearch:boa_offset_applied` says false while the offset was removed already, and the
reverse. A wrong item shifts every value of its date by 1000 DN (0.1 reflectance), which a
median over a few dates passes on to the embeddings without a trace. So after the offset is
removed, each date of an item is checked on the pixels swath read of it (the patches of one
load: a chunk's points near each other), over the visible bands it fetched (B02, B03, B04),
valid pixels only (not nodata, not a masked scene class, not snow):

- **Removed twice.** Where swath removed 1000 DN, more than NEGATIVE_SHARE_LIMIT (25 %) of
  those pixels below 0. Harmonised visible reflectance is negative only over the darkest
  water and shadows (the reason ESA added the offset), a few percent of a patch at most;
  an item whose offset was removed already and is removed again puts every pixel darker
  than 0.1 reflectance (vegetation, water, most soils in blue and red) below 0.
- **Never removed.** Where swath removed nothing although the item's baseline is 04.00 or
  later (an Earth Search flag saying the offset is removed already), a dark-object floor at
  or above FLOOR_LIMIT_DN (1000 DN): the smallest, over the visible bands, of each band's 1st
  percentile. Values that still carry the offset cannot go below 1000 unless reflectance is
  negative; harmonised values of real scenes have a darker 1 % than 0.1 reflectance in at
  least one visible band, except snow (left out), cloud SCL missed, or the brightest
  deserts, which this check may flag wrongly.

Fewer than MIN_PIXELS valid pixels (in all visible bands together) are not checked. A date
that fails is dropped: its pixels are masked, and the item is named with what its metadata
claimed and what its pixels showed (the run's summary and the chunk's inputs group). Dropping
rather than keeping it flagged: a kept date moves the median of every pixel it covers by up
to 1000 DN, and the embeddings with it, where a dropped date costs one date of the composite
(or, as the last date, the point's data, with a reason naming the item). Correcting the
offset instead would trust a guess over both the metadata and a rule of thumb.
"""

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pystac

from tasks.sources import sensors

VISIBLE_BANDS = ("B02", "B03", "B04")
NEGATIVE_SHARE_LIMIT = 0.25
FLOOR_PERCENTILE = 1.0
FLOOR_LIMIT_DN = 1000.0
MIN_PIXELS = 32


def implausible(
    harmonised: Mapping[str, np.ndarray], *, removed_dn: float, offset_possible: bool
) -> str | None:
    """What the pixels of one date show against the offset removed from them, or None when
    they fit it. `harmonised`: band -> values after the offset was removed, NaN where not
    valid; `removed_dn`: what was added (0 or -1000); `offset_possible`: whether the item's
    baseline is 04.00 or later."""
    values = [np.asarray(harmonised[b]) for b in VISIBLE_BANDS if b in harmonised]
    valid = [v[np.isfinite(v)] for v in values]
    count = sum(v.size for v in valid)
    if count < MIN_PIXELS:
        return None
    names = "/".join(b for b in VISIBLE_BANDS if b in harmonised)
    if removed_dn < 0:
        share = sum(int((v < 0).sum()) for v in valid) / count
        if share > NEGATIVE_SHARE_LIMIT:
            return (
                f"{share:.0%} of its valid {names} pixels are below 0 after removing "
                f"{-removed_dn:.0f} DN: its values had the offset removed already"
            )
    elif offset_possible:
        floor = min(float(np.percentile(v, FLOOR_PERCENTILE)) for v in valid if v.size)
        if floor >= FLOOR_LIMIT_DN:
            return (
                f"its dark-object floor (the smallest 1st percentile of {names}) is "
                f"{floor:.0f} DN, at or above the {FLOOR_LIMIT_DN:.0f} DN offset: its values "
                "still carry the offset"
            )
    return None


def items_by_date(items: Sequence[pystac.Item], days: dict[str, Any]) -> list[list[pystac.Item]]:
    """The items of each time step of a load, in order: odc-stac sorts its groups by key."""
    by_day: dict[Any, list[pystac.Item]] = defaultdict(list)
    for item in items:
        by_day[days[item.id]].append(item)
    return [by_day[day] for day in sorted(by_day)]


def drop_implausible(
    harmonised: dict[str, np.ndarray],
    bright: np.ndarray,
    dates: list[list[pystac.Item]],
    removed: dict[str, float],
    assets: dict[str, str],
) -> dict[str, str]:
    """Mask (in place) the dates whose pixels contradict the offset removed from them
    (`removed`: band -> DN added); the items of those dates -> what their metadata claimed
    and what their pixels showed."""
    visible = [b for b in VISIBLE_BANDS if b in harmonised]
    if not visible:
        return {}
    removed_dn = min(removed[b] for b in visible)
    flags = {}
    for t, items in enumerate(dates):
        pixels = {b: np.where(bright[t], np.float32(np.nan), harmonised[b][t]) for b in visible}
        possible = any(sensors.s2_offset_possible(item.properties) for item in items)
        why = implausible(pixels, removed_dn=removed_dn, offset_possible=possible)
        if why is None:
            continue
        for values in harmonised.values():
            values[t] = np.nan
        for item in items:
            fields = item.assets[assets[visible[0]]].extra_fields
            _, claimed = sensors.s2_offset_decision(item.properties, fields)
            flags[item.id] = f"its metadata says {claimed}, but {why}; its pixels were dropped"
    return flags
