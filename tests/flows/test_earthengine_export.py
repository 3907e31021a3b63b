"""Earth Engine end to end: the real client against the fake Earth Engine (tests/ee_server.py),
through a prefetch task that retries a 429, and one whole export from the command line."""

from collections.abc import Iterator

import numpy as np
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from pyproj import Transformer

from embedders.spec import Status
from flows.cli import main
from tasks.plan.chunks import Chunk
from tasks.plan.points import Point, _point_id
from tasks.prefetch import prefetch_task
from tasks.products import gse
from tasks.sources import earthengine, sensors
from tasks.sources.pixels import patch_geobox
from tasks.sources.registry import EarthEngineOptions, SensorConfig
from tasks.store.layout import open_store
from tests.ee_server import (
    FakeEarthEngine,
    Raster,
    coordinate_raster,
    serve_earthengine,
    service_account_key,
)

BBOX = (-67.655, -47.858, -67.63, -47.850)
EPSG = 32719  # UTM 19S
PATCH = 32
S2 = sensors.SENTINEL_2_L2A.collections["earthengine"]
GSE = sensors.SATELLITE_EMBEDDING.collections["earthengine"]


def world() -> dict[str, list[Raster]]:
    to_utm = Transformer.from_crs(4326, EPSG, always_xy=True)
    x0, y1 = to_utm.transform(BBOX[0], BBOX[1])
    x1, y0 = to_utm.transform(BBOX[2], BBOX[3])
    west, north = np.floor(x0 / 10) * 10 - 1000, np.ceil(y0 / 10) * 10 + 1000
    shape = (int((north - y1 + 1000) // 10) + 1, int((x1 + 1000 - west) // 10) + 1)
    # Every L2A band (the first four as the tests below expect them): CROMA takes all 12.
    names = ["B2", "B3", "B4", "B8", "B1", "B5", "B6", "B7", "B8A", "B9", "B11", "B12"]
    s2 = coordinate_raster(EPSG, west, north, shape, names)
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(64, *shape)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=0, keepdims=True)
    bands = {b: vectors[k] for k, b in enumerate(gse.BANDS)}
    embedding = Raster(
        EPSG, west, north, 10.0, bands, np.ones(shape, bool), "2024-01-01", "2025-01-01"
    )
    return {S2: [s2], GSE: [embedding]}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeEarthEngine]:
    with serve_earthengine(world()) as server:
        yield server


def test_prefetch_task__a_429_is_retried_by_prefect_and_counted(fake, tmp_path):
    service_account_key(tmp_path / "key.json", fake)
    access = EarthEngineOptions(
        ee_key_file=str(tmp_path / "key.json"), ee_url=fake.url, ee_concurrency=2
    )
    config = SensorConfig(
        "sentinel-2-l2a",
        "",
        S2,
        10.0,
        8,
        "2024-01-01",
        "2024-12-31",
        source="earthengine",
        options=access,
    )
    raster = fake.world[S2][0]
    x, y = raster.x0 + 505, raster.y0 - 505
    chunk = Chunk.of(0, 0, (Point(_point_id(EPSG, x, y), -67.64, -47.85, EPSG, x, y),))
    faults = iter([429])
    fake.fault = lambda computation: next(faults, None)
    quick = prefetch_task.with_options(retry_delay_seconds=0, retry_jitter_factor=None)

    @flow
    def one_prefetch() -> object:
        return quick(chunk, ["B02"], config, str(tmp_path / "inputs"))

    try:
        report = one_prefetch()
    finally:
        fake.fault = None
    assert report.retries == 1 and report.requests == 1 and report.fetched == ("B02",)
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(earthengine.CONCURRENCY_LIMIT)
    assert limit.limit == 2


