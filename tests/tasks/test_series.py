"""Time series in the inputs store: a window split into steps, one composite a step, fetched
once per sensor configuration, stored (point, step, N, N) per band, resumed step by step."""

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
from tasks.inputs import DamagedInputsError, MissingInputsError, prefetch_chunk, read_patches
from tasks.plan.chunks import Chunk
from tasks.plan.points import Point
from tasks.products import registry as products
from tasks.products.product import fetches_of, share
from tasks.series import read_series
from tasks.sources.registry import Patches, SensorConfig, TransientSourceError
from tasks.sources.stac_catalog import StacCatalogSource
from tests import rasters
from tests.tasks.test_products import DEMO, DEMO_KEY, REQUEST

EPSG, X0, Y0, RES, SIZE = 32633, 500_000.0, 5_000_000.0, 10.0, 40
# One item a date; each date adds its own number to every pixel (row * 10 + col + 1000).
DATES = {date(2021, 1, 10): 0, date(2021, 2, 5): 100, date(2021, 2, 25): 300, date(2021, 3, 9): 700}
MONTHS = ((date(2021, 1, 1), date(2021, 1, 31)), (date(2021, 2, 1), date(2021, 2, 28)),
          (date(2021, 3, 1), date(2021, 3, 31)))  # fmt: skip
MONTHLY = TimeSteps("monthly", 3)
N = 4
BANDS = ("B02", "B04")


def make_catalog(root: Path) -> str:
    """Items of January, February (two dates) and March over one 40 x 40 px scene; in the
    March item the north-west 20 x 20 px are nodata."""
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    lonlat = BoundingBox(X0, Y0 - SIZE * RES, X0 + SIZE * RES, Y0, crs=f"EPSG:{EPSG}")
    lonlat = lonlat.polygon.to_crs("EPSG:4326")
    catalog = pystac.Catalog(id="months", description="one scene a date, values by date")
    for day, add in DATES.items():
        item = pystac.Item(
            id=f"scene-{day}",
            geometry=lonlat.json,
            bbox=list(lonlat.boundingbox),
            datetime=datetime(day.year, day.month, day.day, 10, tzinfo=UTC),
            properties={},
            collection="months",
        )
        (root / item.id).mkdir(parents=True)
        values = (rows * 10 + cols + 1000 + add).astype(np.uint16)
        if day.month == 3:
            values[:20, :20] = 0
        for k, band in enumerate(BANDS):
            path = root / item.id / f"{band}.tif"
            data = np.where(values == 0, 0, values + k).astype(np.uint16)
            rasters.write_cog(path, data, epsg=EPSG, x0=X0, y0=Y0, res=RES, nodata=0)
            item.add_asset(band, pystac.Asset(str(path), media_type=pystac.MediaType.COG))
        catalog.add_item(item)
    catalog.normalize_hrefs(str(root))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return str(root / "catalog.json")


class Recording:
    """The real stac-catalog source, recording the window and bands of every call; it fails
    transiently on the windows listed in `fail` (a prefetch that dies half way)."""

    def __init__(self, fail: Sequence[str] = ()) -> None:
        self.source = StacCatalogSource()
        self.calls: list[tuple[str, tuple[str, ...]]] = []
        self.fail = set(fail)

    def fetch(self, points: Sequence[Point], bands: Sequence[str], config: SensorConfig) -> Patches:
        self.calls.append((config.start, tuple(bands)))
        if config.start in self.fail:
            raise TransientSourceError(f"the source failed on {config.start}")
        return self.source.fetch(points, bands, config)


def config(catalog: str, steps: TimeSteps | None = MONTHLY) -> SensorConfig:
    return SensorConfig(
        "sentinel-2-l2a", catalog, "months", RES, N, "2021-01-01", "2021-03-31", steps=steps
    )


def chunk() -> Chunk:
    # the first point's patch lies in March's nodata corner, the second's in the open
    points = [
        Point(f"p{k}", 15.0, 45.0, EPSG, X0 + x * RES, Y0 - x * RES) for k, x in enumerate((8, 30))
    ]
    return Chunk.of(0, 0, points)


