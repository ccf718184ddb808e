"""Point reads on the hot path (a status poll) without the async ORM layer's cost.

On SQLite, SQLAlchemy's async layer over aiosqlite costs about a millisecond per query (several
thread hand-offs, pool checkout and reset), while an indexed point read costs ~10 us: less than a
single hand-off to a thread. `SqliteReader` therefore runs point reads inline on a read-only
connection with a short busy timeout: in WAL mode readers do not wait for the writer, so the
read cannot stall the event loop behind a long write. In the rare case the database is busy
anyway (WAL recovery after a crash, an exclusive checkpoint), the read is retried on a small
thread pool with the normal timeout, off the event loop.
Writes and everything else still go through SQLAlchemy. On PostgreSQL there is no reader:
asyncpg is already asynchronous, and the store runs the same statement through SQLAlchemy.

This module holds no SQL of its own: a reader runs a `SqliteStatement`, which is a SQLAlchemy
statement compiled once to SQLite's text, so the fast path and the SQLAlchemy path run one
statement written once (`store/task_reads.py`).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.sql.compiler import SQLCompiler


@dataclass(frozen=True)
class SqliteStatement:
    """A SQLAlchemy statement as SQLite's SQL text, with its `?` parameters by name."""

    sql: str
    names: tuple[str, ...]  # the bound parameters, in the order of the `?`s
    defaults: Mapping[str, Any]  # values the statement binds itself (its literals)

    @classmethod
    def compile(cls, statement: sa.ClauseElement) -> SqliteStatement:
        compiled = statement.compile(dialect=sqlite.dialect())
        assert isinstance(compiled, SQLCompiler)
        return cls(str(compiled), tuple(compiled.positiontup or ()), dict(compiled.params))

    def params(self, **values: Any) -> tuple[Any, ...]:
        """The positional parameters, given the values of the statement's `bindparam`s."""
        return tuple(values[n] if n in values else self.defaults[n] for n in self.names)


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

    async def fetch(self, statement: SqliteStatement, **values: Any) -> list[tuple[Any, ...]]:
        """A point read: inline when the database answers at once, else on the thread pool."""
        sql, params = statement.sql, statement.params(**values)
        try:
            return self._inline_connection().execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._fetch, sql, params)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()


def sqlite_path(url: str) -> str | None:
    """The file path of an SQLite URL, or None for other engines and in-memory databases."""
    if not url.startswith("sqlite"):
        return None
    path = url.split("///", 1)[-1]
    return None if not path or path == ":memory:" else path
