"""StacApiSource: patches from a STAC search API, against a fake API on 127.0.0.1."""

import dataclasses
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pystac
import pytest
import shapely

from tasks.plan.points import Point
from tasks.sources.pixels import patch_geobox
from tasks.sources.registry import (
    ImagerySourceError,
    SensorConfig,
    StacApiOptions,
    TransientSourceError,
)
from tasks.sources.stac_api import KNOWN_APIS, StacApiSource, resolve_api, sign_item
from tests.fakes import Fault, FaultHook, Request
from tests.stac_api_server import (
    BANDS,
    EPSG,
    NODATA_PX,
    RES,
    SERVER,
    X0,
    Y0,
    FakeApi,
    Scene,
    Style,
    pixel_value,
    serve_stac_api,
    signature,
)

STYLES: tuple[Style, ...] = ("planetary-computer", "earth-search")
# Either side of baseline 04.00: the second scene's DNs carry +1000, and 200 more than the first
MIXED = (Scene("old", 2), Scene("new", 9, baseline="05.00", add_dn=1000, delta=200))


def config_for(api: FakeApi, style: Style, patch_px: int = 6, **changes: object) -> SensorConfig:
    signing = "planetary-computer" if style == "planetary-computer" else "none"
    config = SensorConfig(
        "sentinel-2-l2a",
        api.url,
        "sentinel-2-l2a",
        RES,
        patch_px,
        "2021-06-01",
        "2021-06-30",
        source="stac-api",
        max_cloud_cover=80.0,
        options=StacApiOptions(stac_signing=signing),
    )
    return dataclasses.replace(config, **changes)


def at(row: int, col: int, name: str = "p") -> Point:
    """The point on the corner shared by pixels (row - 1, col - 1) and (row, col)."""
    return Point(name, lon=0.0, lat=0.0, epsg=EPSG, x=X0 + col * RES, y=Y0 - row * RES)


@contextmanager
def api_of(
    tmp_path: Path,
    style: Style,
    scenes: Sequence[Scene] = MIXED,
    *,
    page_size: int = 100,
    fault: FaultHook | None = None,
    assets: str | None = None,
) -> Iterator[FakeApi]:
    with serve_stac_api(
        tmp_path / style, scenes, style=style, page_size=page_size, fault=fault, assets=assets
    ) as api:
        yield api


def tif_requests(api: FakeApi) -> list[Request]:
    return [r for r in api.log if ".tif" in r.path]


