"""The Earth Engine source: the real earthengine-api client against a fake Earth Engine REST
server on 127.0.0.1 (tests/ee_server.py), whose world is a raster of unique pixel values."""

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import google.oauth2.credentials
import numpy as np
import pytest
from google.auth import transport

from tasks.plan.points import Point, _point_id
from tasks.sources import earthengine, sensors
from tasks.sources.earthengine import EarthEngineSource, PixelGrid, plan_grids
from tasks.sources.pixels import patch_geobox
from tasks.sources.registry import (
    EarthEngineOptions,
    ImagerySourceError,
    SensorConfig,
    TransientSourceError,
)
from tests import ee_server
from tests.ee_server import (
    FakeEarthEngine,
    Raster,
    coordinate_raster,
    serve_earthengine,
    service_account_key,
)

S2 = sensors.SENTINEL_2_L2A.collections["earthengine"]
EPSG = 32631
WEST, NORTH = 600_000.0, 5_800_000.0
N = 8  # patch side, pixels
EE_BANDS = ["B2", "B3", "B4", "B8"]


def world() -> dict[str, list[Raster]]:
    raster = coordinate_raster(EPSG, WEST, NORTH, (200, 200), EE_BANDS)
    raster.mask[100:200, 100:200] = False  # a cloud over the south-east quarter
    return {S2: [raster]}


def point(x: float, y: float, epsg: int = EPSG) -> Point:
    return Point(_point_id(epsg, x, y), 3.0, 52.0, epsg, x, y)


def expected(raster: Raster, p: Point, ee_band: str) -> np.ndarray:
    """The patch as the contract places it: the world at patch_geobox's pixel centres."""
    box = patch_geobox(p, N, 10.0)
    cols, rows = np.meshgrid(np.arange(N) + 0.5, np.arange(N) + 0.5)
    x, y = box.affine * (cols, rows)
    values, valid = raster.value_at(ee_band, np.asarray(x), np.asarray(y))
    return np.where(valid, values, np.nan).astype(np.float32)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeEarthEngine]:
    with serve_earthengine(world()) as server:
        yield server


@pytest.fixture
def key_file(tmp_path: Path, fake: FakeEarthEngine) -> Path:
    path = tmp_path / "key.json"
    service_account_key(path, fake)
    return path


@pytest.fixture(autouse=True)
def no_stored_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither a developer's `earthengine authenticate` file nor their ADC is used."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    # As in a fresh process: credentials found anew (the client's state is per process).
    monkeypatch.setattr(earthengine, "_initialised", None)


def config(fake: FakeEarthEngine, key: Path | None, **changes: object) -> SensorConfig:
    access = EarthEngineOptions(ee_key_file=str(key) if key else None, ee_url=fake.url)
    fields: dict = {
        "sensor": "sentinel-2-l2a",
        "catalog": "",
        "collection": S2,
        "resolution_m": 10.0,
        "patch_px": N,
        "start": "2024-04-01",
        "end": "2024-09-30",
        "source": "earthengine",
        "max_cloud_cover": 40.0,
        "options": changes.pop("options", access),
    }
    return SensorConfig(**{**fields, **changes})


def test_earthengine__patches_are_centred_to_the_pixel_with_bands_in_order(fake, key_file):
    raster = fake.world[S2][0]
    # Off the 10 m lattice by 5 m: the patch's corner is snapped as patch_geobox puts it.
    points = [point(WEST + 305, NORTH - 405), point(WEST + 805, NORTH - 505)]
    bands = ["B08", "B02", "B04"]
    before = len(fake.sent_bytes)
    patches = EarthEngineSource().fetch(points, bands, config(fake, key_file))
    assert patches.point_ids == tuple(p.id for p in points)
    for i, p in enumerate(points):
        for band in bands:
            got = patches.bands[band][i]
            assert got.dtype == np.float32 and got.shape == (N, N)
            ee_band = sensors.BANDS[band].ee_name
            np.testing.assert_array_equal(got, expected(raster, p, ee_band), err_msg=band)
    assert patches.notes == {}
    assert patches.requests == len(fake.sent_bytes) - before == 2  # too far apart for one
    assert patches.bytes_read == sum(fake.sent_bytes[before:]) > len(bands) * 4 * N * N * 2


