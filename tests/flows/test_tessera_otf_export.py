"""Tessera computed on the fly beside the published Tessera, in one store: the command line
exports `tessera_otf` (monthly Sentinel-2 and Sentinel-1 series from a static catalog) and
`tessera` (a fake store in geotessera's layout served on 127.0.0.1) for the same points.

The catalog: the demo's Sentinel-2 sample (an item spanning every month) with the four bands
Tessera takes that the sample lacks, made up; one Sentinel-1 RTC scene in April. With random
weights the comparison proves the plumbing only: same points, same grid, same pooling."""

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pystac
import pytest
import xarray as xr
import zarr

from embedders.spec import Status
from flows.cli import main
from flows.inspect import main as inspect
from tasks.sources.demo import DEMO_BBOX, DEMO_EPSG, DEMO_GEOMETRY, build_demo_catalog
from tasks.sources.demo import demo_footprint_utm as footprint
from tasks.store.layout import read_meta
from tests.fakes import serve_directory
from tests.rasters import write_cog
from tests.stac_api_server import S1_NODATA, Scene, s1_item
from tests.tessera_data import DEMO, build_tessera_store

INSIDE = (-67.655, -47.858, -67.63, -47.850)  # inside the demo sample and the Tessera tiles
PATCH = 8
MISSING = ("B05", "B06", "B08", "B8A")  # Tessera's bands the demo sample lacks


def _add_s2_bands(root: Path, rng: np.random.Generator, names: tuple[str, ...] = MISSING) -> None:
    """The missing bands, as the sample's own 10 m assets are declared."""
    box = footprint()
    width, height = round((box.right - box.left) / 10), round((box.top - box.bottom) / 10)
    item_dir = root / "xrspatial-sentinel-2-sample"
    path = item_dir / "xrspatial-sentinel-2-sample.json"
    item = json.loads(path.read_text())
    template = item["assets"]["B02"]
    for name in names:
        dn = rng.integers(1200, 3800, (height, width)).astype(np.uint16)
        write_cog(item_dir / f"{name}.tif", dn, epsg=DEMO_EPSG, x0=box.left, y0=box.top, res=10.0)
        asset = json.loads(json.dumps(template))
        asset["href"], asset["title"] = f"./{name}.tif", name
        asset["eo:bands"] = [{"name": name}]
        item["assets"][name] = asset
    path.write_text(json.dumps(item))


def _add_s1_scene(root: Path, rng: np.random.Generator) -> None:
    box = footprint()
    width, height = round((box.right - box.left) / 10), round((box.top - box.bottom) / 10)
    scene = Scene("S1A_IW_GRDH_1SDV_20240419_fake_rtc", 19, sensor="s1")
    item = pystac.Item.from_dict(s1_item(scene, "http://unused", "http://unused"))
    when = datetime(2024, 4, 19, 10, tzinfo=UTC)
    item.datetime = item.common_metadata.start_datetime = item.common_metadata.end_datetime = when
    item.geometry, item.bbox = DEMO_GEOMETRY.json, list(DEMO_BBOX)
    item.clear_links()
    folder = root / scene.id
    folder.mkdir()
    for k, key in enumerate(("vv", "vh")):
        power = np.power(10.0, rng.normal(-12.0 - 6.0 * k, 3.0, (height, width)) / 10.0)
        write_cog(folder / f"{key}.tif", power.astype(np.float32), epsg=DEMO_EPSG, x0=box.left,
                  y0=box.top, res=10.0, nodata=S1_NODATA)  # fmt: skip
        item.assets[key].href = str(folder / f"{key}.tif")
    catalog = pystac.read_file(str(root / "catalog.json"))
    assert isinstance(catalog, pystac.Catalog)
    catalog.add_item(item)
    catalog.normalize_and_save(str(root), pystac.CatalogType.SELF_CONTAINED)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = build_demo_catalog(tmp_path_factory.mktemp("otf")).parent
    rng = np.random.default_rng(24)
    _add_s2_bands(root, rng)
    _add_s1_scene(root, rng)
    return root / "catalog.json"


@pytest.fixture(scope="module")
def tessera_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("tessera-store")
    build_tessera_store(root, DEMO)
    with serve_directory(root) as base:
        yield f"{base}/tessera.zarr"


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two (n, D) arrays."""
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_tessera_otf_export__computed_and_published_tessera_in_one_store(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, catalog: Path, tessera_url: str
) -> None:
    out, work = tmp_path / "t.zarr", tmp_path / "work"
    west, south, east, north = INSIDE
    code = main(["--catalog", str(catalog), "--out", str(out), "--work-dir", str(work),
                 "--models", "tessera_otf,tessera", "--tessera-store", tessera_url,
                 "--weights", "random", "--output", "grid", "--start", "2024-01-01",
                 "--end", "2024-12-31", "--bbox", f"{west},{south},{east},{north}",
                 "--spacing", "400", "--patch-size", str(PATCH), "--batch-size", "64"])  # fmt: skip
    assert code == 0, capsys.readouterr()
    ds = xr.open_zarr(out)
    n = ds.sizes["point"]
    computed, published = ds["tessera_otf"].values[0], ds["tessera"].values[0]
    assert n >= 4 and computed.shape == published.shape == (n, 128, PATCH, PATCH)
    for name in ("tessera_otf", "tessera"):
        assert (ds[f"{name}_status"].values == Status.OK).all(), name
    assert np.isfinite(computed).all() and np.isfinite(published).all()
    # the comparison: pooled as the mean of the grid's pixels, for both, on the same points
    capsys.readouterr()
    assert inspect([str(out), "--compare", "tessera_otf,tessera"]) == 0
    said = capsys.readouterr().out
    cos = cosine(computed.mean(axis=(2, 3)), published.mean(axis=(2, 3)))
    assert np.isfinite(cos).all()
    assert said.startswith(
        f"cosine of tessera_otf to tessera, 2024-01-01..2024-12-31: {n} of {n} points ok in "
        f"both; min {cos.min():.4f}, median {np.median(cos):.4f}, max {cos.max():.4f}\n"
    ), said
    assert inspect([str(out), "--compare", "tessera_otf,gse"]) == 2
    assert "the store has no product 'gse'; it has tessera_otf, tessera" in capsys.readouterr().err
    model = read_meta(str(out))["models"]["tessera_otf"]
    assert "sentinel-1-rtc" in str(model) and "monthly" in str(model)
    # one inputs group per sensor, each of 12 monthly steps
    inputs = zarr.open_group(str(next(work.rglob("inputs.zarr"))), mode="r")
    groups = sorted(inputs.group_keys())
    assert [g.split("-")[1] for g in groups] == ["1", "2"], groups
    for g in groups:
        chunk = next(iter(inputs[g].group_keys()))  # type: ignore[union-attr]
        assert len(inputs[g][chunk].attrs["steps"]) == 12  # type: ignore[index]
