"""The command line's flags, and how they become the flow's parameters: parsing only, so that
`--help` and a bad argument answer before torch, Prefect or any model is imported."""

import argparse
from datetime import date
from typing import Any

from pydantic import ValidationError

from flows.params import Imagery, Inference, Output, Region, Window
from tasks.sources import SOURCES

FLAGS = {  # pydantic field -> command-line flag, for error messages
    "bbox": "--bbox",
    "geojson": "--region",
    "spacing_m": "--spacing",
    "start": "--start",
    "end": "--end",
    "models": "--models",
    "source": "--source",
    "catalog": "--catalog",
    "stac_url": "--stac-url",
    "collection": "--collection",
    "max_cloud_cover": "--max-cloud-cover",
    "stac_signing": "--stac-signing",
    "ee_project": "--ee-project",
    "ee_key_file": "--ee-key-file",
    "ee_url": "--ee-url",
    "ee_concurrency": "--ee-concurrency",
    "patch_px": "--patch-size",
    "tessera_store": "--tessera-store",
    "input_prep": "--input-prep",
    "output": "--output",
    "tile_overlap_px": "--tile-overlap",
    "batch_size": "--batch-size",
    "compile": "--compile",
    "channels_last": "--channels-last",
    "device": "--device",
    "precision": "--precision",
    "weights": "--weights",
    "store": "--out",
    "work_dir": "--work-dir",
    "chunk_size": "--chunk-size",
    "chunks_per_run": "--chunks-per-run",
    "dtype": "--dtype",
}


DASK_WORKERS = 2  # workers of the local cluster that --runner dask starts by default


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m flows.export",
        description="Export foundation-model embeddings of every point of a region into one "
        "Zarr store. With no arguments: the offline demo over a real Sentinel-2 sample.",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--bbox", type=_bbox, help="west,south,east,north in degrees")
    where.add_argument("--region", metavar="FILE", help="GeoJSON polygon file (holes respected)")
    p.add_argument("--spacing", type=float, metavar="M", help="grid spacing in metres (250)")
    p.add_argument("--start", type=iso_date, help="first day, YYYY-MM-DD (2024-01-01)")
    p.add_argument("--end", type=iso_date, help="last day, YYYY-MM-DD (2024-12-31)")
    p.add_argument("--models", type=lambda s: [m.strip() for m in s.split(",") if m.strip()])
    p.add_argument("--out", metavar="PATH", help="output Zarr store (swath-demo.zarr)")
    p.add_argument(
        "--work-dir", metavar="DIR", help="inputs, results, demo catalog (~/.cache/swath)"
    )
    src = p.add_argument_group("imagery source")
    src.add_argument("--source", choices=list(SOURCES), help="where imagery comes from")
    src.add_argument("--catalog", help="stac-catalog: catalog.json path or URL ('demo')")
    src.add_argument(
        "--stac-url", metavar="URL", help="stac-api: root URL, planetary-computer or earth-search"
    )
    src.add_argument("--collection", help="collection id (the sensor's own for the source)")
    src.add_argument(
        "--max-cloud-cover", type=float, metavar="PCT", help="skip cloudier scenes (80)"
    )
    src.add_argument("--stac-signing", choices=["auto", "planetary-computer", "none"])
    src.add_argument("--ee-project", metavar="ID", help="earthengine: Google Cloud project")
    src.add_argument(
        "--ee-key-file", metavar="KEY.json", help="earthengine: service account key (else ADC)"
    )
    src.add_argument("--ee-url", metavar="URL", help="earthengine: API endpoint (high-volume)")
    src.add_argument(
        "--ee-concurrency", type=int, metavar="N", help="earthengine: requests in flight (8)"
    )
    p.add_argument("--patch-size", type=int, metavar="PX", help="patch side in pixels (64)")
    p.add_argument(
        "--tessera-store",
        metavar="V|URL",
        help="tessera: a dataset version of geotessera's public store (v1.1) or a store URL/path",
    )
    p.add_argument("--chunk-size", type=int, metavar="N", help="points per chunk")
    p.add_argument(
        "--chunks-per-run", type=int, metavar="N", help="chunks per flow run, beyond: child runs"
    )
    p.add_argument(
        "--dtype", choices=["float32", "float16", "int8"], help="stored embeddings (float32)"
    )
    p.add_argument("--input-prep", choices=["resize", "tile"])
    p.add_argument("--output", choices=["pooled", "grid"])
    p.add_argument(
        "--batch-size", type=_batch_size, metavar="N|auto", help="tiles per forward (auto)"
    )
    p.add_argument("--tile-overlap", type=int, metavar="PX")
    p.add_argument(
        "--compile",
        action="store_true",
        help="compile each model's forward with torch.compile, once per process (off)",
    )
    p.add_argument(
        "--channels-last",
        choices=["auto", "on", "off"],
        help="convolutional models in channels-last memory order (auto: on CUDA)",
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--weights", choices=["auto", "pretrained", "random"])
    p.add_argument("--previous-month", action="store_true", help="export last calendar month")
    p.add_argument("--refresh", action="store_true", help="redo every chunk of this window")
    p.add_argument("--wait", action="store_true", help="wait for another export of the store")
    p.add_argument("--runner", choices=["threads", "dask"], default="threads")
    p.add_argument("--dask-address", metavar="ADDR", help="existing Dask scheduler (tcp://...)")
    p.add_argument(
        "--dask-workers", type=int, metavar="N", help=f"local cluster size ({DASK_WORKERS})"
    )
    p.add_argument("--list-models", action="store_true", help="list the models and exit")
    p.add_argument("--verbose", action="store_true", help="show Prefect's logs of every task")
    p.add_argument(
        "--dry-run", action="store_true", help="say what the export would do; write nothing"
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="check that every chunk marked done in --out holds the data written with it, "
        "and exit (0 sound, 1 damaged: rerun the export, 2 not a swath store)",
    )
    return p


def _bbox(text: str) -> tuple[float, float, float, float]:
    try:
        w, s, e, n = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not four numbers west,south,east,north"
        ) from None
    return w, s, e, n


