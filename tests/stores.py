"""Small finished output stores, written with swath's own `create_store` + `write_chunk`, for
the tests of what reads a store (quick looks, inspect, GeoParquet)."""

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import zarr

from embedders.spec import Status
from tasks.plan.chunks import make_chunks
from tasks.plan.points import Point, plan_points
from tasks.plan.regions import bbox_region
from tasks.plan.shards import Shards
from tasks.products import tessera
from tasks.products.product import ProductFacts
from tasks.results import ChunkResult, ModelOutput
from tasks.sources.registry import SensorConfig
from tasks.store.compact import Dtype
from tasks.store.layout import StoreLayout, create_store
from tasks.write import write_chunk

BBOX = (-67.66, -47.86, -67.64, -47.845)
SPACING_M = 250.0
WINDOW = (date(2024, 1, 1), date(2024, 12, 31))
SENSOR = SensorConfig(
    sensor="sentinel-2-l2a",
    catalog="/data/catalog.json",
    collection="sentinel-2-l2a",
    resolution_m=10.0,
    patch_px=8,
    start=str(WINDOW[0]),
    end=str(WINDOW[1]),
)
WEIGHTS = {"kind": "pretrained", "identity": "W.V1"}


def facts(dim: int, stride: int) -> ProductFacts:
    """A model's facts, as a registered model declares them."""
    return ProductFacts(
        kind="model",
        sensor="sentinel-2-l2a",
        source_data=("https://sentinel.esa.int/web/sentinel/missions/sentinel-2",),
        resolution_m=10.0,
        tile_px=8 * stride,
        stride_px=stride,
        dim=dim,
        url="https://example.org/weights.pth",
        weights="W.V1",
        licence="CC-BY-4.0",
        description="a test's model",
        bands=("B02",),
    )


POOLED = ModelOutput(
    "pooled_model",
    6,
    None,
    identity={"product": "model", "weights": WEIGHTS, "sensor": SENSOR.identity()},
    provenance={"catalog": SENSOR.catalog},
    facts=facts(6, 4),
    patch_px=8,
)
GRID = ModelOutput(
    "grid_model",
    4,
    (2, 2),
    identity={"product": "model", "weights": {"kind": "random", "identity": "seed=0"}},
    provenance={"catalog": SENSOR.catalog},
    facts=facts(4, 4),
    patch_px=8,
)
NONE_OK = ModelOutput(
    "tessera",
    3,
    None,
    identity={"product": "tessera", "dataset": "v1.1"},
    provenance={"store": "/data/tessera.zarr"},
    facts=tessera.FACTS,
    patch_px=8,
)
MODELS = (POOLED, GRID, NONE_OK)


@dataclass
class Written:
    path: str
    layout: StoreLayout
    points: list[Point]
    status: dict[str, np.ndarray]  # model -> (point,) int8
    embeddings: dict[str, np.ndarray]  # model -> (point, dim) or (point, dim, y, x)
    reasons: dict[str, list[str]]


def statuses(n: int) -> dict[str, np.ndarray]:
    """Most points ok; point 1 no data, point 2 failed, the last pending (its chunk not done
    in the grid model); every point of `tessera` no data."""
    ok = np.full(n, Status.OK, dtype=np.int8)
    ok[1], ok[2] = Status.NODATA, Status.FAILED
    return {
        "pooled_model": ok,
        "grid_model": ok.copy(),
        "tessera": np.full(n, Status.NODATA, dtype=np.int8),
    }


def write_store(
    path: Path, *, chunk_size: int = 8, dtype: Dtype = "float32", shards: Shards = "auto"
) -> Written:
    """A store over BBOX at SPACING_M with the three MODELS, one time entry, embeddings stored
    as `dtype`, its files laid out as `shards` asks. The last chunk of `grid_model` is not
    written, so its points stay pending."""
    points = plan_points(bbox_region(*BBOX), SPACING_M)
    layout = StoreLayout(points, chunk_size, MODELS, dtype, shards)
    region = {"bbox": list(BBOX), "geojson": None, "spacing_m": SPACING_M}
    create_store(str(path), layout, WINDOW, attrs={"region": region})
    rng = np.random.default_rng(0)
    status = statuses(len(points))
    chunks = make_chunks(points, chunk_size)
    status["grid_model"][chunks[-1].start :] = Status.PENDING
    written = Written(str(path), layout, list(points), status, {}, {})
    for m in MODELS:
        emb = rng.standard_normal((len(points), m.embed_dim, *(m.grid_shape or ()))).astype("f4")
        emb[status[m.name] != Status.OK] = np.nan
        reasons = [_reason(int(s)) for s in status[m.name]]
        written.embeddings[m.name], written.reasons[m.name] = emb, reasons
        for c in chunks:
            s = slice(c.start, c.stop)
            if (status[m.name][s] == Status.PENDING).all():
                continue
            valid = (status[m.name][s] == Status.OK).astype("float32")
            result = ChunkResult(emb[s], status[m.name][s], reasons[s], valid)
            write_chunk(str(path), c, m.name, result, 0)
    return written


def write_wide_store(
    path: Path,
    points: int,
    dim: int,
    vectors: Callable[[np.ndarray, np.ndarray], np.ndarray],
    failed: slice = slice(0),
) -> int:
    """A store of about `points` points on a square region at 100 m, one model `m` of `dim`
    whose vectors are `vectors(lon, lat)` ((point, dim) float32), every point ok but those
    of `failed`; its number of points. The model's arrays are written whole, past
    `write_chunk` (fast at 10^5 points; the checksums stay unset): for tests of readers."""
    side = math.sqrt(points) * 100.0 / 111_320.0
    bbox = (10.0, 45.0, 10.0 + side / math.cos(math.radians(45.0)), 45.0 + side)
    table = plan_points(bbox_region(*bbox), 100.0)
    weights = {"kind": "pretrained", "identity": "W.V1"}
    model = ModelOutput("m", dim, None, identity={"product": "model", "weights": weights})
    region = {"bbox": list(bbox), "geojson": None, "spacing_m": 100.0}
    create_store(
        str(path), StoreLayout(table, 2048, (model,), "float32"), WINDOW, attrs={"region": region}
    )
    group = zarr.open_group(str(path), mode="r+")
    columns = table.columns(0, len(table))
    group["m"][0] = vectors(columns["lon"], columns["lat"]).astype(np.float32)
    status = np.full(len(table), Status.OK, dtype=np.int8)
    status[failed] = Status.FAILED
    group["m_status"][0] = status
    return len(table)


def _reason(status: int) -> str:
    return {Status.NODATA: "no item covers it", Status.FAILED: "timeout"}.get(Status(status), "")
