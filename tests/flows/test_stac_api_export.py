"""A whole export from a STAC search API through the command line, in process: the fake
Planetary Computer API on 127.0.0.1, with signing; the token stays out of output and store."""

from pathlib import Path

import numpy as np
from odc.geo.geom import BoundingBox

from embedders.spec import Status
from flows.cli import main
from tasks.store.layout import open_store
from tests.stac_api_server import EPSG, RES, X0, Y0, Scene, serve_stac_api

SIZE = 256  # px: 2.56 km a side, room for a few 32 px patches 400 m apart


def test_export__from_a_signed_stac_api_every_point_is_ok(tmp_path: Path, capfd) -> None:
    scenes = [
        Scene("old", 2, size=SIZE),
        Scene("new", 9, baseline="05.00", add_dn=1000, delta=200, size=SIZE),
    ]
    margin = 400.0  # more than half a patch (160 m) inside the scenes
    inner = BoundingBox(
        X0 + margin, Y0 - SIZE * RES + margin, X0 + SIZE * RES - margin, Y0 - margin,
        crs=f"EPSG:{EPSG}",
    ).to_crs("EPSG:4326")  # fmt: skip
    bbox = ",".join(f"{v:.6f}" for v in inner)
    out, work = tmp_path / "e.zarr", tmp_path / "work"
    with serve_stac_api(tmp_path / "api", scenes, style="planetary-computer") as api:
        code = main([
            "--source", "stac-api", "--stac-url", api.url, "--stac-signing", "planetary-computer",
            "--bbox", bbox, "--spacing", "400", "--patch-size", "32", "--chunk-size", "4",
            "--start", "2021-06-01", "--end", "2021-06-30",
            "--models", "ssl4eo_resnet18_rgb", "--weights", "random",
            "--work-dir", str(work), "--out", str(out),
        ])  # fmt: skip
        token = api.token
        signed_reads = [r for r in api.log if ".tif" in r.path]
    captured = capfd.readouterr()
    assert code == 0, captured.err[-3000:]
    ds = open_store(str(out))
    status = ds["ssl4eo_resnet18_rgb_status"].values
    assert status.size >= 4 and (status == Status.OK).all()
    assert np.isfinite(ds["ssl4eo_resnet18_rgb"].values).all()
    assert signed_reads and all(r.path.endswith(f"?{token}") for r in signed_reads)
    secret = token.split("&")[0].encode()  # sig=<hex>
    assert secret not in (captured.out + captured.err).encode()
    for folder in (out, work):
        for path in folder.rglob("*"):
            assert not path.is_file() or secret not in path.read_bytes(), path


def test_export__a_mislabelled_item_is_dropped_and_named_in_the_summary(
    tmp_path: Path, capfd
) -> None:
    bad = "S2B_33TWN_20210609_0_L2A"  # Earth Search says the offset is removed; it is not
    scenes = [
        Scene("old", 2, size=SIZE),
        Scene(bad, 9, baseline="05.09", flag=True, add_dn=1000, size=SIZE),
    ]
    centre = BoundingBox(X0 + 1200, Y0 - 1400, X0 + 1400, Y0 - 1200, crs=f"EPSG:{EPSG}").to_crs(
        "EPSG:4326"
    )
    bbox = ",".join(f"{v:.6f}" for v in centre)
    out, work = tmp_path / "e.zarr", tmp_path / "work"
    with serve_stac_api(tmp_path / "api", scenes, style="earth-search") as api:
        code = main([
            "--source", "stac-api", "--stac-url", api.url, "--stac-signing", "none",
            "--bbox", bbox, "--spacing", "200", "--patch-size", "32",
            "--start", "2021-06-01", "--end", "2021-06-30",
            "--models", "ssl4eo_resnet18_rgb", "--weights", "random",
            "--work-dir", str(work), "--out", str(out),
        ])  # fmt: skip
    captured = capfd.readouterr()
    assert code == 0, captured.err[-3000:]  # every point keeps the other date
    line = next(x for x in captured.out.splitlines() if x.startswith("imagery item dropped"))
    assert bad in line and "earthsearch:boa_offset_applied true" in line and "floor" in line
