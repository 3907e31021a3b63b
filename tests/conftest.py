"""Session-wide test setup: offline Prefect settings, a private Prefect home and torch cache."""

import os
import tempfile

_home = tempfile.mkdtemp(prefix="swath-tests-")
for name, value in {
    "PREFECT_HOME": os.path.join(_home, "prefect"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_UI_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "DO_NOT_TRACK": "1",
    "NO_PROXY": "127.0.0.1,localhost",
    # Never pick up a developer's cached checkpoints: weights tests place their own files.
    "TORCH_HOME": os.path.join(_home, "torch"),
}.items():
    os.environ[name] = value
