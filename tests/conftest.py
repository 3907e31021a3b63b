"""Session-wide test setup: offline Prefect settings, a private Prefect home and torch cache,
removed when the session ends."""

import os
import shutil
import tempfile

from tests.waiting import HANG_GUARD_S

_home = tempfile.mkdtemp(prefix="swath-tests-")
for name, value in {
    "PREFECT_HOME": os.path.join(_home, "prefect"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_UI_ENABLED": "false",
    # A hang guard, not a timing: a Prefect server takes minutes to start on a loaded machine.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": str(int(HANG_GUARD_S)),
    "DO_NOT_TRACK": "1",
    "NO_PROXY": "127.0.0.1,localhost",
    # Never pick up a developer's cached checkpoints: weights tests place their own files.
    "TORCH_HOME": os.path.join(_home, "torch"),
}.items():
    os.environ[name] = value

# The settings declare how messages name them (embedders/naming.py), as they do wherever the
# flow or the command line runs: messages of tasks/ and embedders/ name the form's fields
# (or, under named_as("flags"), the flags) whatever the tests' order.
import flows.params  # noqa: E402, F401


def pytest_unconfigure() -> None:
    """After the session's fixtures (the Prefect test server among them) are torn down."""
    shutil.rmtree(_home, ignore_errors=True)