def _batch_size(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number or 'auto'") from None


def iso_date(text: str) -> date:
    """An argparse type: a YYYY-MM-DD date, or a clear error."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a date YYYY-MM-DD") from None


def contradictions(a: argparse.Namespace) -> str | None:
    """Flags that cannot go together, in one line, or None."""
    if a.previous_month and (a.start or a.end):
        given = " and ".join(f for f, v in (("--start", a.start), ("--end", a.end)) if v)
        return (
            f"--previous-month picks its own window, and {given} another; give either "
            "--previous-month or --start/--end"
        )
    return None


def params(a: argparse.Namespace) -> dict[str, Any]:
    """The flow's parameters from the flags given; unset flags keep the defaults."""

    def given(**kw: Any) -> dict[str, Any]:
        return {k: v for k, v in kw.items() if v is not None}

    region = given(bbox=a.bbox, geojson=a.region, spacing_m=a.spacing)
    return {
        "region": Region(**region),
        "window": Window(
            **given(start=a.start, end=a.end, previous_month=a.previous_month or None)
        ),
        "imagery": Imagery(
            **given(
                source=a.source,
                catalog=a.catalog,
                stac_url=a.stac_url,
                collection=a.collection,
                max_cloud_cover=a.max_cloud_cover,
                stac_signing=a.stac_signing,
                ee_project=a.ee_project,
                ee_key_file=a.ee_key_file,
                ee_url=a.ee_url,
                ee_concurrency=a.ee_concurrency,
                patch_px=a.patch_size,
                tessera_store=a.tessera_store,
            )
        ),
        "inference": Inference(
            **given(
                models=a.models,
                input_prep=a.input_prep,
                output=a.output,
                batch_size=a.batch_size,
                compile=a.compile or None,
                channels_last=a.channels_last,
                tile_overlap_px=a.tile_overlap,
                device=a.device,
                precision=a.precision,
                weights=a.weights,
            )
        ),
        "output": Output(
            **given(
                store=a.out,
                work_dir=a.work_dir,
                chunk_size=a.chunk_size,
                chunks_per_run=a.chunks_per_run,
                dtype=a.dtype,
                refresh=a.refresh or None,
                wait=a.wait or None,
            )
        ),
    }


def validation_message(e: ValidationError) -> str:
    err = e.errors()[0]
    field = str(err["loc"][0]) if err["loc"] else ""
    flag = FLAGS.get(field, field)
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "literal_error" and field == "models":
        from tasks.products import PRODUCTS

        return f"unknown model '{err['input']}'; known models: {', '.join(PRODUCTS)}"
    if not flag:
        return msg
    return f"invalid {flag} {err.get('input')!s}: {msg}"


def glue_negative_values(argv: list[str]) -> list[str]:
    """`--bbox -67.66,-47.86,...`: argparse takes a value that starts with '-' and is not a
    plain number for an option, so such values are glued to their flag (`--bbox=-67.66,...`)."""
    out: list[str] = []
    for token in argv:
        if out and out[-1] == "--bbox" and token.startswith("-"):
            out[-1] = f"--bbox={token}"
        else:
            out.append(token)
    return out
