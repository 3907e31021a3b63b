"""Serve the export's deployments from this process: the simplest way to run swath from the
Prefect UI and on a schedule, with no work pool.

    prefect server start --host 127.0.0.1 --port 4200          # terminal 1
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m deployments.serve   # terminal 2

Two deployments appear in the UI:
- swath-export/demo: the offline demo; press Run, or Custom Run to fill the parameter form.
- swath-export/monthly: on the 2nd of every month at 03:00 UTC, exports the previous calendar
  month for the region below into one store, one time entry per month. Edit REGION, CATALOG
  and STORE for your data. Stopping this process pauses the schedule.
"""

from prefect import serve
from prefect.deployments.runner import RunnerDeployment

import flows  # noqa: F401 - offline Prefect defaults
from flows.export import export
from flows.params import Imagery, Inference, Output, Region, Window

REGION = Region(bbox=(-67.660, -47.861, -67.626, -47.848), spacing_m=250)
CATALOG = "demo"  # a static STAC catalog.json path or URL
STORE = "swath-monthly.zarr"
MONTHLY_CRON = "0 3 2 * *"


def monthly_deployment() -> RunnerDeployment:
    """The recurring export: the previous calendar month, each run one time entry."""
    return export.to_deployment(  # type: ignore[return-value]
        name="monthly",
        cron=MONTHLY_CRON,
        tags=["swath", "scheduled"],
        description=(
            "Each run exports the previous calendar month into one store, one time entry per "
            "month. EDIT REGION, CATALOG and STORE in deployments/serve.py first: the shipped "
            "demo catalog has no imagery after 2025-12-31, so its runs end Failed (nodata)."
        ),
        parameters={
            "region": REGION.model_dump(mode="json"),
            "window": Window(previous_month=True).model_dump(mode="json"),
            "imagery": Imagery(catalog=CATALOG).model_dump(mode="json"),
            "inference": Inference().model_dump(mode="json"),
            "output": Output(store=STORE, wait=True).model_dump(mode="json"),
        },
    )


def main() -> None:
    if CATALOG == "demo":
        print(
            "swath: the monthly deployment reads the demo catalog, whose one item ends on "
            "2025-12-31: its runs will end Failed with every point nodata. Set REGION, "
            "CATALOG and STORE in deployments/serve.py to your data.",
            flush=True,
        )
    demo = export.to_deployment(name="demo", tags=["swath"], description="The offline demo.")
    serve(demo, monthly_deployment())  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
