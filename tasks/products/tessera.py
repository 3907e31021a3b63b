"""Tessera: annual 128-d embeddings at 10 m, precomputed, read through geotessera's Zarr API.

Tessera (Feng et al., "TESSERA: Temporal Embeddings of Surface Spectra for Earth
Representation and Analysis", https://arxiv.org/abs/2506.20380) publishes one embedding per
10 m pixel and year, int8 with a float32 scale per pixel, in a Zarr store with one `utmNN`
group per UTM zone (geotessera's `GeoTesseraZarr`). Scales mark what has no embedding: +inf
is land without data, and NaN is water, except in a zone whose group says
`geotessera:mask_source: source_nodata` (geotessera's v1.1 `dclimate` store, which
`--tessera-store v1.1` resolves to): there NaN is data missing from Tessera's source, water
and gaps alike (geotessera's store.py `_nan_is_nodata`; the attribute is written on the root
and every zone group by geotessera's transcode.py).

Per chunk of points, each zone's pixels under the chunk's patches are read once, as a few
disjoint windows aligned to the store's 32 px chunks, through geotessera's own
`read_region_quantized`; no store chunk is read twice for one chunk of points. zarr
coalesces the reads of neighbouring chunks of a shard into one request; its default also
bridges gaps of up to 1 MiB, which would fetch the bytes of another window's chunks, so
Tessera reads coalesce only chunks that touch. A patch lies
on its point's own UTM grid (N x N at 10 m, centred to the pixel): in the point's zone the
pixels are the store's own; where a patch crosses into the next zone, each pixel takes the
value of the pixel that contains it in the zone owning its longitude (nearest, never
blended), and unwritten pixels at a seam are filled from the other zone when it has them.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from pydantic import Field

from embedders.naming import setting
from embedders.spec import OutputKind, Status
from tasks.options import Flag, Options
from tasks.products.product import (
    Fetch,
    ProductEntry,
    ProductError,
    ProductFacts,
    ProductRequest,
    identity_key,
    one_calendar_year,
)
from tasks.sources import sensors
from tasks.sources.failures import classify_error
from tasks.sources.registry import patch_corner

if TYPE_CHECKING:  # zarr, pyproj and the stores are imported when Tessera is read, not listed
    from pyproj import Transformer

    from tasks.plan.chunks import Chunk
    from tasks.plan.points import Point
    from tasks.results import ChunkResult, ModelOutput

DIM = 128
RESOLUTION_M = 10.0
# Bump when a change alters the values this product writes (pooling, masking, mosaicking).
VERSION = 1

FACTS = ProductFacts(
    kind="precomputed",
    sensor="sentinel-1 + sentinel-2 (annual)",
    source_data=(sensors.SENTINEL_1_MISSION, sensors.SENTINEL_2_MISSION),
    resolution_m=RESOLUTION_M,
    tile_px=None,
    stride_px=1,
    dim=DIM,
    url="https://github.com/ucam-eo/geotessera",
    weights="Tessera v1.1 (geotessera's public Zarr store; --tessera-store picks another)",
    licence="CC-BY-4.0",
    description="Tessera annual embeddings, int8 with per-pixel scales, read through geotessera",
    annual=True,
)


class TesseraOptions(Options):
    """Tessera's own settings: where it reads."""

    tessera_store: Annotated[
        str,
        Flag(
            "--tessera-store",
            "V|URL",
            "tessera: a dataset version of geotessera's public store or a store URL/path",
        ),
    ] = Field(
        "v1.1",
        title="Tessera store (tessera)",
        description="where the tessera product reads: a dataset version of geotessera's public "
        "Zarr store (v1.1, v2) or the URL or path of a Tessera Zarr store",
    )

    def where(self) -> str:
        return self.tessera_store


ENTRY = ProductEntry(FACTS, "tasks.products.tessera:resolve", TesseraOptions)

