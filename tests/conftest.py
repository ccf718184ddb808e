from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import settings as hypothesis_settings

from tests.databases import database_url
from tests.support import LiveServer, make_settings

# Hypothesis, derandomised by default: every run (CI's included) draws the same examples, so the
# suite passes or fails on the code, not on luck. `HYPOTHESIS_PROFILE=fuzz` (python -m
# bench.fuzz) draws many more random ones, for a longer search on a developer's machine.
hypothesis_settings.register_profile(
    "repeatable", derandomize=True, database=None, deadline=None, max_examples=100
)
hypothesis_settings.register_profile(
    "fuzz", deadline=None, max_examples=int(os.environ.get("REELSERVE_FUZZ_EXAMPLES", "3000"))
)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """`-n auto` (pyproject's addopts) runs one process per core, except for a run of a single
    file or test: there, starting the workers (each imports the whole suite) costs more than it
    saves. `-n 2` or PYTEST_XDIST_AUTO_NUM_WORKERS still choose."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    targets = [arg for arg in config.args if not arg.startswith("-")]
    if len(targets) == 1 and ("::" in targets[0] or targets[0].endswith(".py")):
        return 0
    return None  # xdist's own count: the cores


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """A live server per database engine: the API suite runs against SQLite and PostgreSQL."""
    tmp = tmp_path_factory.mktemp(f"server-{request.param}")
    with database_url(request.param, tmp) as url:
        live = LiveServer(make_settings(tmp / "data", database_url=url)).start()
        yield live
        live.stop()


@pytest.fixture(scope="session")
def test_key(server: LiveServer) -> str:
    return server.mint("test", "tests")


@pytest.fixture(scope="session")
def live_key(server: LiveServer) -> str:
    return server.mint("live", "tests-live")


@pytest.fixture()
def client(server: LiveServer, test_key: str) -> Iterator[httpx.Client]:
    with server.client(test_key) as c:
        yield c


@pytest.fixture()
def anon(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"
