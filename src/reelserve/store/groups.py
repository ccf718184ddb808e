"""Group commit: the small writes of many task attempts share transactions.

A worker with a thousand tasks in flight makes a burst of small writes whenever many of them
move at once (their checkpoints after a burst of submits, their completions when a batch of
upstream operations ends). One transaction each means one turn at SQLite's single write lock
each, and a client's submit waiting behind all of them. Here a write is queued and run by one
flusher per process with the others queued at the same moment, up to `MAX_GROUP` per
transaction, so a burst of a thousand takes a few dozen turns and a submit waits for one group
at most; and where a client's write (a submit) starts waiting while a group holds SQLite's lock,
the group commits what it has done and lets the client go first, the rest running after it.
Each write keeps its own statement and its own outcome (the fenced updates read their row
counts one by one). If a group fails, its writes are run again one transaction each, so a
bad write fails alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from reelserve.store.db import begin_write, clients_waiting

log = logging.getLogger("reelserve.store")
T = TypeVar("T")
Write = Callable[[AsyncConnection], Awaitable[Any]]
MAX_GROUP = 64  # writes per transaction: the write lock is held for one group at a time


class WriteGroups:
    """Queued writes of one engine, run in groups by a flusher task that lives while there
    is work."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # (the task row a write locks, the write, its outcome): a group runs in key order
        self._pending: list[tuple[str, Write, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.groups = 0  # transactions run (for tests and the bench)

    async def run(self, write: Callable[[AsyncConnection], Awaitable[T]], *, key: str = "") -> T:
        """Run `write` in the next group's transaction; its result. A caller cancelled before
        its group starts leaves nothing written. `key` is the id of the task row it updates:
        a group runs its writes in key order (a task's own writes in the order they came), so
        that every transaction that locks several task rows on PostgreSQL locks them in the
        same order (lease renewals too, `TaskQueue.heartbeat_many`) and none can deadlock."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new event loop (tests run many): start afresh
            self._pending = []
            self._flusher = None
            self._loop = loop
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append((key, write, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # writers of this same moment join the first group
        while self._pending:
            group = sorted(  # stable: one task's writes keep their order
                (entry for entry in self._pending[:MAX_GROUP] if not entry[2].done()),
                key=lambda entry: entry[0],
            )
            del self._pending[:MAX_GROUP]
            if group:
                await self._run_group(group)

    async def _run_group(self, group: list[tuple[str, Write, asyncio.Future[Any]]]) -> None:
        results: list[Any] = []
        try:
            async with begin_write(self.engine) as conn:
                for _, write, _ in group:
                    results.append(await write(conn))
                    if len(results) < len(group) and clients_waiting(self.engine):
                        # A client's write waits for the lock (SQLite): commit what is done
                        # and let it go first; the rest of the group runs next.
                        break
            self.groups += 1
        except Exception as exc:
            if len(group) == 1:
                _settle(group[0][2], error=exc)
                return
            log.warning("a group of %d writes failed; running them one by one", len(group))
            for one in group:
                await self._run_group([one])
            return
        if len(results) < len(group):
            self._pending[:0] = group[len(results) :]
        for (_, _, future), result in zip(group, results, strict=False):
            _settle(future, result=result)


def _settle(
    future: asyncio.Future[Any], *, result: Any = None, error: BaseException | None = None
) -> None:
    with contextlib.suppress(asyncio.InvalidStateError):
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