# Per-pixel causes, from the scales array (geotessera's conventions), in the order a pixel
# keeps them when two zones answer for it: a valid value beats water beats missing source
# data (NaN in a source_nodata store) beats no data (+inf) beats outside the store.
VALID, WATER, MISSING, NODATA, OUTSIDE = 0, 1, 2, 3, 4
MASK_SOURCE_ATTR = "geotessera:mask_source"  # "source_nodata": NaN scales are missing data


@dataclass(frozen=True)
class TesseraProduct:
    name: str
    store: str  # as given: a dataset version of the public store, a URL or a path
    year: int
    dataset: str  # the dataset identity: geotessera's dataset name or the store's model
    patch_px: int
    output_kind: OutputKind
    fetches: tuple[Fetch, ...] = ()
    uses_device: bool = False

    def identity(self) -> dict[str, Any]:
        return {
            "product": "tessera",
            "version": VERSION,
            "dataset": self.dataset,
            "dim": DIM,
            "resolution_m": RESOLUTION_M,
            "patch_px": self.patch_px,
            "output": self.output_kind,
            "pooling": "mean of the valid pixels of the patch",
        }

    def key(self) -> str:
        return identity_key(self.name, self.identity(), self.year, self.store)

    def output(self) -> ModelOutput:
        from tasks.results import ModelOutput

        grid = (self.patch_px, self.patch_px) if self.output_kind == "grid" else None
        provenance = {
            "store": self.store,
            "year": "the calendar year of each time entry (Tessera is annual)",
            "description": "Tessera annual embeddings through geotessera",
        }
        return ModelOutput(self.name, DIM, grid, self.identity(), provenance, FACTS, self.patch_px)

    def describe(self) -> str:
        return f"precomputed Tessera {self.dataset}, year {self.year}, from {self.store}"

    def warning(self) -> str | None:
        return None

    def produce(self, chunk: Chunk, inputs_path: str) -> ChunkResult:
        gt = open_store(self.store)
        try:
            values, cause = read_patches(gt, chunk.points, self.year, self.patch_px)
        except Exception as e:  # obstore and zarr raise their own types: classify them all
            raise classify_error(e, f"reading Tessera from {self.store}") from e
        return summarise(values, cause, self.year, grid=self.output_kind == "grid")


def resolve(name: str, request: ProductRequest) -> TesseraProduct:
    """Tessera for this run: one calendar year, present in the store."""
    year = one_calendar_year(name, request)
    store = request.own(name, TesseraOptions).tessera_store
    gt = open_store(store)
    if year not in gt.years:
        raise ProductError(
            f"the Tessera store {store} has no year {request.start.year}; "
            f"its years are {sorted(gt.years)}: pick a window in one of them"
        )
    dataset = gt.dataset.name if gt.dataset is not None else (gt.model_version or "unknown")
    return TesseraProduct(
        name,
        store,
        year,
        str(dataset),
        request.patch_px,
        request.options.output,
    )


_stores: dict[str, Any] = {}
_stores_lock = threading.Lock()


def open_store(store: str) -> Any:
    """The store's GeoTesseraZarr, opened once per process."""
    with _stores_lock:
        if store not in _stores:
            _stores[store] = _open(store)
        return _stores[store]