def test_earthengine_export__gse_and_a_model_from_the_command_line(fake, tmp_path, capsys, caplog):
    pem = service_account_key(tmp_path / "key.json", fake)
    out, work = tmp_path / "e.zarr", tmp_path / "work"
    argv = [
        "--source", "earthengine", "--models", "gse,ssl4eo_resnet18_rgb",
        "--ee-key-file", str(tmp_path / "key.json"), "--ee-url", fake.url, "--ee-concurrency", "3",
        "--bbox", ",".join(map(str, BBOX)), "--spacing", "400", "--patch-size", str(PATCH),
        "--chunk-size", "4", "--weights", "random", "--out", str(out), "--work-dir", str(work),
    ]  # fmt: skip
    before = len(fake.computations)
    assert main(argv) == 0
    first = capsys.readouterr()
    fetches = [c for c in fake.computations[before:] if (c.width, c.height) != (1, 1)]
    sent = fake.sent_bytes[-len(fetches) :]
    assert f"{len(fetches)} request(s), {sum(sent) / 1e6:.1f} MB" in first.out
    assert {c.collection for c in fetches} == {S2, GSE}

    embedding = fake.world[GSE][0]
    with open_store(str(out)) as ds:
        assert (ds["gse_status"].values == Status.OK).all()
        assert np.isfinite(ds["ssl4eo_resnet18_rgb"].values).all()
        ids, vectors = ds.point_id.values, ds["gse"].values[0]
    assert len(ids) > 4  # more than one chunk
    for pid, vector in zip(ids, vectors, strict=True):
        epsg, x, y = (int(v) for v in pid.split("-"))
        box = patch_geobox(Point(pid, 0, 0, epsg, x, y), PATCH, 10.0)
        cols, rows = np.meshgrid(np.arange(PATCH) + 0.5, np.arange(PATCH) + 0.5)
        cx, cy = box.affine * (cols, rows)
        patch = np.stack(
            [embedding.value_at(b, np.asarray(cx), np.asarray(cy))[0] for b in gse.BANDS]
        )
        mean = patch.reshape(64, -1).astype(np.float64).mean(axis=1)
        np.testing.assert_allclose(vector, mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)

    # A rerun resumes: nothing is fetched again (only the up-front checks ask Earth Engine).
    before = len(fake.computations)
    assert main(argv) == 0
    again = capsys.readouterr()
    assert all((c.width, c.height) == (1, 1) for c in fake.computations[before:])
    assert "imagery: nothing fetched in this run" in again.out

    # Neither the private key nor the access token is anywhere an export leaves things.
    with get_client(sync_client=True) as client:
        artifacts = " ".join(str(a.data) + str(a.description) for a in client.read_artifacts())
        limit = client.read_global_concurrency_limit_by_name(earthengine.CONCURRENCY_LIMIT)
    assert limit.limit == 3
    secrets = [fake.access_token, *pem.splitlines()[3:6]]  # lines of the key's base64 body
    texts = {
        "stdout/stderr": first.out + first.err + again.out + again.err,
        "logs": caplog.text,
        "artifacts": artifacts,
    }
    for root in (out, work):
        for path in root.rglob("*"):
            if path.is_file():
                texts[str(path)] = path.read_bytes().decode("latin-1")
    assert len(texts) > 10
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"a credential leaked into {where}"


def test_earthengine_export__three_tile_sizes_and_a_precomputed_product_in_one_store(
    fake, tmp_path, capsys
):
    """CROMA (12 bands, 120 px tiles, 8 px patches), Panopticon (6 bands, 224 px, 14 px
    patches) and a ResNet (3 bands, 224 px, stride 32) beside gse, as grids: one fetch of the
    union of their bands, one store, each product with its own grid."""
    key = tmp_path / "key.json"
    service_account_key(key, fake)
    models = ["croma_base", "panopticon_base", "ssl4eo_resnet18_rgb", "gse"]
    before = fake.pixel_requests()
    out = tmp_path / "four.zarr"
    argv = [
        "--source", "earthengine", "--ee-key-file", str(key), "--ee-url", fake.url,
        "--models", ",".join(models), "--output", "grid", "--weights", "random",
        "--bbox", ",".join(map(str, BBOX)), "--spacing", "800", "--patch-size", "24",
        "--start", "2024-01-01", "--end", "2024-12-31", "--batch-size", "4",
        "--out", str(out), "--work-dir", str(tmp_path / "work"),
    ]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    with open_store(str(out)) as ds:
        shapes = {m: ds[m].shape for m in models}
        for m in models:
            assert (ds[f"{m}_status"].values == Status.OK).all(), m
            assert np.isfinite(ds[m].values).all(), m
    assert {m: s[2] for m, s in shapes.items()} == {
        "croma_base": 768,
        "panopticon_base": 768,
        "ssl4eo_resnet18_rgb": 512,
        "gse": 64,
    }
    assert len({s[3:] for s in shapes.values()}) == 4, shapes  # four grids side by side
    # One Sentinel-2 fetch for the three models (the union of their 12 bands) and one gse
    # fetch: two computations per chunk, whatever the number of models.
    computations = fake.computations[-(fake.pixel_requests() - before) :]
    s2 = [c for c in computations if c.collection == S2 and c.width > 1]
    assert s2 and all(len(c.selected) == 12 for c in s2)
