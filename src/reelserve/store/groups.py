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

On PostgreSQL, which runs transactions side by side, the writes go in `POSTGRES_LANES` lanes,
each with its own flusher, by task: a task's writes all go in one lane, in the order they came,
and two lanes never lock the same task row (each group locks its rows in task id order, as the
lease renewals and the reaper do, and renewals and the reaper skip rows another transaction
holds, so none of them can deadlock another). One flusher ran one group at a time,
each write a few statements, one round trip each: at 3,000 tasks in flight a completion waited
3 s in that line. SQLite has one write lock, so it has one lane.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from reelserve.store.db import begin_write, clients_waiting

log = logging.getLogger("reelserve.store")
T = TypeVar("T")
Write = Callable[[AsyncConnection], Awaitable[Any]]
Entry = tuple[str, Write, "asyncio.Future[Any]"]  # (the task row it locks, the write, its outcome)
MAX_GROUP = 64  # writes per transaction: the write lock is held for one group at a time
POSTGRES_LANES = 4  # groups in flight at once on PostgreSQL (a connection each)


class WriteGroups:
    """Queued writes of one engine, run in groups by a flusher task per lane that lives while
    its lane has work."""

    def __init__(self, engine: AsyncEngine, *, lanes: int = 1) -> None:
        self.engine = engine
        self.lanes = max(1, lanes)
        self._lanes: list[_Lane] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.groups = 0  # transactions run (for tests and the bench)

    async def run(self, write: Callable[[AsyncConnection], Awaitable[T]], *, key: str = "") -> T:
        """Run `write` in the next group's transaction of its lane; its result. A caller
        cancelled before its group starts leaves nothing written. `key` is the id of the task
        row it updates: it picks the lane (a task's writes all go in one), and a group runs its
        writes in key order (a task's own writes in the order they came), so that every
        transaction that locks several task rows on PostgreSQL locks them in the same order
        (lease renewals too, `TaskQueue.heartbeat_many`) and none can deadlock."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new event loop (tests run many): start afresh
            self._lanes = [_Lane() for _ in range(self.lanes)]
            self._loop = loop
        lane = self._lanes[zlib.crc32(key.encode()) % self.lanes if self.lanes > 1 else 0]
        future: asyncio.Future[T] = loop.create_future()
        lane.pending.append((key, write, future))
        if lane.flusher is None or lane.flusher.done():
            lane.flusher = loop.create_task(self._flush(lane))
        return await future

    async def _flush(self, lane: _Lane) -> None:
        await asyncio.sleep(0)  # writers of this same moment join the first group
        pending = lane.pending
        while pending:
            group = sorted(  # stable: one task's writes keep their order
                (entry for entry in pending[:MAX_GROUP] if not entry[2].done()),
                key=lambda entry: entry[0],
            )
            del pending[:MAX_GROUP]
            if group:
                await self._run_group(lane, group)

    async def _run_group(self, lane: _Lane, group: list[Entry]) -> None:
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
                await self._run_group(lane, [one])
            return
        if len(results) < len(group):
            lane.pending[:0] = group[len(results) :]
        for (_, _, future), result in zip(group, results, strict=False):
            _settle(future, result=result)


class _Lane:
    """One line of queued writes and the flusher that runs them, one group at a time."""

    def __init__(self) -> None:
        self.pending: list[Entry] = []
        self.flusher: asyncio.Task[None] | None = None


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
