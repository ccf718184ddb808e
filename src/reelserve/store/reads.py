"""Point reads on the hot path (a status poll) without the async ORM layer's cost.

On SQLite, SQLAlchemy's async layer over aiosqlite costs about a millisecond per query (several
thread hand-offs, pool checkout and reset), while an indexed point read costs ~10 us: less than a
single hand-off to a thread. `SqliteReader` therefore runs point reads inline on a read-only
connection with a short busy timeout: in WAL mode readers do not wait for the writer, so the
read cannot stall the event loop behind a long write. In the rare case the database is busy
anyway (WAL recovery after a crash, an exclusive checkpoint), the read is retried on a small
thread pool with the normal timeout, off the event loop.
Writes and everything else still go through SQLAlchemy.

On PostgreSQL, `PostgresReader` runs the same point reads on a pool of plain asyncpg
connections, outside any transaction: one round trip each. Through SQLAlchemy a read is a pool
checkout with a ping, the statement in a transaction, and its rollback at check-in; measured
alone, a status poll took 0.85 ms that way and 0.31 ms on the reader. A read that meets a
dropped connection (a restarted server) is tried once more on another; where the reader
cannot connect at all (a server down at the first read, a URL whose options only SQLAlchemy
knows), it says so in the log and its reads go through the engine, while the pool is tried
again every `POOL_RETRY_SECONDS`.

This module holds no SQL of its own: a reader runs a `PointRead`, a SQLAlchemy statement
compiled once to each engine's text (`SqliteStatement`, `PostgresStatement`), so the fast path
and the SQLAlchemy path run one statement written once (`store/task_reads.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import asyncpg as pg_asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.compiler import SQLCompiler

log = logging.getLogger("reelserve.store")


@dataclass(frozen=True)
class _Compiled:
    """A SQLAlchemy statement as one engine's SQL text, with its positional parameters by name."""

    sql: str
    names: tuple[str, ...]  # the bound parameters, in the order of the placeholders
    defaults: Mapping[str, Any]  # values the statement binds itself (its literals)

    def params(self, **values: Any) -> tuple[Any, ...]:
        """The positional parameters, given the values of the statement's `bindparam`s."""
        return tuple(values[n] if n in values else self.defaults[n] for n in self.names)


@dataclass(frozen=True)
class SqliteStatement(_Compiled):
    """A SQLAlchemy statement as SQLite's SQL text, with its `?` parameters by name."""

    @classmethod
    def compile(cls, statement: sa.ClauseElement) -> SqliteStatement:
        compiled = statement.compile(dialect=sqlite.dialect())
        assert isinstance(compiled, SQLCompiler)
        return cls(str(compiled), tuple(compiled.positiontup or ()), dict(compiled.params))


@dataclass(frozen=True)
class PostgresStatement(_Compiled):
    """A SQLAlchemy statement as PostgreSQL's SQL text for asyncpg, with its `$n` parameters by
    name."""

    @classmethod
    def compile(cls, statement: sa.ClauseElement) -> PostgresStatement:
        dialect: Any = pg_asyncpg.dialect  # untyped in SQLAlchemy's stubs
        compiled = statement.compile(dialect=dialect())
        assert isinstance(compiled, SQLCompiler)
        return cls(str(compiled), tuple(compiled.positiontup or ()), dict(compiled.params))


class PointRead:
    """One read statement, compiled once for each reader on first use. Its rows come back as
    plain tuples of what the driver returns: a JSON column as its text on a reader, decoded
    where a `PostgresReader` without a pool reads through the engine (readers of JSON columns
    take both, or select them cast to text)."""

    def __init__(self, statement: sa.Select[Any]) -> None:
        self.statement = statement

    @functools.cached_property
    def sqlite(self) -> SqliteStatement:
        return SqliteStatement.compile(self.statement)

    @functools.cached_property
    def postgres(self) -> PostgresStatement:
        return PostgresStatement.compile(self.statement)