def expected(step: int, band: str, point: int) -> np.ndarray:
    """The step's median over its dates, on the point's patch (rows and columns from its
    corner), NaN in March's nodata corner."""
    corner = (8, 30)[point] - N // 2
    rows, cols = np.mgrid[corner : corner + N, corner : corner + N]
    adds = [a for d, a in DATES.items() if d.month == step + 1]
    values = rows * 10 + cols + 1000 + np.median(adds) + BANDS.index(band)
    if step == 2:
        values = np.where((rows < 20) & (cols < 20), np.nan, values)
    return values.astype(np.float32)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_catalog(tmp_path_factory.mktemp("months"))


def test_steps__monthly_clips_to_the_window_and_spans_are_whole_days() -> None:
    steps = TimeSteps("monthly").spans(date(2021, 1, 15), date(2021, 3, 10))
    assert steps == ((date(2021, 1, 15), date(2021, 1, 31)), (date(2021, 2, 1), date(2021, 2, 28)),
                     (date(2021, 3, 1), date(2021, 3, 10)))  # fmt: skip
    spans = TimeSteps("spans", 3).spans(date(2021, 1, 1), date(2021, 1, 10))
    assert spans == ((date(2021, 1, 1), date(2021, 1, 3)), (date(2021, 1, 4), date(2021, 1, 6)),
                     (date(2021, 1, 7), date(2021, 1, 10)))  # fmt: skip


def test_steps__a_window_that_does_not_hold_them_is_refused_naming_the_fix() -> None:
    with pytest.raises(ValueError, match=r"12 calendar months.*touches 3.*Last day: 2021-12-31"):
        TimeSteps("monthly", 12).spans(date(2021, 1, 15), date(2021, 3, 10))
    with pytest.raises(ValueError, match=r"5 equal spans need at least 5 days.*has 2"):
        TimeSteps("spans", 5).spans(date(2021, 1, 1), date(2021, 1, 2))
    with pytest.raises(ValueError, match="the kinds are"):
        TimeSteps("weekly")  # type: ignore[arg-type]


def test_key__a_composite_keeps_its_key_and_steps_name_another_group() -> None:
    assert DEMO.steps is None and DEMO.key() == DEMO_KEY
    assert "steps" not in DEMO.record() and "steps" not in DEMO.identity()
    series = dataclasses.replace(DEMO, steps=TimeSteps("monthly", 12))
    assert series.key() != DEMO_KEY
    assert series.record()["steps"] == {"kind": "monthly", "count": 12}
    assert series.identity()["steps"] == {"kind": "monthly", "count": 12}
    assert dataclasses.replace(series, steps=TimeSteps("monthly")).key() != series.key()
    # a step is fetched as a composite of its own days
    assert series.step(1) == dataclasses.replace(DEMO, start="2024-02-01", end="2024-02-29")


def test_series__round_trips_one_composite_a_step_with_masks_per_step(
    catalog: str, tmp_path: Path
) -> None:
    source, c = Recording(), chunk()
    report = prefetch_chunk(source, c, BANDS, config(catalog), str(tmp_path))
    assert source.calls == [(m.isoformat(), BANDS) for m, _ in MONTHS]
    assert (report.fetched, report.reused, report.steps) == (BANDS, (), 3)
    series = read_series(str(tmp_path), config(catalog), c, ["B04", "B02"])
    assert series.values.shape == (2, 3, 2, N, N)
    assert series.spans == tuple((a.isoformat(), b.isoformat()) for a, b in MONTHS)
    for point in range(2):
        for step in range(3):
            for k, band in enumerate(("B04", "B02")):
                np.testing.assert_array_equal(
                    series.values[point, step, k], expected(step, band, point)
                )
    assert np.isnan(series.values[0, 2]).all()  # March's nodata corner: masked that step only
    assert "every pixel" in series.step_notes[2]["p0"] and series.notes() == {}
    array = zarr.open_array(str(tmp_path), path=f"{config(catalog).key()}/{c.key}/B02", mode="r")
    assert (array.shape, array.dtype, array.chunks) == ((2, 3, N, N), np.int16, (2, 1, N, N))


