"""Engine creation and migrations. Dialect differences stay inside the store package."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    """An async engine; SQLite gets WAL, a busy timeout and foreign keys on every connection."""
    if is_sqlite(url):
        db_path = url.split("///", 1)[-1]
        if db_path and db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


_WRITE_LOCKS: weakref.WeakKeyDictionary[sa.Engine, asyncio.Lock] = weakref.WeakKeyDictionary()


@contextlib.asynccontextmanager
async def begin_write(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A write transaction. On SQLite, the writers of one process take turns on an asyncio lock
    before asking SQLite for its write lock: SQLite admits one writer at a time, and writers that
    find it taken wait in its busy handler, which sleeps in growing steps (up to 100 ms) instead
    of waking when the lock frees, so a burst of concurrent submits would see long tail
    latencies. Writers of other processes still meet in the busy handler. PostgreSQL takes row
    locks and needs no such turn-taking."""
    if engine.dialect.name != "sqlite":
        async with engine.begin() as conn:
            yield conn
        return
    lock = _WRITE_LOCKS.get(engine.sync_engine)
    if lock is None:
        lock = _WRITE_LOCKS.setdefault(engine.sync_engine, asyncio.Lock())
    async with lock, engine.begin() as conn:
        yield conn


def _alembic_config(connection: sa.Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Apply migrations up to `revision` (idempotent; safe to call on every start)."""
    async with engine.begin() as conn:
        await _lock_for_migration(conn)
        await conn.run_sync(lambda sync_conn: command.upgrade(_alembic_config(sync_conn), revision))


def head_revision() -> str:
    """The newest migration this code ships (what `upgrade()` brings a database to)."""
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None, "the migrations directory has no head revision"
    return head


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:

        def _read(sync_conn: sa.Connection) -> str | None:
            from alembic.runtime.migration import MigrationContext

            return MigrationContext.configure(sync_conn).get_current_revision()

        return await conn.run_sync(_read)


async def _lock_for_migration(conn: AsyncConnection) -> None:
    """Serialise concurrent migrators (a server and its workers starting together): an advisory
    lock on PostgreSQL; on SQLite the write lock, taken at once with `BEGIN IMMEDIATE` (the
    driver would otherwise run the DDL outside any transaction, and two migrators would both
    find the schema missing). Either lock is held until the migration's transaction ends; a
    second migrator waits for it (SQLite: the busy timeout), then finds nothing left to do."""
    if conn.dialect.name == "postgresql":
        await conn.execute(sa.text("SELECT pg_advisory_xact_lock(7244123001)"))
    elif conn.dialect.name == "sqlite":
        await conn.exec_driver_sql("BEGIN IMMEDIATE")