class SqliteReader:
    def __init__(self, path: str, *, threads: int = 4) -> None:
        self.path = path
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sqlite-read")
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    INLINE_BUSY_TIMEOUT = 0.005  # seconds an inline read may wait before moving to a thread

    def _inline_connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self, "_inline", None)
        if conn is None:
            conn = sqlite3.connect(
                f"file:{self.path}?mode=ro",
                uri=True,
                check_same_thread=False,
                timeout=self.INLINE_BUSY_TIMEOUT,
            )
            self._inline = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, check_same_thread=False, timeout=30
            )
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return self._connection().execute(sql, params).fetchall()

    async def fetch(
        self, statement: SqliteStatement | PointRead, **values: Any
    ) -> list[tuple[Any, ...]]:
        """A point read: inline when the database answers at once, else on the thread pool."""
        if isinstance(statement, PointRead):
            statement = statement.sqlite
        sql, params = statement.sql, statement.params(**values)
        try:
            return self._inline_connection().execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._fetch, sql, params)

    async def fetch_in_thread(
        self, statement: SqliteStatement, **values: Any
    ) -> list[tuple[Any, ...]]:
        """A read that may walk many rows, on the thread pool: the event loop goes on meanwhile
        (SQLite lets go of the GIL while it reads)."""
        loop = asyncio.get_running_loop()
        params = statement.params(**values)
        return await loop.run_in_executor(self._pool, self._fetch, statement.sql, params)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()


# What a read that met a dropped connection raises; it is tried once more on another.
# (asyncpg raises InternalClientError for a query on a connection whose server ended it while
# it was idle, before it noticed.)
_DROPPED = (
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    ConnectionError,
)


POOL_RETRY_SECONDS = 60.0  # how long reads go through the engine before the pool is tried again


class PostgresReader:
    """Point reads on plain asyncpg connections (one pool per event loop: tests run many),
    outside any transaction; through `engine` while no pool can be made, trying again every
    `retry_seconds` (a server that was down when the first read came, say)."""

    def __init__(
        self, engine: AsyncEngine, *, size: int = 10, retry_seconds: float = POOL_RETRY_SECONDS
    ) -> None:
        self.engine = engine
        self.size = size
        self.retry_seconds = retry_seconds
        self.dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._pool: asyncio.Task[asyncpg.Pool | None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failed_at = 0.0  # monotonic time of the last failure to make the pool
        self._failure = ""  # its reason, as last logged

    async def _get_pool(self) -> asyncpg.Pool | None:
        loop = asyncio.get_running_loop()
        task = self._pool
        if task is None or self._loop is not loop or self._retry_due(task):
            self.close()  # an earlier event loop's pool (tests run many loops), if any
            self._loop = loop
            # A task of its own: a reader cancelled meanwhile leaves it to the next one.
            self._pool = task = loop.create_task(self._create())
        return await asyncio.shield(task)

    def _retry_due(self, task: asyncio.Task[asyncpg.Pool | None]) -> bool:
        """The pool could not be made, and long enough ago to try again."""
        return (
            task.done()
            and not task.cancelled()
            and task.result() is None
            and time.monotonic() - self._failed_at >= self.retry_seconds
        )

    async def _create(self) -> asyncpg.Pool | None:
        try:
            pool = await asyncpg.create_pool(
                self.dsn, min_size=1, max_size=self.size, max_inactive_connection_lifetime=60
            )
        except Exception as exc:  # refused, unreachable, an option asyncpg does not know
            self._failed_at = time.monotonic()
            reason = f"{type(exc).__name__}: {exc}"
            if reason != self._failure:  # said once per reason, not at every retry
                log.warning(
                    "the read pool could not connect (%s); status reads go through the engine, "
                    "and the pool is tried again every %g s",
                    reason,
                    self.retry_seconds,
                )
            self._failure = reason
            return None
        if self._failure:
            log.info("the read pool connected; status reads go through it again")
            self._failure = ""
        return pool

    async def fetch(self, statement: PointRead, **values: Any) -> list[tuple[Any, ...]]:
        pool = await self._get_pool()
        if pool is None:
            async with self.engine.connect() as conn:
                return [tuple(row) for row in await conn.execute(statement.statement, values)]
        compiled = statement.postgres
        params = compiled.params(**values)
        try:
            rows = await pool.fetch(compiled.sql, *params)
        except _DROPPED:
            rows = await pool.fetch(compiled.sql, *params)  # the broken connection is gone
        return [tuple(row) for row in rows]

    def close(self) -> None:
        task, self._pool = self._pool, None
        if task is None:
            return
        if not task.done():
            task.cancel()
        elif not task.cancelled() and (pool := task.result()) is not None:
            with contextlib.suppress(Exception):  # its event loop may be closed already
                pool.terminate()


def sqlite_path(url: str) -> str | None:
    """The file path of an SQLite URL, or None for other engines and in-memory databases."""
    if not url.startswith("sqlite"):
        return None
    path = url.split("///", 1)[-1]
    return None if not path or path == ":memory:" else path