# --- pixels ---------------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
def test_patches__equal_the_known_pixels_on_the_utm_grid_after_harmonisation(
    tmp_path: Path, style: Style
) -> None:
    n, row, col = 6, 40, 50
    with api_of(tmp_path, style) as api:
        patches = StacApiSource().fetch([at(row, col)], ["B04", "B02"], config_for(api, style, n))
    assert list(patches.bands) == ["B04", "B02"] and patches.notes == {}
    for band in ("B04", "B02"):
        k = BANDS.index(band)
        # the median of the two dates, 0 and 200 above the pattern: both on one scale
        expected = [
            [pixel_value(row - n // 2 + r, col - n // 2 + c, k) + 100 for c in range(n)]
            for r in range(n)
        ]
        np.testing.assert_array_equal(patches.bands[band][0], np.array(expected, np.float32))
    assert patches.bytes_read == 2 * 3 * n * n * 4  # two dates of B04, B02, SCL as float32


@pytest.mark.parametrize("style", STYLES)
def test_harmonise__mixed_baselines_equal_two_harmonised_items(
    tmp_path: Path, style: Style
) -> None:
    harmonised = (Scene("old", 2), Scene("new", 9, delta=200))
    points = [at(NODATA_PX, NODATA_PX, "corner"), at(30, 60, "inside")]  # corner: half nodata
    with api_of(tmp_path / "mixed", style) as api:
        mixed = StacApiSource().fetch(points, list(BANDS), config_for(api, style, 4))
    with api_of(tmp_path / "plain", style, harmonised) as api:
        plain = StacApiSource().fetch(points, list(BANDS), config_for(api, style, 4))
    for band in BANDS:
        np.testing.assert_array_equal(mixed.bands[band], plain.bands[band])
    corner = mixed.bands["B02"][0]
    assert np.isnan(corner[:2, :2]).all() and np.isfinite(corner[2:, 2:]).all()


def test_bands__jp2_duplicates_and_the_visual_asset_do_not_confuse_matching(
    tmp_path: Path,
) -> None:
    with api_of(tmp_path, "earth-search") as api:
        patches = StacApiSource().fetch([at(40, 40)], list(BANDS), config_for(api, "earth-search"))
        paths = [r.path for r in api.log]
    assert not any(".jp2" in p or "TCI" in p for p in paths)
    for band in ("blue", "green", "red", "nir", "scl"):
        assert any(p.endswith(f"/{band}.tif") for p in paths), band
    assert np.isfinite(patches.bands["B08"]).all()
    assert patches.bands["B08"][0, 0, 0] == pixel_value(37, 37, 3) + 100


# --- searching ------------------------------------------------------------------------------


def test_search__one_search_per_chunk_whose_bbox_covers_every_patch(tmp_path: Path) -> None:
    points = [at(20 + 15 * i, 20 + 12 * i, f"p{i}") for i in range(5)]
    with api_of(tmp_path, "earth-search") as api:
        config = config_for(api, "earth-search")
        patches = StacApiSource().fetch(points, ["B02"], config)
        assert api.count("/v1/search") == 1
    assert patches.requests == 2  # the landing page and the search
    assert np.isfinite(patches.bands["B02"]).all()
    (search,) = api.searches
    box = shapely.box(*search["bbox"])
    for p in points:
        patch = patch_geobox(p, config.patch_px, RES).extent.to_crs("EPSG:4326").geom
        assert box.buffer(1e-9).contains(patch)
    assert search["collections"] == ["sentinel-2-l2a"]
    assert search["datetime"].startswith("2021-06-01") and "2021-06-30" in search["datetime"]


def test_search__every_page_is_followed(tmp_path: Path) -> None:
    scenes = [Scene(f"s{k}", 3 + k, delta=100 * k) for k in range(3)]
    with api_of(tmp_path, "earth-search", scenes, page_size=1) as api:
        patches = StacApiSource().fetch([at(40, 40)], ["B02"], config_for(api, "earth-search"))
        assert api.count("/v1/search") == 3
    assert patches.requests == 1 + 3
    assert patches.bands["B02"][0, 0, 0] == pixel_value(37, 37) + 100  # median of 0, 100, 200


def test_cloud_cover__cloudier_scenes_are_neither_found_nor_read(tmp_path: Path) -> None:
    scenes = [Scene("clear", 2, cloud_cover=10), Scene("cloudy", 3, cloud_cover=95, delta=900)]
    with api_of(tmp_path, "earth-search", scenes) as api:
        patches = StacApiSource().fetch([at(40, 40)], ["B02"], config_for(api, "earth-search"))
        assert not any("/cloudy/" in r.path for r in tif_requests(api))
    assert api.searches[0]["query"] == {"eo:cloud_cover": {"lte": 80.0}}
    assert patches.bands["B02"][0, 0, 0] == pixel_value(37, 37)


# --- signing --------------------------------------------------------------------------------


def test_signing__planetary_computer_token_is_fetched_once_and_signs_every_read(
    tmp_path: Path,
) -> None:
    with api_of(tmp_path, "planetary-computer") as api:
        source, config = StacApiSource(), config_for(api, "planetary-computer")
        first = source.fetch([at(40, 40)], ["B02"], config)
        second = source.fetch([at(60, 60)], ["B02"], config)
        assert api.count("/api/sas/v1/token/sentinel-2-l2a") == 1
        reads = tif_requests(api)
    assert reads and all(r.path.endswith(f"?{api.token}") for r in reads)
    assert first.requests == 3 and second.requests == 1  # landing, search, token; search
    assert np.isfinite(second.bands["B02"]).all()


def test_signing__off_the_reads_are_refused_with_a_clear_error(tmp_path: Path) -> None:
    with api_of(tmp_path, "planetary-computer") as api:
        config = config_for(api, "planetary-computer", options=StacApiOptions(stac_signing="none"))
        fix = r"403.*refused access.*Asset URL signing \(stac-api\): planetary-computer"
        with pytest.raises(ImagerySourceError, match=fix):
            StacApiSource().fetch([at(40, 40)], ["B02"], config)
        with pytest.raises(ImagerySourceError, match=fix):
            StacApiSource().check(["B02"], config)


def test_signing__the_token_never_appears_in_an_error(tmp_path: Path) -> None:
    def hook(request: Request) -> Fault:
        return 404 if "/B02.tif" in request.path else None

    with api_of(tmp_path, "planetary-computer", fault=hook) as api:
        with pytest.raises(ImagerySourceError, match=r"B02\.tif\?<redacted>") as error:
            StacApiSource().fetch([at(40, 40)], ["B02"], config_for(api, "planetary-computer"))
        token = api.token
    chain, cause = [], error.value
    while cause is not None:
        chain.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    assert not any(token in text or signature(token) in text for text in chain)


def test_signing__only_blob_storage_hrefs_take_the_token() -> None:
    """As Planetary Computer's own client signs: hosts in Azure Blob Storage, but for its
    public thumbnails' account and hrefs already signed."""
    blob = "https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/T33/B02.tif"
    hrefs = {
        "blob": (blob, True),
        "blob over http": (blob.replace("https:", "http:"), True),
        "blob with a query": (f"{blob}?version=2", True),
        "another host": ("https://data.example.org/T33/B02.tif", False),
        "only named alike": ("https://blob.core.windows.net.example/x.tif", False),
        "public thumbnails": (
            "https://ai4edatasetspublicassets.blob.core.windows.net/a/t.png", False
        ),
        "signed already": (f"{blob}?st=2021&se=2022&sp=rl&sig=abc", False),
        "a local file": ("/data/T33/B02.tif", False),
        "s3": ("s3://bucket/T33/B02.tif", False),
    }  # fmt: skip
    item = pystac.Item("x", None, None, datetime(2021, 6, 1, tzinfo=UTC), {})
    for key, (href, _) in hrefs.items():
        item.add_asset(key, pystac.Asset(href))
    signed = sign_item(item, "st=1&se=2&sp=rl&sig=SIG")
    for key, (href, signs) in hrefs.items():
        want = f"{href}{'&' if '?' in href else '?'}st=1&se=2&sp=rl&sig=SIG" if signs else href
        assert signed.assets[key].href == want, key
    assert item.assets["blob"].href == blob  # a copy is signed


def test_signing__assets_outside_blob_storage_are_read_unsigned(tmp_path: Path) -> None:
    """The API signs (planetary-computer), its assets are on its own host: their reads
    carry no token, and succeed."""
    with api_of(tmp_path, "planetary-computer", assets=SERVER) as api:
        patches = StacApiSource().fetch(
            [at(40, 40)], ["B02"], config_for(api, "planetary-computer")
        )
        reads = tif_requests(api)
    assert reads and not any("?" in r.path or "blob" in str(r.host) for r in reads)
    assert np.isfinite(patches.bands["B02"]).all()


def test_resolve_api__names_and_signing() -> None:
    base = SensorConfig("sentinel-2-l2a", "", "sentinel-2-l2a", 10.0, 8, "2021-01-01", "2021-01-31")
    pc = resolve_api(dataclasses.replace(base, catalog="planetary-computer"))
    assert pc.url == KNOWN_APIS["planetary-computer"].url
    assert pc.sas_root == "https://planetarycomputer.microsoft.com/api/sas/v1"
    assert resolve_api(dataclasses.replace(base, catalog="earth-search")).sas_root is None
    with pytest.raises(ImagerySourceError, match="cannot derive the token endpoint"):
        resolve_api(
            dataclasses.replace(
                base,
                catalog="http://x/stac",
                options=StacApiOptions(stac_signing="planetary-computer"),
            )
        )


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (429, TransientSourceError),
        (503, TransientSourceError),
        ("drop", TransientSourceError),
        (400, ImagerySourceError),
    ],
)
def test_errors__search_failures_are_classified_for_retry(
    tmp_path: Path, fault: Fault, error: type[Exception]
) -> None:
    def hook(request: Request) -> Fault:
        return fault if request.path.startswith("/v1/search") else None

    with (
        api_of(tmp_path, "earth-search", fault=hook) as api,
        pytest.raises(error, match=r"searching http://127\.0\.0\.1:\d+/v1 for sentinel-2-l2a"),
    ):
        StacApiSource().fetch([at(40, 40)], ["B02"], config_for(api, "earth-search"))


