"""Point reads on the hot path (a status poll) without the async ORM layer's cost.

On SQLite, SQLAlchemy's async layer over aiosqlite costs about a millisecond per query (several
thread hand-offs, pool checkout and reset), while an indexed point read costs ~10 us: less than a
single hand-off to a thread. `SqliteReader` therefore runs point reads inline on a read-only
connection with a short busy timeout: in WAL mode readers do not wait for the writer, so the
read cannot stall the event loop behind a long write. In the rare case the database is busy
anyway (WAL recovery after a crash, an exclusive checkpoint), the read is retried on a small
thread pool with the normal timeout, off the event loop.
Writes and everything else still go through SQLAlchemy. On PostgreSQL there is no reader:
asyncpg is already asynchronous, and the queue falls back to its SQLAlchemy queries.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any


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

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """A point read: inline when the database answers at once, else on the thread pool."""
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
