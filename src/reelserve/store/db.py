"""Engine creation and migrations. Dialect differences stay inside the store package."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import weakref
from collections import deque
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


class WriteTurns:
    """Turns at one SQLite database's write lock among the writers of this process, with two
    lines: clients' writes (submits, cancels: someone waits on the answer) go before the
    worker's background writes (claims, lease renewals, checkpoints, outcomes) whenever both
    wait. Within a line, first come first served; a turn is handed straight to the next."""

    def __init__(self) -> None:
        self.held = False
        self._lines: tuple[deque[asyncio.Future[None]], deque[asyncio.Future[None]]] = (
            deque(),
            deque(),
        )

    async def acquire(self, background: bool) -> None:
        if not self.held and not any(self._lines):
            self.held = True
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        line = self._lines[1 if background else 0]
        line.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release()  # handed over just as this writer gave up: pass it on
            else:
                with contextlib.suppress(ValueError):
                    line.remove(turn)
            raise

    @property
    def clients_waiting(self) -> bool:
        """A client's write waits in line (a background writer should let it go first)."""
        return any(not turn.done() for turn in self._lines[0])

    def release(self) -> None:
        for line in self._lines:
            while line:
                turn = line.popleft()
                if not turn.done():
                    turn.set_result(None)  # still held: handed over
                    return
        self.held = False


_TURNS: weakref.WeakKeyDictionary[sa.Engine, dict[asyncio.AbstractEventLoop, WriteTurns]] = (
    weakref.WeakKeyDictionary()
)
_BACKGROUND: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "reelserve_background_writes", default=False
)


def background_writes() -> None:
    """Mark the current context's writes (and those of every task it starts from now on) as
    background work: a worker calls it at its start, so that on SQLite a client's submit never
    waits behind a burst of the worker's writes."""
    _BACKGROUND.set(True)


@contextlib.asynccontextmanager
async def begin_write(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A write transaction. On SQLite, the writers of one process take turns (`WriteTurns`)
    before asking SQLite for its write lock: SQLite admits one writer at a time, and writers that
    find it taken wait in its busy handler, which sleeps in growing steps (up to 100 ms) instead
    of waking when the lock frees, so a burst of concurrent submits would see long tail
    latencies. Writers of other processes still meet in the busy handler. PostgreSQL takes row
    locks and needs no such turn-taking."""
    if engine.dialect.name != "sqlite":
        async with engine.begin() as conn:
            yield conn
        return
    loop = asyncio.get_running_loop()
    per_loop = _TURNS.get(engine.sync_engine)
    if per_loop is None:
        per_loop = _TURNS.setdefault(engine.sync_engine, {})
    turns = per_loop.get(loop)
    if turns is None:
        per_loop.clear()  # an earlier event loop's turns (tests run many loops) are done with
        turns = per_loop[loop] = WriteTurns()
    await turns.acquire(_BACKGROUND.get())
    try:
        async with engine.begin() as conn:
            yield conn
    finally:
        turns.release()


def clients_waiting(engine: AsyncEngine) -> bool:
    """A client's write (a submit, a cancel) waits for this process's turn at SQLite's write
    lock (`WriteTurns`): a background writer holding it commits what it has done and lets the
    client go first. Always false on PostgreSQL, whose writers do not take turns."""
    per_loop = _TURNS.get(engine.sync_engine)
    if not per_loop:
        return False
    with contextlib.suppress(RuntimeError):
        turns = per_loop.get(asyncio.get_running_loop())
        return turns is not None and turns.clients_waiting
    return False


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