def test_errors__unknown_collection_lists_the_apis_collections(tmp_path: Path) -> None:
    with api_of(tmp_path, "earth-search") as api:
        config = config_for(api, "earth-search", collection="landsat-c2-l2")
        with pytest.raises(
            ImagerySourceError,
            match=r"no collection 'landsat-c2-l2'; its collections are \['sentinel-2-l2a'\]",
        ):
            StacApiSource().check(["B02"], config)


def test_errors__a_band_no_asset_carries_names_the_assets(tmp_path: Path) -> None:
    with api_of(tmp_path, "earth-search") as api, pytest.raises(
        ImagerySourceError, match=r"band B11 .*'blue', 'blue-jp2'"
    ):  # fmt: skip
        StacApiSource().check(["B02", "B11"], config_for(api, "earth-search"))


def test_errors__an_unreachable_or_malformed_url_names_the_fix(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    unreachable = f"http://127.0.0.1:{port}/v1"
    config = SensorConfig(
        "sentinel-2-l2a", unreachable, "sentinel-2-l2a", RES, 6, "2021-06-01", "2021-06-30",
        source="stac-api", options=StacApiOptions(stac_signing="none"),
    )  # fmt: skip
    with pytest.raises(ImagerySourceError, match=r"cannot connect .*check imagery › STAC API URL"):
        StacApiSource().check(["B02"], config)
    with pytest.raises(TransientSourceError, match="opening the STAC API"):
        StacApiSource().fetch([at(40, 40)], ["B02"], config)  # during a run: retried
    with pytest.raises(ImagerySourceError, match=r"neither an http\(s\) URL nor one of"):
        StacApiSource().check(["B02"], dataclasses.replace(config, catalog="earth-serch"))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed once the block ends: nothing listens there


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("nowhere.invalid", "the host nowhere.invalid does not resolve"),
        (f"127.0.0.1:{closed_port()}", "no connection to 127.0.0.1 port"),
    ],
)
def test_check__an_image_host_that_cannot_be_reached_is_refused_naming_it(
    tmp_path: Path, host: str, why: str
) -> None:
    """The API answers, its items' COGs are on a host that does not resolve, or refuses the
    connection: the check refuses the run (not a transient failure, left to retries)."""
    with (
        api_of(tmp_path, "earth-search", assets=f"http://{host}") as api,
        pytest.raises(ImagerySourceError, match="the image host") as error,
    ):
        StacApiSource().check(["B02"], config_for(api, "earth-search"))
    assert f"the image host {host} cannot be reached" in str(error.value)
    assert why in str(error.value)


def test_check__an_image_host_that_answers_503_is_left_to_the_retries(tmp_path: Path) -> None:
    def unavailable(request: Request) -> Fault:
        return 503 if ".tif" in request.path else None

    with api_of(tmp_path, "earth-search", fault=unavailable) as api:
        with pytest.raises(TransientSourceError, match=r"503.*a retry may succeed"):
            StacApiSource().check(["B02"], config_for(api, "earth-search"))
        assert tif_requests(api)


def test_check__passes_for_a_working_api(tmp_path: Path) -> None:
    with api_of(tmp_path, "planetary-computer") as api:
        StacApiSource().check(list(BANDS), config_for(api, "planetary-computer"))
        assert tif_requests(api) and all(api.token in r.path for r in tif_requests(api))
