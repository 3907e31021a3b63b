"""Time steps of kind acquisitions: each point's valid acquisitions in the window listed,
K drawn with a fixed seed, each read as its own image (no median), stored (point, step, N, N)
per band with its date, padded where a point has fewer, resumed step by step."""

import dataclasses
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pystac
import pytest
import zarr
from odc.geo.geom import BoundingBox

from embedders.steps import TimeSteps
from tasks.acquisitions import ACQUIRED_ATTR, ACQUISITIONS_ATTR
from tasks.inputs import MissingInputsError, prefetch_chunk
from tasks.plan.chunks import Chunk
from tasks.plan.points import Point
from tasks.products import registry as products
from tasks.products.product import fetches_of
from tasks.series import Series, read_series
from tasks.sources import sensors
from tasks.sources.acquisitions import Acquisition, Listing
from tasks.sources.earthengine import EarthEngineSource
from tasks.sources.registry import (
    EarthEngineOptions,
    ImagerySourceError,
    Patches,
    SensorConfig,
    StacApiOptions,
    TransientSourceError,
)
from tasks.sources.stac_api import StacApiSource
from tasks.sources.stac_catalog import StacCatalogSource
from tests import rasters
from tests.ee_server import serve_earthengine, service_account_key
from tests.stac_api_server import S1_BANDS, Scene, pixel_value, serve_stac_api
from tests.stac_api_server import X0 as API_X0
from tests.stac_api_server import Y0 as API_Y0
from tests.tasks import test_sentinel1 as s1
from tests.tasks.test_products import DEMO, DEMO_KEY, REQUEST

EPSG, X0, Y0, RES, SIZE, N = 32633, 500_000.0, 5_000_000.0, 10.0, 40, 4
BANDS = ("B02", "B04")
CLOUD = 9  # the SCL class of cloud (high probability): masked
# id, date, what it adds to every pixel, cloud cover, whether it covers the east half too
ITEMS = (
    ("a", date(2021, 1, 10), 0, 5.0, True),
    ("b", date(2021, 2, 5), 100, 5.0, True),
    ("c", date(2021, 2, 25), 300, 90.0, True),  # above the limit: never an acquisition
    ("d", date(2021, 3, 9), 700, 5.0, False),  # the west half only
    ("e", date(2021, 3, 20), 1500, 5.0, True),  # SCL cloud over rows 0..9
)
WEST, EAST = 8, 30  # the points' columns (and rows): p0 sees a, b, d, e; p1 sees a, b, e


def make_catalog(root: Path) -> str:
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    catalog = pystac.Catalog(id="acq", description="one scene a date, values by date")
    for name, day, add, cover, whole in ITEMS:
        width = SIZE if whole else SIZE // 2
        box = BoundingBox(X0, Y0 - SIZE * RES, X0 + width * RES, Y0, crs=f"EPSG:{EPSG}")
        lonlat = box.polygon.to_crs("EPSG:4326")
        item = pystac.Item(
            id=f"{name}-{day}",
            geometry=lonlat.json,
            bbox=list(lonlat.boundingbox),
            datetime=datetime(day.year, day.month, day.day, 10, tzinfo=UTC),
            properties={"eo:cloud_cover": cover},
            collection="acq",
        )
        (root / item.id).mkdir(parents=True)
        scl = np.full((SIZE, width), 4, np.uint8)
        if name == "e":
            scl[:10] = CLOUD
        write(root / item.id / "SCL.tif", scl, item)
        for k, band in enumerate(BANDS):
            values = (rows * 10 + cols + 1000 + add + k)[:, :width].astype(np.uint16)
            write(root / item.id / f"{band}.tif", values, item)
        catalog.add_item(item)
    catalog.normalize_hrefs(str(root))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return str(root / "catalog.json")


def write(path: Path, data: np.ndarray, item: pystac.Item) -> None:
    rasters.write_cog(path, data, epsg=EPSG, x0=X0, y0=Y0, res=RES, nodata=0)
    item.add_asset(path.stem, pystac.Asset(str(path), media_type=pystac.MediaType.COG))


