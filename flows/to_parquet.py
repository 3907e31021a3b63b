"""`python -m flows.to_parquet STORE OUT.parquet [--time YYYY-MM-DD]`: one time entry's pooled
embeddings as GeoParquet, for GIS tools and data frames.

One row per point: a point geometry (EPSG:4326), `point_id`, `lon`, `lat`, and per model
`<model>_status` (int8), `<model>_reason` (text) and `<model>` (a fixed-size list of float32,
null where the status is not ok; grids are pooled by the nanmean over y/x). The file's
key-value metadata holds GeoParquet's `geo` (version 1.1.0) and, under `swath`, the store's
attributes and the time entry as JSON. Imports neither torch nor Prefect.

The store is read and written a row group at a time (GROUP_BYTES of vectors), so memory stays
the same whatever the store's size. The file is written beside OUT and renamed onto it once
complete: an error halfway leaves OUT as it was.

Exit codes: 0 written; 2 bad input (not a store, no such time entry, cannot write OUT).
"""

import argparse
import json
import os
import sys
from datetime import date
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from pyproj import CRS

from embedders.spec import Status
from flows.flags import iso_date
from tasks.store.layout import open_store
from tasks.store.reading import (
    NotAStore,
    find_time,
    model_names,
    point_bounds,
    pooled,
    statuses,
    store_meta,
    time_entries,
)

GEOPARQUET_VERSION = "1.1.0"  # https://geoparquet.org/releases/v1.1.0/
CRS_EPSG = 4326
GROUP_BYTES = 64 * 2**20  # of vectors per row group


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m flows.to_parquet",
        description="Write one time entry's pooled embeddings of a swath store as GeoParquet.",
    )
    p.add_argument("store", help="the output store (path or URL)")
    p.add_argument("out", help="the GeoParquet file to write")
    p.add_argument("--time", type=iso_date, metavar="YYYY-MM-DD", help="time entry (the last)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        rows, models = write_parquet(args.store, args.out, args.time)
    except (NotAStore, LookupError, OSError) as e:
        print(f"swath to_parquet: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {rows} points, models {', '.join(models)}")
    return 0


def write_parquet(
    store: str, out: str, day: date | None, *, group_bytes: int = GROUP_BYTES
) -> tuple[int, list[str]]:
    """Write the GeoParquet file of the store's time entry starting `day` (the last when
    None) to `out`, a row group of points at a time; its rows and models."""
    meta = store_meta(store)
    partial = f"{out}.partial"
    with open_store(store) as ds:
        t = find_time(ds, day)
        start, end = time_entries(ds)[t]
        models = model_names(meta)
        n = ds.sizes["point"]
        per_point = sum(4 * int(np.prod(ds[m].shape[2:])) for m in models) or 1  # as read
        step = max(1, group_bytes // per_point)
        swath = {**meta, "time": {"index": t, "start": str(start), "end": str(end)}}
        metadata = {
            "geo": json.dumps(_geo(point_bounds(ds))),
            "swath": json.dumps(swath, sort_keys=True),
        }
        writer: pq.ParquetWriter | None = None
        try:
            for a in range(0, n, step):
                table = _rows(ds, models, t, slice(a, min(n, a + step)))
                if writer is None:
                    writer = pq.ParquetWriter(partial, table.schema.with_metadata(metadata))
                writer.write_table(table)
        except BaseException:
            if writer is not None:
                writer.close()
            if os.path.exists(partial):
                os.remove(partial)
            raise
        if writer is not None:
            writer.close()
    os.replace(partial, out)
    return n, models


def _rows(ds: Any, models: list[str], t: int, points: slice) -> pa.Table:
    """The table's rows of `points`."""
    lon = np.asarray(ds["lon"][points].values, dtype=np.float64)
    lat = np.asarray(ds["lat"][points].values, dtype=np.float64)
    columns: dict[str, pa.Array] = {
        "point_id": pa.array([str(v) for v in ds["point_id"][points].values], pa.string()),
        "lon": pa.array(lon),
        "lat": pa.array(lat),
    }
    for model in models:
        status = statuses(ds, model, t, points)
        reasons = ds[f"{model}_reason"].isel(time=t, point=points).values
        columns[f"{model}_status"] = pa.array(status, pa.int8())
        columns[f"{model}_reason"] = pa.array([str(r) for r in reasons], pa.string())
        columns[model] = _vectors(pooled(ds, model, t, points), status == Status.OK)
    columns["geometry"] = pa.array(shapely.to_wkb(shapely.points(lon, lat)), pa.binary())
    return pa.table(columns)


def _vectors(values: np.ndarray, ok: np.ndarray) -> pa.FixedSizeListArray:
    """(point, dim) float32 as a fixed-size list column; null rows where not ok."""
    dim = values.shape[1]
    flat = pa.array(np.where(ok[:, None], values, 0.0).astype(np.float32).ravel())
    return pa.FixedSizeListArray.from_arrays(flat, dim, mask=pa.array(~ok))


def _geo(bbox: tuple[float, float, float, float]) -> dict[str, Any]:
    """GeoParquet's file metadata: one WKB point column in EPSG:4326 (PROJJSON)."""
    return {
        "version": GEOPARQUET_VERSION,
        "primary_column": "geometry",
        "columns": {
            "geometry": {
                "encoding": "WKB",
                "geometry_types": ["Point"],
                "crs": CRS.from_epsg(CRS_EPSG).to_json_dict(),
                "bbox": list(bbox),
            }
        },
    }


if __name__ == "__main__":
    raise SystemExit(main())
