"""Real data as it really comes: items shaped as Earth Search's and Planetary Computer's
(tests/data/stac/), their offset metadata on both sides of baseline 04.00, Sentinel-2's own
nodata, and items whose metadata contradicts their pixels (tasks/sources/plausibility.py)."""

import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr

from flows.summary import flagged_lines
from tasks.inputs import FLAGGED_ATTR, prefetch_chunk
from tasks.plan.chunks import make_chunks
from tasks.sources import plausibility
from tasks.sources.stac_api import StacApiSource
from tests.stac_api_server import BANDS, NODATA_PX, Scene, pixel_value
from tests.tasks.test_stac_api import api_of, at, config_for

OLD = Scene("old", 2)  # baseline 03.01, harmonised by definition
# A point whose visible values are those of a dark scene (B02 below 1000 DN): rows 9..14
DARK = at(12, 12)
N = 6


def expected(band: str, point_row: int = 12, point_col: int = 12, delta: float = 0.0):
    k = BANDS.index(band)
    rows = range(point_row - N // 2, point_row + N // 2)
    cols = range(point_col - N // 2, point_col + N // 2)
    return np.array([[pixel_value(r, c, k) + delta for c in cols] for r in rows], np.float32)


def search_items(api_url: str) -> list[dict]:
    with urllib.request.urlopen(f"{api_url}/search?collections=sentinel-2-l2a") as answer:
        return json.loads(answer.read())["features"]


# --- the fakes answer as the real services -------------------------------------------------


def test_fixtures__earth_search_items_carry_the_flag_and_the_offset_as_the_real_one(
    tmp_path: Path,
) -> None:
    real = json.loads(
        (Path(__file__).parents[1] / "data/stac/earth-search-sentinel-2-l2a.json").read_text()
    )
    scenes = [Scene("true", 3, baseline="05.09", flag=True), Scene("c1", 4, "05.10", flag=None)]
    with api_of(tmp_path, "earth-search", scenes) as api:
        items = {i["id"]: i for i in search_items(api.url)}
    flagged, c1 = items["true"], items["c1"]
    assert flagged["properties"]["earthsearch:boa_offset_applied"] is True
    assert "earthsearch:boa_offset_applied" not in c1["properties"]
    for item in (flagged, c1):
        assert item["assets"]["red"]["raster:bands"] == real["assets"]["red"]["raster:bands"]
        assert set(item["assets"]) >= {"blue", "blue-jp2", "green", "red", "nir", "scl"}


def test_fixtures__planetary_computer_declares_no_nodata_anywhere(tmp_path: Path) -> None:
    with api_of(tmp_path, "planetary-computer", [Scene("pc", 3, "05.10", add_dn=1000)]) as api:
        (item,) = search_items(api.url)
    for key in ("B02", "B03", "B04", "B08", "SCL"):
        assert "raster:bands" not in item["assets"][key] and "nodata" not in item["assets"][key]
    with rasterio.open(tmp_path / "planetary-computer/blobs/pc/B02.tif") as cog:
        assert cog.nodata is None  # and the COG carries no nodata tag either


# --- the offset, as each service labels it --------------------------------------------------


@pytest.mark.parametrize(
    "scene",
    [
        Scene("flag-true", 9, baseline="05.09", flag=True, delta=200),  # removed by Element 84
        Scene("c1", 9, baseline="05.10", flag=None, add_dn=1000, delta=200),  # left in the DNs
        Scene("flag-false", 9, baseline="04.00", flag=False, add_dn=1000, delta=200),
    ],
    ids=lambda s: s.id,
)
def test_offset__earth_search_items_either_side_of_04_00_composite_on_one_scale(
    tmp_path: Path, scene: Scene
) -> None:
    with api_of(tmp_path, "earth-search", [OLD, scene]) as api:
        patches = StacApiSource().fetch([DARK], list(BANDS), config_for(api, "earth-search", N))
    assert patches.flags == {} and patches.notes == {}
    for band in BANDS:  # the median of the two dates, 0 and 200 above the pattern
        np.testing.assert_array_equal(patches.bands[band][0], expected(band, delta=100))


def test_nodata__a_zero_dn_of_an_item_without_nodata_metadata_is_nodata_not_minus_1000(
    tmp_path: Path,
) -> None:
    scene = Scene("pc", 3, baseline="05.10", add_dn=1000)  # no nodata declared, none tagged
    corner = at(NODATA_PX, NODATA_PX, "corner")  # its 4 px patch is a quarter in the 0 corner
    with api_of(tmp_path, "planetary-computer", [scene]) as api:
        patches = StacApiSource().fetch(
            [corner], list(BANDS), config_for(api, "planetary-computer", 4)
        )
    for band in BANDS:
        values = patches.bands[band][0]
        assert np.isnan(values[:2, :2]).all(), band  # DN 0: no data, never 0 - 1000
        assert np.isfinite(values[2:, 2:]).all() and (values[2:, 2:] > 0).all(), band


# --- items whose metadata contradicts their pixels ------------------------------------------

# Earth Search says the offset is removed (flag true), but its values still carry it.
STILL_SHIFTED = Scene("S2B_39QTA_20210609_0_L2A", 9, baseline="05.09", flag=True, add_dn=1000)
# Earth Search says it is not (flag false, raster:bands offset -0.1), but it was removed.
ALREADY_REMOVED = Scene("S2A_39QTA_20210609_0_L2A", 9, baseline="05.09", flag=False)


@pytest.mark.parametrize(
    ("bad", "claimed", "seen"),
    [
        (STILL_SHIFTED, "earthsearch:boa_offset_applied true", "dark-object floor"),
        (ALREADY_REMOVED, "raster:bands offset -0.1", "below 0"),
    ],
    ids=["flag-true-but-shifted", "flag-false-but-removed"],
)
def test_plausibility__a_mislabelled_item_is_dropped_and_named(
    tmp_path: Path, bad: Scene, claimed: str, seen: str
) -> None:
    with api_of(tmp_path, "earth-search", [OLD, bad]) as api:
        patches = StacApiSource().fetch([DARK], list(BANDS), config_for(api, "earth-search", N))
    assert list(patches.flags) == [bad.id]
    why = patches.flags[bad.id]
    assert claimed in why and seen in why and "05.09" in why and "dropped" in why
    for band in BANDS:  # the composite is the good date's alone, never shifted by 1000
        np.testing.assert_array_equal(patches.bands[band][0], expected(band))


def test_plausibility__a_point_left_without_dates_says_which_item_was_dropped(
    tmp_path: Path,
) -> None:
    with api_of(tmp_path, "earth-search", [STILL_SHIFTED]) as api:
        patches = StacApiSource().fetch([DARK], list(BANDS), config_for(api, "earth-search", N))
    assert np.isnan(patches.bands["B02"]).all()
    assert STILL_SHIFTED.id in patches.notes[DARK.id] and "dropped" in patches.notes[DARK.id]


def test_plausibility__the_chunk_and_the_run_summary_name_the_item(tmp_path: Path) -> None:
    (chunk,) = make_chunks([DARK], 1)
    with api_of(tmp_path, "earth-search", [OLD, ALREADY_REMOVED]) as api:
        config = config_for(api, "earth-search", N)
        report = prefetch_chunk(StacApiSource(), chunk, list(BANDS), config, str(tmp_path / "in"))
    group = zarr.open_group(str(tmp_path / "in"), path=f"{config.key()}/{chunk.key}", mode="r")
    assert list(group.attrs[FLAGGED_ATTR]) == [ALREADY_REMOVED.id]
    assert dict(report.flagged) == dict(group.attrs[FLAGGED_ATTR])
    (line,) = flagged_lines(dict(report.flagged))
    assert ALREADY_REMOVED.id in line and "earthsearch:boa_offset_applied false" in line


# --- the rule, on realistic reflectances ----------------------------------------------------

RNG = np.random.default_rng(0)
# Harmonised DNs of a vegetated patch: blue, green, red around 0.04, 0.07, 0.05 reflectance
SCENE = {
    b: RNG.normal(m, 120, (16, 16)).astype(np.float32)
    for b, m in (("B02", 400), ("B03", 700), ("B04", 500))
}


def test_rule__true_harmonised_pixels_pass_whatever_was_removed() -> None:
    assert plausibility.implausible(SCENE, removed_dn=-1000, offset_possible=True) is None
    assert plausibility.implausible(SCENE, removed_dn=0, offset_possible=True) is None


def test_rule__removed_twice_and_never_removed_are_caught() -> None:
    twice = {b: v - 1000 for b, v in SCENE.items()}
    never = {b: v + 1000 for b, v in SCENE.items()}
    assert "below 0" in str(plausibility.implausible(twice, removed_dn=-1000, offset_possible=True))
    assert "floor" in str(plausibility.implausible(never, removed_dn=0, offset_possible=True))
    # before 04.00 there is no offset to forget: bright values are bright
    assert plausibility.implausible(never, removed_dn=0, offset_possible=False) is None


def test_rule__too_few_valid_pixels_are_not_judged() -> None:
    few = {
        b: np.where(np.arange(256).reshape(16, 16) < 10, v - 1000, np.nan) for b, v in SCENE.items()
    }
    assert plausibility.implausible(few, removed_dn=-1000, offset_possible=True) is None