def test_earthengine__the_expression_is_a_cloud_masked_median_of_the_window(fake, key_file):
    before = len(fake.computations)
    EarthEngineSource().fetch(
        [point(WEST + 400, NORTH - 400)], ["B04", "B03"], config(fake, key_file)
    )
    (c,) = fake.computations[before:]
    assert c.collection == S2
    assert c.dates == ("2024-04-01", "2024-10-01")  # the inclusive end, as an exclusive bound
    assert ("CLOUDY_PIXEL_PERCENTAGE", "<=", 40.0) in c.property_filters
    assert c.linked == (sensors.CLOUD_SCORE_PLUS,) and c.linked_bands == ("cs_cdf",)
    assert c.thresholds == (sensors.CLOUD_SCORE_PLUS_CLEAR,)
    assert c.reducer == "reduce.median"
    assert (c.selected, c.renamed) == (("B4", "B3"), ("B04", "B03"))
    assert c.unmask_value == earthengine.NODATA and c.unmask_same_footprint is False
    assert c.crs == f"EPSG:{EPSG}" and (c.width, c.height) == (N, N)
    assert c.affine["scaleX"] == 10.0 and c.affine["scaleY"] == -10.0


def test_earthengine__nearby_points_share_one_request_far_ones_do_not(fake, key_file):
    near = [point(WEST + 400 + 100 * k, NORTH - 400) for k in range(5)]
    far = point(WEST + 1900, NORTH - 1900)
    before = fake.pixel_requests()
    patches = EarthEngineSource().fetch([*near, far], ["B02"], config(fake, key_file))
    assert fake.pixel_requests() - before == patches.requests == 2
    shapes = {(c.width, c.height) for c in fake.computations[-2:]}
    assert shapes == {(N + 400 // 10, N), (N, N)}
    assert len(plan_grids(near, N, 10.0)) == 1


# Four points whose patches share one 20 x 17 px grid (N = 8).
SPREAD = [point(WEST + 305 + 40 * k, NORTH - 305 - 30 * k) for k in range(4)]


@pytest.fixture
def limits(fake: FakeEarthEngine) -> Iterator[FakeEarthEngine]:
    """The fake, its per-request limits put back after a test lowers them."""
    yield fake
    fake.limit_bytes = ee_server.LIMIT_BYTES
    fake.limit_side_px = ee_server.LIMIT_SIDE_PX
    fake.limit_bands = ee_server.LIMIT_BANDS


def test_earthengine__requests_split_to_the_byte_limit_at_the_response_type(
    limits, key_file, monkeypatch
):
    """640 bytes: 64 px of 2 bands at 5 bytes a value (float32 and its mask byte), so rows of
    20 px go 3 to a request. A splitter that budgets 4 bytes a value sends 4 (800 bytes); a
    response that comes back float64 costs 9 bytes a value."""
    whole = EarthEngineSource().fetch(SPREAD, ["B02", "B08"], config(limits, key_file))
    limit = 640
    monkeypatch.setattr(earthengine, "MAX_RESPONSE_BYTES", limit)
    limits.limit_bytes = limit
    before = len(limits.computations)
    split = EarthEngineSource().fetch(SPREAD, ["B02", "B08"], config(limits, key_file))
    sent = limits.computations[before:]
    assert len(sent) == split.requests == 6 > whole.requests == 1  # 17 rows, 3 at a time
    assert {c.dtype for c in sent} == {"float32"}
    assert {(c.width, c.height) for c in sent} == {(20, 3), (20, 2)}
    assert max(ee_server.request_bytes(c) for c in sent) == 600
    for band in ("B02", "B08"):
        np.testing.assert_array_equal(split.bands[band], whole.bands[band], err_msg=band)


def test_earthengine__requests_split_to_the_pixels_per_side_limit(limits, key_file, monkeypatch):
    whole = EarthEngineSource().fetch(SPREAD, ["B02"], config(limits, key_file))
    monkeypatch.setattr(earthengine, "MAX_SIDE_PX", 6)
    limits.limit_side_px = 6
    before = len(limits.computations)
    split = EarthEngineSource().fetch(SPREAD, ["B02"], config(limits, key_file))
    sent = limits.computations[before:]
    assert len(sent) == split.requests == 4 * 3 > whole.requests == 1  # 20 x 17 px by 6 px
    assert max(max(c.width, c.height) for c in sent) == 6
    np.testing.assert_array_equal(split.bands["B02"], whole.bands["B02"])


def test_earthengine__requests_split_to_the_bands_limit(limits, key_file, monkeypatch):
    bands = ["B08", "B02", "B04"]
    whole = EarthEngineSource().fetch(SPREAD, bands, config(limits, key_file))
    monkeypatch.setattr(earthengine, "MAX_BANDS", 2)
    limits.limit_bands = 2
    before = len(limits.computations)
    split = EarthEngineSource().fetch(SPREAD, bands, config(limits, key_file))
    sent = limits.computations[before:]
    assert len(sent) == split.requests == 2 > whole.requests == 1
    assert [c.renamed for c in sent] == [("B08", "B02"), ("B04",)]
    for band in bands:
        np.testing.assert_array_equal(split.bands[band], whole.bands[band], err_msg=band)
    before = len(limits.computations)
    EarthEngineSource().check(bands, config(limits, key_file))  # its 1 x 1 px request, split
    assert [c.selected for c in limits.computations[before:]] == [("B8", "B2"), ("B4",)]


def test_earthengine__tiles_and_band_groups_keep_within_earth_engines_own_limits():
    """At the real limits: a 40,000 px wide strip is cut under 32,768 px; 64 bands (Satellite
    Embedding) on 5,000 x 5,000 px fit 48 MiB at 5 bytes a value; 1,025 bands go in two."""
    strip = earthengine.split_grid(PixelGrid(EPSG, WEST, NORTH, 10.0, 3, 40_000), 1)
    assert [(c, t.width) for _, c, t in strip] == [(0, 32_768), (32_768, 7_232)]
    square = earthengine.split_grid(PixelGrid(EPSG, WEST, NORTH, 10.0, 5_000, 5_000), 64)
    assert max(t.width * t.height * 64 * 5 for *_, t in square) <= 50_331_648
    assert sum(t.width * t.height for *_, t in square) == 5_000 * 5_000
    assert earthengine.band_groups(1_025) == [slice(0, 513), slice(513, 1_025)]
    assert earthengine.band_groups(64) == [slice(0, 64)]


@pytest.mark.parametrize(
    ("limit", "value", "message"),
    [
        ("limit_bytes", 5 * N * N - 1, r"Total request size \(320 bytes\) must be less"),
        ("limit_side_px", N - 1, r"Grid dimensions \(8 x 8 pixels\) must be less"),
        ("limit_bands", 0, r"Number of bands \(1\) must be less"),
    ],
)
def test_earthengine__a_request_over_a_limit_is_refused_with_earth_engines_message(
    limits, key_file, limit, value, message
):
    """The fake's answer to a request over each limit (swath's own limits left as they are),
    and swath passing Earth Engine's message on."""
    setattr(limits, limit, value)
    with pytest.raises(ImagerySourceError, match=message):
        EarthEngineSource().fetch(
            [point(WEST + 400, NORTH - 400)], ["B02"], config(limits, key_file)
        )


def test_earthengine__masked_pixels_are_nan_and_an_all_masked_patch_gets_a_note(fake, key_file):
    raster = fake.world[S2][0]
    edge = point(WEST + 1000, NORTH - 1200)  # straddles the cloud's north-west corner
    covered = point(WEST + 1500, NORTH - 1500)  # wholly under it
    patches = EarthEngineSource().fetch([edge, covered], ["B03"], config(fake, key_file))
    got = patches.bands["B03"]
    np.testing.assert_array_equal(got[0], expected(raster, edge, "B3"))
    assert 0 < np.isnan(got[0]).sum() < N * N
    assert np.isnan(got[1]).all()
    assert set(patches.notes) == {covered.id}
    assert (
        "every pixel of its 8 px patch is masked (cloud, shadow or no image)"
        in (patches.notes[covered.id])
    )
    assert "2024-04-01 and 2024-09-30" in patches.notes[covered.id]


@pytest.mark.parametrize(
    ("status", "error", "message"),
    [
        (429, TransientSourceError, r"Too many concurrent aggregations.*a retry may succeed"),
        (500, TransientSourceError, r"internal error.*a retry may succeed"),
        (401, ImagerySourceError, r"refused access: Request had invalid auth.*registered"),
        (403, ImagerySourceError, r"refused access: Caller does not have.*has access"),
    ],
)
def test_earthengine__errors_are_transient_or_permanent_with_the_fix(
    fake, key_file, status, error, message
):
    source = EarthEngineSource()
    source.fetch([point(WEST + 400, NORTH - 400)], ["B02"], config(fake, key_file))  # initialise
    before = fake.pixel_requests()
    fake.fault = lambda computation: status
    try:
        with pytest.raises(error, match=message):
            source.fetch([point(WEST + 400, NORTH - 400)], ["B02"], config(fake, key_file))
    finally:
        fake.fault = None
    # No hidden retry loop of the client; only google-auth's refresh of the token on a 401.
    refreshes = transport.DEFAULT_MAX_REFRESH_ATTEMPTS if status == 401 else 0
    assert fake.pixel_requests() - before == 1 + refreshes


def test_earthengine__no_credentials_says_how_to_authenticate(fake):
    with pytest.raises(
        ImagerySourceError, match=r"earthengine authenticate.*› Service account key file.*› Google"
    ):
        EarthEngineSource().check(["B02"], config(fake, None))


@pytest.mark.parametrize("kind", ["authorized_user", "service_account"])
def test_earthengine__adc_from_google_application_credentials_works(
    fake, tmp_path, monkeypatch, kind
):
    adc = tmp_path / "adc.json"
    if kind == "service_account":
        service_account_key(adc, fake)
    else:  # what `gcloud auth application-default login` writes
        user = {"client_id": "fake-client", "client_secret": "fake-secret"}
        user |= {"refresh_token": "fake-refresh", "quota_project_id": "fake-project"}
        adc.write_text(json.dumps({"type": "authorized_user", **user}))
        # google-auth always sends a user's refresh to Google's endpoint: point it at the fake
        monkeypatch.setattr(
            google.oauth2.credentials, "_GOOGLE_OAUTH2_TOKEN_ENDPOINT", fake.token_uri
        )
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc))
    grants = len(fake.grants)
    patches = EarthEngineSource().fetch(
        [point(WEST + 400, NORTH - 400)], ["B02"], config(fake, None)
    )
    assert np.isfinite(patches.bands["B02"]).all()
    expected_grant = (
        "refresh_token"
        if kind == "authorized_user"
        else "urn:ietf:params:oauth:grant-type:jwt-bearer"
    )
    assert fake.grants[grants:] and set(fake.grants[grants:]) == {expected_grant}


