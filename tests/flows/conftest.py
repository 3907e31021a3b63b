"""Flows run against one Prefect test server for the whole session, and a served demo catalog."""

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness

from tasks.sources.demo import build_demo_catalog
from tests.fakes import Request, serve_directory
from tests.waiting import HANG_GUARD_S


@pytest.fixture(autouse=True, scope="session")
def prefect_backend() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=int(HANG_GUARD_S)):
        yield


@pytest.fixture(autouse=True)
def restore_environ() -> Iterator[None]:
    """Undo what a test leaves in os.environ. Starting a distributed LocalCluster sets
    OMP_NUM_THREADS=1 (and MKL, OpenBLAS) in this process for good: later exports run in a
    subprocess would then use one torch thread, and differ from an in-process run by ~1e-6."""
    before = dict(os.environ)
    yield
    for name in set(os.environ) - set(before):
        del os.environ[name]
    os.environ.update({k: v for k, v in before.items() if os.environ.get(k) != v})


@pytest.fixture(scope="session")
def demo_catalog_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_catalog(tmp_path_factory.mktemp("demo")).parent


@dataclass
class Served:
    url: str  # of catalog.json
    log: list[Request]


@pytest.fixture(scope="session")
def served_demo(demo_catalog_dir: Path) -> Iterator[Served]:
    """The demo STAC catalog over HTTP on 127.0.0.1 (Range requests answered), with its log."""
    log: list[Request] = []
    with serve_directory(demo_catalog_dir, log=log) as base:
        yield Served(f"{base}/catalog.json", log)
