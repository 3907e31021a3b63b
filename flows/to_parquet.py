"""`python -m flows.to_parquet STORE OUT.parquet [--time YYYY-MM-DD]`: one time entry's pooled
embeddings as GeoParquet, for GIS tools and data frames.

One row per point: a point geometry (EPSG:4326), `point_id`, `lon`, `lat`, and per model
`<model>_status` (int8), `<model>_reason` (text) and `<model>` (a fixed-size list of float32,
null where the status is not ok; grids are pooled by the nanmean over y/x). The file's
key-value metadata holds GeoParquet's `geo` (version 1.1.0) and, under `swath`, the store's
attributes and the time entry as JSON. Imports neither torch nor Prefect.

Exit codes: 0 written; 2 bad input (not a store, no such time entry, cannot write OUT).
"""

import argparse
import json
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
from tasks.reading import (
    NotAStore,
    find_time,
    model_names,
    pooled,
    statuses,
    store_meta,
    time_entries,
)
from tasks.store import open_store

GEOPARQUET_VERSION = "1.1.0"  # https://geoparquet.org/releases/v1.1.0/
CRS_EPSG = 4326


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
        table = store_table(args.store, args.time)
        pq.write_table(table, args.out)
    except (NotAStore, LookupError, OSError) as e:
        print(f"swath to_parquet: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {table.num_rows} points, models {', '.join(_models(table))}")
    return 0


def store_table(store: str, day: date | None) -> pa.Table:
    """The GeoParquet table of the store's time entry starting `day` (the last when None)."""
    meta = store_meta(store)
    with open_store(store) as ds:
        t = find_time(ds, day)
        start, end = time_entries(ds)[t]
        lon = np.asarray(ds["lon"].values, dtype=np.float64)
        lat = np.asarray(ds["lat"].values, dtype=np.float64)
        columns: dict[str, pa.Array] = {
            "point_id": pa.array([str(v) for v in ds["point_id"].values], pa.string()),
            "lon": pa.array(lon),
            "lat": pa.array(lat),
        }
        for model in model_names(meta):
            status = statuses(ds, model, t)
            reasons = ds[f"{model}_reason"].isel(time=t).values
            columns[f"{model}_status"] = pa.array(status, pa.int8())
            columns[f"{model}_reason"] = pa.array([str(r) for r in reasons], pa.string())
            columns[model] = _vectors(pooled(ds, model, t), status == Status.OK)
    columns["geometry"] = pa.array(shapely.to_wkb(shapely.points(lon, lat)), pa.binary())
    table = pa.table(columns)
    swath = {**meta, "time": {"index": t, "start": str(start), "end": str(end)}}
    return table.replace_schema_metadata(
        {"geo": json.dumps(_geo(lon, lat)), "swath": json.dumps(swath, sort_keys=True)}
    )


def _vectors(values: np.ndarray, ok: np.ndarray) -> pa.FixedSizeListArray:
    """(point, dim) float32 as a fixed-size list column; null rows where not ok."""
    dim = values.shape[1]
    flat = pa.array(np.where(ok[:, None], values, 0.0).astype(np.float32).ravel())
    return pa.FixedSizeListArray.from_arrays(flat, dim, mask=pa.array(~ok))


def _geo(lon: np.ndarray, lat: np.ndarray) -> dict[str, Any]:
    """GeoParquet's file metadata: one WKB point column in EPSG:4326 (PROJJSON)."""
    return {
        "version": GEOPARQUET_VERSION,
        "primary_column": "geometry",
        "columns": {
            "geometry": {
                "encoding": "WKB",
                "geometry_types": ["Point"],
                "crs": CRS.from_epsg(CRS_EPSG).to_json_dict(),
                "bbox": [float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max())],
            }
        },
    }


def _models(table: pa.Table) -> list[str]:
    return [n.removesuffix("_status") for n in table.column_names if n.endswith("_status")]


if __name__ == "__main__":
    raise SystemExit(main())
