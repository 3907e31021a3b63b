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