def expected(item: str, band: str, at: int) -> np.ndarray:
    """The item's own pixels on the patch of the point at (at, at); NaN under its cloud."""
    add = next(a for name, _, a, _, _ in ITEMS if name == item)
    rows, cols = np.mgrid[at - N // 2 : at + N // 2, at - N // 2 : at + N // 2]
    values = (rows * 10 + cols + 1000 + add + BANDS.index(band)).astype(np.float32)
    return np.where((rows < 10) & (item == "e"), np.float32(np.nan), values)


def config(catalog: str, count: int = 3, seed: int = 0) -> SensorConfig:
    return SensorConfig(
        "sentinel-2-l2a",
        catalog,
        "acq",
        RES,
        N,
        "2021-01-01",
        "2021-03-31",
        max_cloud_cover=50.0,
        steps=TimeSteps("acquisitions", count, seed),
    )


def chunk() -> Chunk:
    points = [
        Point(f"p{k}", 15.0, 45.0, EPSG, X0 + at * RES, Y0 - at * RES)
        for k, at in enumerate((WEST, EAST))
    ]
    return Chunk.of(0, 0, points)


class Recording:
    """The real stac-catalog source, recording its listings and each read's acquisitions
    (per point, their dates) and bands; a read fails transiently on the dates in `fail`."""

    def __init__(self, fail: Sequence[str] = ()) -> None:
        self.source = StacCatalogSource()
        self.listings = 0
        self.reads: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
        self.fail = set(fail)

    def fetch(self, points: Sequence[Point], bands: Sequence[str], config: SensorConfig) -> Patches:
        raise AssertionError("acquisitions are never fetched as a composite")

    def acquisitions(
        self, points: Sequence[Point], bands: Sequence[str], config: SensorConfig
    ) -> Listing:
        self.listings += 1
        listing = self.source.acquisitions(points, bands, config)
        inner = listing.read

        def read(chosen: Sequence[Acquisition | None], bands: Sequence[str]) -> Patches:
            dates = tuple(a.date if a else "" for a in chosen)
            self.reads.append((dates, tuple(bands)))
            if self.fail & set(dates):
                raise TransientSourceError(f"the source failed on {dates}")
            return inner(chosen, bands)

        listing.read = read  # type: ignore[method-assign]
        return listing


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_catalog(tmp_path_factory.mktemp("acq"))


def item_of(a: Acquisition | None) -> str:
    assert a is not None and len(a.ids) == 1
    return a.ids[0][0]


# --- the draw and the keys ------------------------------------------------------------------


def test_choose__a_seed_draws_the_same_acquisitions_every_time_in_date_order() -> None:
    keys = [f"2021-{m:02d}-{d:02d}" for m in range(1, 13) for d in (3, 17)]
    steps = TimeSteps("acquisitions", 5, seed=7)
    drawn = steps.choose(keys)
    assert drawn == steps.choose(keys) == sorted(drawn) and len(set(drawn)) == 5
    assert TimeSteps("acquisitions", 5, seed=8).choose(keys) != drawn
    # an acquisition's rank is its own: a point that also sees another scene keeps its draw
    # wherever the other one does not win a place
    assert steps.choose(keys[:3]) == [0, 1, 2]  # fewer than count: every one
    with pytest.raises(ValueError, match=r"acquisitions need a count of at least 1, got 0"):
        TimeSteps("acquisitions")
    with pytest.raises(ValueError, match=r"monthly take no seed .*leave seed out"):
        TimeSteps("monthly", 12, seed=3)


def test_key__count_and_seed_name_the_group_and_other_keys_stay() -> None:
    assert DEMO.key() == DEMO_KEY  # no steps: as before
    monthly = dataclasses.replace(DEMO, steps=TimeSteps("monthly", 12))
    assert monthly.record()["steps"] == {"kind": "monthly", "count": 12}  # no seed
    acq = dataclasses.replace(DEMO, steps=TimeSteps("acquisitions", 40, seed=0))
    assert acq.record()["steps"] == {"kind": "acquisitions", "count": 40, "seed": 0}
    assert acq.identity()["steps"] == {"kind": "acquisitions", "count": 40, "seed": 0}
    keys = {
        c.key()
        for c in (
            acq,
            dataclasses.replace(acq, steps=TimeSteps("acquisitions", 40, seed=1)),
            dataclasses.replace(acq, steps=TimeSteps("acquisitions", 20, seed=0)),
            monthly,
            DEMO,
        )
    }
    assert len(keys) == 5


def test_dry_run__k_acquisitions_carry_k_times_a_composites_bytes() -> None:
    facts = products.PRODUCTS["ssl4eo_resnet18_rgb"].facts
    (single,) = fetches_of("rgb", facts, REQUEST)
    stepped = dataclasses.replace(facts, steps=TimeSteps("acquisitions", 40, seed=0))
    (series,) = fetches_of("acq", stepped, REQUEST)
    assert series.config.steps == TimeSteps("acquisitions", 40)
    assert series.point_bytes() == 40 * single.point_bytes()


# --- the store ------------------------------------------------------------------------------


def test_acquisitions__round_trip_each_step_one_acquisition_with_its_day_of_year(
    catalog: str, tmp_path: Path
) -> None:
    source, c = Recording(), chunk()
    report = prefetch_chunk(source, c, BANDS, config(catalog), str(tmp_path))
    assert (report.fetched, report.steps, source.listings) == (BANDS, 3, 1)
    series = read_series(str(tmp_path), config(catalog), c, ["B04", "B02"])
    assert series.values.shape == (2, 3, 2, N, N)
    assert series.acquisitions is not None
    # p0 sees a, b, d, e (c is too cloudy) and draws 3 of them; p1 sees a, b, e: all three
    drawn = [[item_of(a) for a in row] for row in series.acquisitions]
    assert drawn[1] == ["a", "b", "e"]
    assert len(drawn[0]) == 3 and set(drawn[0]) < {"a", "b", "d", "e"}
    assert drawn[0] == sorted(drawn[0])  # in date order
    days = {name: day for name, day, *_ in ITEMS}
    for p, at in enumerate((WEST, EAST)):
        for step, item in enumerate(drawn[p]):
            assert series.day_of_year[p, step] == days[item].timetuple().tm_yday
            assert series.acquisitions[p][step] == Acquisition(
                days[item].isoformat(), (f"{item}-{days[item]}",)
            )
            for k, band in enumerate(("B04", "B02")):
                np.testing.assert_array_equal(
                    series.values[p, step, k], expected(item, band, at)
                )  # the acquisition itself, not a median; SCL clouds masked
    # p0's patch (rows 6..9) lies under e's cloud: a step of e is all masked, and says why
    clouded = [
        [item == "e" and at == WEST for item in drawn[p]] for p, at in enumerate((WEST, EAST))
    ]
    assert series.valid.tolist() == [[not c for c in row] for row in clouded]
    for step, cloud in enumerate(clouded[0]):
        note = series.step_notes.get(step, {}).get("p0", "")
        assert note.startswith("acquisition 2021-03-20: every pixel") if cloud else not note
    assert series.notes() == {}
    group = zarr.open_group(str(tmp_path), path=f"{config(catalog).key()}/{c.key}", mode="r")
    assert len(group.attrs[ACQUISITIONS_ATTR]) == len({*drawn[0], *drawn[1]})
    assert set(group.attrs[ACQUIRED_ATTR]) == {"p0", "p1"}


def test_acquisitions__the_same_seed_draws_the_same_and_another_draws_another(
    catalog: str, tmp_path: Path
) -> None:
    def drawn(path: Path, count: int, seed: int) -> list[list[str]]:
        prefetch_chunk(Recording(), chunk(), ["B02"], config(catalog, count, seed), str(path))
        series = read_series(str(path), config(catalog, count, seed), chunk(), ["B02"])
        assert series.acquisitions is not None
        return [[item_of(a) for a in row] for row in series.acquisitions]

    first = drawn(tmp_path / "one", 2, 0)
    assert drawn(tmp_path / "two", 2, 0) == first  # another store, the same draw
    others = {str(drawn(tmp_path / f"seed{s}", 2, s)) for s in range(1, 6)}
    assert others - {str(first)}, "some other seed draws other acquisitions"


def test_acquisitions__a_point_with_fewer_than_k_is_padded_with_the_reason(
    catalog: str, tmp_path: Path
) -> None:
    c = chunk()
    prefetch_chunk(Recording(), c, BANDS, config(catalog, 4), str(tmp_path))
    series = read_series(str(tmp_path), config(catalog, 4), c, ["B02"])
    assert series.acquisitions is not None
    assert [item_of(a) for a in series.acquisitions[0]] == ["a", "b", "d", "e"]
    assert series.acquisitions[1][3] is None and series.day_of_year[1, 3] == 0
    assert np.isnan(series.values[1, 3]).all()
    assert series.valid.tolist() == [
        [True, True, True, False],
        [True, True, True, False],
    ]  # cloud, pad
    assert series.step_notes[3]["p1"] == (
        "3 acquisition(s) of acq of cloud cover 50% or less between 2021-01-01 and "
        "2021-03-31 cover its 4 px patch, fewer than 4: its last 1 step(s) are padded (masked)"
    )
    assert "p1" not in series.step_notes.get(2, {})


def test_acquisitions__a_point_no_scene_covers_has_every_step_padded(
    catalog: str, tmp_path: Path
) -> None:
    far = Point("far", 15.0, 45.0, EPSG, X0 + 5_000.0, Y0 - 5_000.0)
    c = Chunk.of(0, 0, [*chunk().points, far])
    source = Recording()
    prefetch_chunk(source, c, ["B02"], config(catalog), str(tmp_path))
    series = read_series(str(tmp_path), config(catalog), c, ["B02"])
    assert not series.valid[2].any() and np.isnan(series.values[2]).all()
    assert series.notes()["far"].startswith("no data in any step: step 0: 0 acquisition(s)")
    assert all(dates[2] == "" for dates, _ in source.reads)


def test_acquisitions__a_complete_chunk_lists_and_reads_nothing_again(
    catalog: str, tmp_path: Path
) -> None:
    c = chunk()
    prefetch_chunk(Recording(), c, BANDS, config(catalog), str(tmp_path))
    source = Recording()
    report = prefetch_chunk(source, c, BANDS, config(catalog), str(tmp_path))
    assert (source.listings, source.reads, report.fetched, report.steps) == (0, [], (), 0)


def test_acquisitions__a_prefetch_that_died_half_way_reads_only_the_missing_steps(
    catalog: str, tmp_path: Path
) -> None:
    c, inputs = chunk(), str(tmp_path)
    # e, the latest acquisition, is p1's last step (p1 sees a, b, e): the third read fails
    first = Recording(fail=["2021-03-20"])
    with pytest.raises(TransientSourceError):
        prefetch_chunk(first, c, BANDS, config(catalog), inputs)
    assert len(first.reads) == 3
    with pytest.raises(MissingInputsError, match=r"lacks steps \{'B02': \[2\]"):
        read_series(inputs, config(catalog), c, ["B02"])
    source = Recording()
    report = prefetch_chunk(source, c, BANDS, config(catalog), inputs)
    assert (source.listings, report.steps) == (1, 1)
    assert source.reads == first.reads[2:]  # the step missing, of the recorded draw
    series = read_series(inputs, config(catalog), c, BANDS)
    np.testing.assert_array_equal(series.values[1, 2, 1], expected("e", "B04", EAST))


def test_acquisitions__a_new_band_is_read_from_the_recorded_acquisitions(
    catalog: str, tmp_path: Path
) -> None:
    c, inputs = chunk(), str(tmp_path)
    before = Recording()
    prefetch_chunk(before, c, ["B02"], config(catalog), inputs)
    after = Recording()
    report = prefetch_chunk(after, c, BANDS, config(catalog), inputs)
    assert (report.fetched, report.reused) == (("B04",), ("B02",))
    assert [r[0] for r in after.reads] == [r[0] for r in before.reads]
    assert all(bands == ("B04",) for _, bands in after.reads)


def test_acquisitions__a_source_that_lists_none_is_refused_naming_those_that_do(
    catalog: str, tmp_path: Path
) -> None:
    class CompositesOnly:
        def fetch(
            self, points: Sequence[Point], bands: Sequence[str], cfg: SensorConfig
        ) -> Patches:
            raise AssertionError("not reached")

    with pytest.raises(ImagerySourceError, match=r"does not list single acquisitions.*stac-api"):
        prefetch_chunk(CompositesOnly(), chunk(), BANDS, config(catalog), str(tmp_path))  # type: ignore[arg-type]


# --- the STAC API and Sentinel-1 ------------------------------------------------------------


def test_stac_api__one_search_lists_the_acquisitions_and_each_is_read_alone(
    tmp_path: Path,
) -> None:
    scenes = [Scene("j2", 2), Scene("j9", 9, delta=200), Scene("j20", 20, delta=500)]
    row = col = 40
    point = Point("p", 15.0, 45.0, EPSG, API_X0 + col * RES, API_Y0 - row * RES)
    cfg = SensorConfig(
        "sentinel-2-l2a", "", "sentinel-2-l2a", RES, N, "2021-06-01", "2021-06-30",
        source="stac-api", max_cloud_cover=80.0, steps=TimeSteps("acquisitions", 2, seed=3),
        options=StacApiOptions(stac_signing="planetary-computer"),
    )  # fmt: skip
    with serve_stac_api(tmp_path, scenes) as api:
        cfg = dataclasses.replace(cfg, catalog=api.url)
        report = prefetch_chunk(
            StacApiSource(), Chunk.of(0, 0, [point]), ["B02"], cfg, str(tmp_path)
        )
        searches = len(api.searches)
    assert searches == 1 and report.steps == 2
    series = read_series(str(tmp_path), cfg, Chunk.of(0, 0, [point]), ["B02"])
    assert series.acquisitions is not None
    deltas = {s.id: s.delta for s in scenes}
    for step, a in enumerate(series.acquisitions[0]):
        assert a is not None and a.date.startswith("2021-06-")
        (scene,) = a.ids
        assert series.day_of_year[0, step] == date.fromisoformat(a.date).timetuple().tm_yday
        want = [
            [pixel_value(row - N // 2 + r, col - N // 2 + c) + deltas[scene] for c in range(N)]
            for r in range(N)
        ]
        np.testing.assert_array_equal(series.values[0, step, 0], np.array(want, np.float32))


def test_sentinel1__acquisitions_of_one_orbit_pass_in_db_each_its_own(tmp_path: Path) -> None:
    scenes = [
        s1.SCENE,  # day 9, descending, delta 0
        Scene("s1-asc", 15, sensor="s1", delta=-6.0, orbit_state="ascending"),
        Scene("s1-late", 21, sensor="s1", delta=-2.0),
    ]
    with serve_stac_api(tmp_path / "pc", scenes):
        catalog = s1.static_catalog(tmp_path / "pc", scenes)
    steps = TimeSteps("acquisitions", 3, seed=0)
    cfg = dataclasses.replace(
        s1.config("stac-catalog", catalog, orbit_pass="descending"), steps=steps
    )
    c = Chunk.of(0, 0, s1.points())
    prefetch_chunk(StacCatalogSource(), c, s1.ASKED, cfg, str(tmp_path / "inputs"))
    series = read_series(str(tmp_path / "inputs"), cfg, c, list(S1_BANDS))
    assert series.acquisitions is not None
    for i, p in enumerate(s1.points()):
        got = [(a.date, a.orbit) if a else None for a in series.acquisitions[i]]
        assert got == [("2021-06-09", "descending"), ("2021-06-21", "descending"), None]
        assert series.day_of_year[i].tolist() == [160, 172, 0]
        for k, band in enumerate(S1_BANDS):
            for step, delta in enumerate((0.0, -2.0)):
                want = s1.expected(p, band, delta)  # nodata and border noise masked
                np.testing.assert_allclose(series.values[i, step, k], want, atol=1e-3)
        assert "(descending passes)" in series.step_notes[2][p.id]


def test_series__monthly_steps_give_their_middle_day_and_valid_where_a_pixel_is_not_masked() -> (
    None
):
    values = np.ones((1, 2, 1, 2, 2), np.float32)
    values[0, 1] = np.nan
    series = Series(
        point_ids=("p",),
        bands=("B02",),
        values=values,
        spans=(("2021-01-01", "2021-01-31"), ("2021-02-01", "2021-02-28")),
        step_notes={1: {"p": "every pixel masked"}},
    )
    assert series.day_of_year.tolist() == [[16, 45]]  # 16 January, 14 February
    assert series.valid.tolist() == [[True, False]]
    assert series.acquisitions is None and series.notes() == {}


def test_earth_engine__one_listing_then_each_acquisition_as_the_composite_of_its_day(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    collection = sensors.SENTINEL_1.collections["earthengine"]
    scenes = [  # id, day of June 2021, pass, dB added
        ("S1A_0609", 9, "DESCENDING", 0.0),
        ("S1A_0615", 15, "ASCENDING", -6.0),
        ("S1A_0621", 21, "DESCENDING", -2.0),
    ]
    world = [
        dataclasses.replace(
            s1.ee_world(delta)[collection][0],
            id=name,
            start=f"2021-06-{day:02d}",
            end=f"2021-06-{day + 1:02d}",
            properties={
                "instrumentMode": "IW",
                "transmitterReceiverPolarisation": ["VV", "VH"],
                "orbitProperties_pass": orbit,
            },
        )
        for name, day, orbit, delta in scenes
    ]
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    c, inputs = Chunk.of(0, 0, s1.points()), str(tmp_path / "inputs")
    with serve_earthengine({collection: world}) as fake:
        service_account_key(tmp_path / "key.json", fake)
        access = EarthEngineOptions(
            ee_key_file=str(tmp_path / "key.json"), ee_url=fake.url, ee_project="fake"
        )
        cfg = dataclasses.replace(
            s1.config("earthengine", "", access, orbit_pass="descending"),
            steps=TimeSteps("acquisitions", 3, seed=0),
        )
        prefetch_chunk(EarthEngineSource(), c, s1.ASKED, cfg, inputs)
        (listing,) = fake.listings
        computed = [cp.dates for cp in fake.computations]
        prefetch_chunk(EarthEngineSource(), c, s1.ASKED, cfg, inputs)  # complete: nothing
        assert len(fake.listings) == 1 and len(fake.computations) == len(computed)
    assert ("orbitProperties_pass", "==", "DESCENDING") in listing.property_filters
    assert set(computed) == {("2021-06-09", "2021-06-10"), ("2021-06-21", "2021-06-22")}
    series = read_series(inputs, cfg, c, list(S1_BANDS))
    assert series.acquisitions is not None
    for i, p in enumerate(s1.points()):
        got = [(a.ids, a.orbit) if a else None for a in series.acquisitions[i]]
        assert got == [(("S1A_0609",), "descending"), (("S1A_0621",), "descending"), None]
        assert series.day_of_year[i].tolist() == [160, 172, 0]
        for k, band in enumerate(S1_BANDS):
            for step, delta in enumerate((0.0, -2.0)):
                want = s1.expected(p, band, delta)
                np.testing.assert_allclose(series.values[i, step, k], want, atol=1e-3)