def test_series__a_rerun_fetches_nothing_and_a_composite_read_is_refused(
    catalog: str, tmp_path: Path
) -> None:
    source, c = Recording(), chunk()
    prefetch_chunk(source, c, BANDS, config(catalog), str(tmp_path))
    report = prefetch_chunk(source, c, BANDS, config(catalog), str(tmp_path))
    assert len(source.calls) == 3 and (report.fetched, report.steps) == ((), 0)
    with pytest.raises(ValueError, match=r"is a time series .*read_series"):
        read_patches(str(tmp_path), config(catalog), c, BANDS)


def test_series__a_prefetch_that_died_half_way_resumes_with_the_missing_steps(
    catalog: str, tmp_path: Path
) -> None:
    c, inputs = chunk(), str(tmp_path)
    with pytest.raises(TransientSourceError):
        prefetch_chunk(Recording(fail=["2021-02-01"]), c, BANDS, config(catalog), inputs)
    with pytest.raises(MissingInputsError, match=r"lacks steps \{'B02': \[1, 2\]"):
        read_series(inputs, config(catalog), c, ["B02"])
    source = Recording()
    report = prefetch_chunk(source, c, BANDS, config(catalog), inputs)
    assert source.calls == [("2021-02-01", BANDS), ("2021-03-01", BANDS)]
    assert report.steps == 2
    series = read_series(inputs, config(catalog), c, ["B02"])
    np.testing.assert_array_equal(series.values[1, :, 0], [expected(s, "B02", 1) for s in range(3)])


def test_series__a_new_band_is_fetched_alone_step_by_step(catalog: str, tmp_path: Path) -> None:
    source, c, inputs = Recording(), chunk(), str(tmp_path)
    prefetch_chunk(source, c, ["B02"], config(catalog), inputs)
    report = prefetch_chunk(source, c, BANDS, config(catalog), inputs)
    assert source.calls[3:] == [(m.isoformat(), ("B04",)) for m, _ in MONTHS]
    assert (report.fetched, report.reused) == (("B04",), ("B02",))


