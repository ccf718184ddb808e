from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.databases import database_url
from tests.support import LiveServer, make_settings


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
