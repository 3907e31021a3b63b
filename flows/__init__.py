"""Prefect flows. `python -m flows.export` runs the export locally on the embedded Prefect API."""

import os

# Defaults for running offline on small machines, set before Prefect is imported; a user's
# own settings (environment or Prefect profile) win. The embedded API takes 12-26 s to
# start on 2 cores, past Prefect's default wait.
for _name, _value in {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
}.items():
    os.environ.setdefault(_name, _value)