def _open(store: str) -> Any:
    from geotessera import GeoTesseraZarr
    from geotessera.registry import zarr_store_url
    from obstore.exceptions import BaseError as ObjectStoreError

    location: Any = store
    if store.lstrip("v").replace(".", "").isdigit():  # a dataset version: "v1.1", "2"
        location = zarr_store_url(store)
    elif store.startswith("http://"):  # obstore refuses plain http unless told
        from obstore.store import HTTPStore
        from zarr.storage import ObjectStore

        location = ObjectStore(
            HTTPStore.from_url(store, client_options={"allow_http": True}), read_only=True
        )
    try:
        return GeoTesseraZarr(location)
    except (ValueError, OSError, ObjectStoreError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ProductError(
            f"cannot open the Tessera store {store} ({first_line}); check "
            f"{setting('tessera_store')} (a "
            "dataset version such as v1.1, or the URL or path of a Tessera Zarr store) and "
            "that it can be reached from here"
        ) from e


def patch_centres(point: Point, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres (x, y) of the point's N x N patch on its UTM grid, row-major; the patch
    lies where the imagery sources put it (tasks.sources.registry.patch_corner)."""
    x0, y0 = patch_corner(point.x, point.y, n, RESOLUTION_M)
    xs = x0 + (np.arange(n) + 0.5) * RESOLUTION_M
    ys = y0 - (np.arange(n) + 0.5) * RESOLUTION_M
    gx, gy = np.meshgrid(xs, ys)
    return gx.ravel(), gy.ravel()


@functools.cache
def _transformer(src: int, dst: int) -> Transformer:
    from pyproj import Transformer

    return Transformer.from_crs(src, dst, always_xy=True)


def _zone(lon: np.ndarray) -> np.ndarray:
    return np.clip(np.floor((lon + 180.0) / 6.0).astype(int) + 1, 1, 60)


def read_patches(
    gt: Any, points: Sequence[Point], year: int, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """(points, N*N, 128) float32 dequantised values and (points, N*N) causes."""
    centres = [patch_centres(p, n) for p in points]
    owners = [
        _zone(_transformer(p.epsg, 4326).transform(x, y)[0])
        for p, (x, y) in zip(points, centres, strict=True)
    ]
    values = np.full((len(points), n * n, DIM), np.nan, np.float32)
    cause = np.full((len(points), n * n), OUTSIDE, np.int8)
    zones = sorted({int(z) for o in owners for z in np.unique(o)})
    # A patch within one zone reads only it; a patch across a seam reads all of its pixels
    # from each zone it touches, so a zone can fill what the owner lacks. One read per zone.
    across = [len(np.unique(o)) > 1 for o in owners]
    for zone in zones:
        wanted = [
            np.ones_like(o, bool) if a else o == zone for o, a in zip(owners, across, strict=True)
        ]
        if any(w.any() for w in wanted):
            _read_zone(gt, zone, year, points, centres, (wanted, owners), values, cause)
    return values, cause


def _read_zone(
    gt: Any,
    zone: int,
    year: int,
    points: Sequence[Point],
    centres: list[tuple[np.ndarray, np.ndarray]],
    pixels: tuple[list[np.ndarray], list[np.ndarray]],
    values: np.ndarray,
    cause: np.ndarray,
) -> None:
    """Fill the wanted pixels that zone `zone` holds, reading each store chunk once. A pixel
    takes this zone's answer when it is better (valid, then water, no data, outside) than
    what it has, or as good and this zone owns the pixel's longitude."""
    import zarr

    wanted, owners = pixels
    try:
        # zarr fixes an array's coalescing when it is opened (geotessera caches the zone)
        with zarr.config.set({"array.sharding_coalesce_max_gap_bytes": 0}):
            ds = gt.open_zone(zone=zone)
    except (KeyError, FileNotFoundError, LookupError):
        return  # the store has no such zone: those pixels stay OUTSIDE
    acc = ds.tessera
    epsg = int(acc.crs.split(":")[1])
    xs, ys = ds["x"].values, ds["y"].values
    px = acc.pixel_size
    where: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
    for i, (p, (x, y)) in enumerate(zip(points, centres, strict=True)):
        idx = np.flatnonzero(wanted[i])
        e, nn = _transformer(p.epsg, epsg).transform(x[idx], y[idx])
        col = np.floor((np.asarray(e) - (xs[0] - px / 2)) / px).astype(int)
        row = np.floor(((ys[0] + px / 2) - np.asarray(nn)) / px).astype(int)
        inside = (col >= 0) & (col < len(xs)) & (row >= 0) & (row < len(ys))
        where.append((i, idx[inside], row[inside], col[inside]))
    chunk_y, chunk_x = ds["scales"].encoding.get("chunks", (1, 32, 32))[-2:]
    cells = {
        (r // chunk_y, c // chunk_x)
        for _, _, rows, cols in where
        for r, c in zip(rows, cols, strict=True)
    }
    for y0, y1, x0, x1 in windows(cells):
        r0, r1 = y0 * chunk_y, min(y1 * chunk_y, len(ys))
        c0, c1 = x0 * chunk_x, min(x1 * chunk_x, len(xs))
        bbox = (xs[c0], ys[r1 - 1], xs[c1 - 1], ys[r0])
        emb, scales, _ = acc.read_region_quantized(bbox, year)
        nan = MISSING if ds.attrs.get(MASK_SOURCE_ATTR) == "source_nodata" else WATER
        for i, idx, rows, cols in where:
            hit = (rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1)
            if not hit.any():
                continue
            rr, cc = rows[hit] - r0, cols[hit] - c0
            s = scales[rr, cc]
            q = emb[rr, cc, :].T[:, np.newaxis, :]  # (B, 1, k): geotessera's (B, H, W)
            deq = acc.dequantise(q, s[np.newaxis, :])[0]  # (k, B), NaN where no data
            got = np.where(np.isfinite(s), VALID, np.where(np.isnan(s), nan, NODATA))
            have = cause[i, idx[hit]]
            better = (got < have) | ((got == have) & (owners[i][idx[hit]] == zone))
            targets = idx[hit][better]
            values[i, targets] = deq[better]
            cause[i, targets] = got[better]


def windows(cells: set[tuple[int, int]]) -> list[tuple[int, int, int, int]]:
    """Disjoint boxes (y0, y1, x0, x1) in chunk units covering `cells`: the bounding boxes of
    8-connected groups, merged while any two overlap, so no chunk lies in two boxes."""
    boxes: list[list[int]] = []
    for y, x in sorted(cells):
        boxes.append([y, y + 1, x, x + 1])
    merged = True
    while merged:
        merged = False
        out: list[list[int]] = []
        for b in boxes:
            for o in out:
                if b[0] <= o[1] and o[0] <= b[1] and b[2] <= o[3] and o[2] <= b[3]:  # touch
                    o[:] = [min(o[0], b[0]), max(o[1], b[1]), min(o[2], b[2]), max(o[3], b[3])]
                    merged = True
                    break
            else:
                out.append(b)
        boxes = out
    return [(b[0], b[1], b[2], b[3]) for b in boxes]


def summarise(values: np.ndarray, cause: np.ndarray, year: int, *, grid: bool) -> ChunkResult:
    """Per point: the mean of its valid pixels (or the map), status and reason."""
    from tasks.results import ChunkResult

    valid = cause == VALID
    count = valid.sum(axis=1)
    total = np.where(valid[..., None], values.astype(np.float64), 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled = (total / count[:, None]).astype(np.float32)
    status = np.where(count > 0, Status.OK, Status.NODATA).astype(np.int8)
    reasons = ["" if count[i] else _reason(cause[i], year) for i in range(len(cause))]
    pooled[count == 0] = np.nan
    if grid:
        n = round(values.shape[1] ** 0.5)
        maps = np.where(valid[..., None], values, np.nan)
        embeddings = maps.reshape(len(values), n, n, DIM).transpose(0, 3, 1, 2)
    else:
        embeddings = pooled
    return ChunkResult(embeddings, status, reasons, (count / cause.shape[1]).astype(np.float32))


LABELS = (
    (WATER, "water"),
    (MISSING, "missing in Tessera's source data"),
    (NODATA, "no data"),
    (OUTSIDE, "outside the store"),
)


def _reason(cause: np.ndarray, year: int) -> str:
    shares = {c: float((cause == c).mean()) for c, _ in LABELS}
    if shares[WATER] == 1.0:
        return f"water: Tessera has no embedding over water ({year}, every pixel of the patch)"
    if shares[MISSING] == 1.0:
        return (
            f"missing: Tessera's source data has no embedding here ({year}, every pixel of "
            "the patch; this store marks water and gaps in its source data alike)"
        )
    parts = [f"{label} {shares[c]:.0%}" for c, label in LABELS if shares[c]]
    return f"no Tessera coverage for the patch in {year} ({', '.join(parts)})"
