"""Database URLs for tests: a fresh SQLite file, or a fresh database on the local PostgreSQL.

PostgreSQL tests skip with a clear reason when no server is reachable on a developer's machine;
in CI (`CI=true`) a missing server is a failure, not a skip.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

PG_HOST = os.environ.get("REELSERVE_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("REELSERVE_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("REELSERVE_TEST_PG_USER", "postgres")
PG_ADMIN_DB = os.environ.get("REELSERVE_TEST_PG_DB", "test")


async def admin_sql(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, database=PG_ADMIN_DB, timeout=5
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def postgres_database() -> Iterator[str]:
    name = f"reelserve_test_{secrets.token_hex(6)}"
    try:
        asyncio.run(admin_sql(f'CREATE DATABASE "{name}"'))
    except (TimeoutError, OSError, Exception) as exc:
        reason = f"PostgreSQL not reachable at {PG_HOST}:{PG_PORT} as {PG_USER}: {exc!r}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{reason} (CI=true: PostgreSQL is required)")
        pytest.skip(reason)
    try:
        yield f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        asyncio.run(admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def database_url(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'queue.db'}"
    else:
        with postgres_database() as url:
            yield url