def test_earthengine__a_service_account_key_gets_a_token_that_every_call_carries(fake, key_file):
    grants = len(fake.grants)
    EarthEngineSource().check(["B02", "B08"], config(fake, key_file))
    assert set(fake.grants[grants:]) == {"urn:ietf:params:oauth:grant-type:jwt-bearer"}
    c = fake.computations[-1]
    assert c.selected == ("B2", "B8") and (c.width, c.height) == (1, 1)


def test_earthengine__check_refuses_an_unknown_band_naming_the_known_ones(fake, key_file):
    before = len(fake.log)
    with pytest.raises(ImagerySourceError, match=r"\['B99'\] are not bands.*B01, B02"):
        EarthEngineSource().check(["B02", "B99"], config(fake, key_file))
    assert len(fake.log) == before  # refused before any request


def test_earthengine__check_passes_on_earth_engines_message_for_a_bad_collection(fake, key_file):
    with pytest.raises(ImagerySourceError, match=r"'NOPE/NOTHING' not found.*imagery › Collection"):
        EarthEngineSource().check(["B02"], config(fake, key_file, collection="NOPE/NOTHING"))


def test_earthengine__check_refuses_an_unreachable_sign_in_instead_of_retrying(fake, tmp_path):
    """No network, or a wrong endpoint: the up-front check says so (exit 2), where a
    transient error would have sent every prefetch into a minute of retries."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    key = tmp_path / "key.json"
    service_account_key(key, fake)
    info = json.loads(key.read_text())
    key.write_text(json.dumps({**info, "token_uri": f"http://127.0.0.1:{port}/token"}))
    with pytest.raises(ImagerySourceError, match=r"cannot reach .*connection was refused"):
        EarthEngineSource().check(["B04"], config(fake, key))