def test_series__a_damaged_step_is_refused_and_refetched_alone(
    catalog: str, tmp_path: Path
) -> None:
    source, c, inputs = Recording(), chunk(), str(tmp_path)
    prefetch_chunk(source, c, BANDS, config(catalog), inputs)
    stored = tmp_path / config(catalog).key() / c.key / "B04" / "c" / "0" / "1" / "0" / "0"
    raw = bytearray(stored.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    stored.write_bytes(bytes(raw))
    with pytest.raises(DamagedInputsError, match=r"step 1 \(2021-02-01..2021-02-28\) of band B04"):
        read_series(inputs, config(catalog), c, ["B02", "B04"])
    report = prefetch_chunk(source, c, BANDS, config(catalog), inputs)
    assert source.calls[3:] == [("2021-02-01", ("B04",))]
    assert (report.fetched, report.reused, report.steps) == (("B04",), ("B02",), 1)
    series = read_series(inputs, config(catalog), c, ["B04"])
    np.testing.assert_array_equal(series.values[1, 1, 0], expected(1, "B04", 1))


def test_series__a_step_model_beside_a_composite_one_fetches_only_its_own_group(
    catalog: str, tmp_path: Path
) -> None:
    """Adding a model that takes steps to a run: its fetch is a new group; the composite
    the run already has is reused, by the run's one rule of shared fetches."""
    facts = dataclasses.replace(products.PRODUCTS["ssl4eo_resnet18_rgb"].facts, bands=BANDS)
    request = dataclasses.replace(
        REQUEST, catalog=catalog, collection="months", patch_px=N, max_cloud_cover=100.0,
        start=date(2021, 1, 1), end=date(2021, 3, 31),
    )  # fmt: skip
    (composite,) = fetches_of("rgb", facts, request)
    source, c, inputs = Recording(), chunk(), str(tmp_path)
    prefetch_chunk(source, c, composite.bands, composite.config, inputs)
    stepped = dataclasses.replace(facts, steps=MONTHLY)
    run = share([*fetches_of("rgb", facts, request), *fetches_of("steps", stepped, request)])
    assert [f.config.steps for f in run] == [None, MONTHLY]
    reports = [prefetch_chunk(source, c, f.bands, f.config, inputs) for f in run]
    assert reports[0].fetched == () and reports[1].fetched == BANDS
    assert source.calls[1:] == [(m.isoformat(), BANDS) for m, _ in MONTHS]
    composite_patches = read_patches(inputs, composite.config, c, ["B02"])
    assert np.isfinite(composite_patches.bands["B02"]).all()  # every date's median


def test_series__a_model_whose_window_does_not_hold_its_steps_is_refused() -> None:
    facts = dataclasses.replace(
        products.PRODUCTS["ssl4eo_resnet18_rgb"].facts, steps=TimeSteps("monthly", 12)
    )
    request = dataclasses.replace(REQUEST, start=date(2024, 1, 1), end=date(2024, 6, 30))
    with pytest.raises(products.ProductError, match=r"^stepper: 12 monthly steps need a window"):
        fetches_of("stepper", facts, request)


def test_series__a_fetch_of_t_steps_carries_t_times_the_bytes() -> None:
    (single,) = fetches_of("rgb", products.PRODUCTS["ssl4eo_resnet18_rgb"].facts, REQUEST)
    twelve = dataclasses.replace(single.config, steps=TimeSteps("monthly", 12))
    assert single.point_bytes() == 3 * 64 * 64 * 4
    assert dataclasses.replace(single, config=twelve).point_bytes() == 12 * single.point_bytes()


def test_series__a_model_with_steps_is_refused_by_the_engine_before_anything_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from embedders import registry
    from tasks.infer import resolve_model

    entry = registry.MODELS["ssl4eo_resnet18_rgb"]
    stepped = dataclasses.replace(entry, spec=dataclasses.replace(entry.spec, steps=MONTHLY))
    monkeypatch.setitem(registry.MODELS, "stepper", stepped)
    request = dataclasses.replace(REQUEST, start=date(2024, 1, 1), end=date(2024, 3, 31))
    (fetch,) = fetches_of("stepper", products.model_facts(stepped.spec), request)
    assert fetch.config.steps == MONTHLY  # the spec's steps reach its fetch
    with pytest.raises(products.ProductError, match=r"^stepper takes a time series \(3 monthly"):
        resolve_model("stepper", request)


def _two_sensor_tile_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """`both`: a tile model of Sentinel-2 RGB and Sentinel-1 VV, registered for the test."""
    from embedders import registry

    entry = registry.MODELS["ssl4eo_resnet18_rgb"]
    spec = dataclasses.replace(
        entry.spec,
        more_sensors=(("sentinel-1", ("VV",)),),
        norm_mean=(*entry.spec.norm_mean, -12.0),
        norm_std=(*entry.spec.norm_std, 5.0),
    )
    monkeypatch.setitem(registry.MODELS, "both", dataclasses.replace(entry, spec=spec))


def test_series__a_tile_model_of_two_sensors_fetches_each_sensor_on_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tasks.infer import resolve_model

    _two_sensor_tile_model(monkeypatch)
    product = resolve_model("both", REQUEST)
    s2, s1 = product.fetches
    assert (s2.config.sensor, s2.bands) == ("sentinel-2-l2a", ("B04", "B03", "B02"))
    assert (s1.config.sensor, s1.bands) == ("sentinel-1", ("VV",))
    assert s1.config.patch_px == s2.config.patch_px and s1.config.key() != s2.config.key()


def test_series__a_tile_model_of_sensors_on_different_grids_is_refused_before_anything_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tasks.infer
    from tasks.products.product import Fetch

    _two_sensor_tile_model(monkeypatch)

    def coarser_s1(*args: object) -> tuple[Fetch, ...]:
        s2, s1 = fetches_of(*args)  # type: ignore[arg-type]
        return s2, Fetch(dataclasses.replace(s1.config, resolution_m=20.0), s1.bands)

    monkeypatch.setattr(tasks.infer, "fetches_of", coarser_s1)
    with pytest.raises(
        products.ProductError,
        match=r"^both: sentinel-2-l2a patches are \d+ px at 10 m and sentinel-1 patches "
        r"\d+ px at 20 m: a model that stacks their bands needs one grid",
    ):
        tasks.infer.resolve_model("both", REQUEST)
