"""The claim: a worker takes runnable tasks under leases, fairly between keys.

A runnable task is a pending one, or a processing one whose lease expired (its worker died) and
that has attempts left (a resumed task). Claims go round-robin over the keys with runnable work:
the key least recently served first (`queue_keys.served_at`; a key never served comes first,
ties by key id), one task each, then a second round, and so on; within a key, its resumed tasks
first, then its pending ones oldest first. A key with a `max_running` limit is skipped while
that many of its tasks are processing under live leases: its tasks stay pending.

One claim (`claim_many`) is one transaction of a few statements:
1. the keys to serve: the `limit` first keys in that order among those with runnable work and
   room under their limit. The keys with pending work are found by a loose scan of the index
   (status, api_key_id, created_at): one index seek per key, whatever its number of tasks.
2. PostgreSQL: the keys' `queue_keys` rows are locked (created if missing), in key order, and
   the running counts of the limited keys read again after the lock: two claims of one key
   take turns, so no moment has more than `max_running` processing. SQLite: the transaction
   holds the write lock from its start (`BEGIN IMMEDIATE`), which serialises claims of every
   process.
3. each key's first runnable tasks (one index range per key, at most its room), dealt out
   round-robin in Python to at most `limit`;
4. the update of those tasks, fenced on still being runnable, each under its own token;
5. the served keys' `served_at`: now, plus the slot of the key's last task in this claim in
   microseconds, so the next claim continues the round where this one stopped.

The queue position (task_reads.py) counts in the same order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from reelserve.store.db import begin_write
from reelserve.store.tables import api_keys, queue_keys, tasks
from reelserve.store.task_rows import PENDING, PROCESSING, TaskRecord

SLOT_SECONDS = 1e-6  # what each slot of one claim adds to a served key's served_at

Filter = Callable[[sa.FromClause], list[sa.ColumnElement[bool]]]


def task_filter(providers: Collection[str] | None, models: Collection[str] | None) -> Filter:
    """The conditions a worker's providers and models put on a (table alias of) tasks."""

    def where(t: sa.FromClause) -> list[sa.ColumnElement[bool]]:
        out: list[sa.ColumnElement[bool]] = []
        if providers is not None:
            out.append(t.c.provider.in_(list(providers)))
        if models is not None:
            out.append(t.c.model.in_(list(models)))
        return out

    return where


def pending_keys(where: Filter, name: str = "pending_keys") -> sa.CTE:
    """`WITH RECURSIVE pending_keys(id)`: every key with a pending task (that `where` admits),
    one row each, found by a loose scan of the (status, api_key_id, created_at) index: each step
    is `SELECT min(api_key_id) ... WHERE status = 'pending' AND api_key_id > <the last>`, one
    index seek. The last row is a NULL (the end of the scan)."""
    first = tasks.alias(f"{name}_first")
    cte = (
        sa.select(sa.func.min(first.c.api_key_id).label("id"))
        .where(first.c.status == PENDING, *where(first))
        .cte(name, recursive=True)
    )
    step = tasks.alias(f"{name}_next")
    following = (
        sa.select(sa.func.min(step.c.api_key_id))
        .where(step.c.status == PENDING, step.c.api_key_id > cte.c.id, *where(step))
        .scalar_subquery()
    )
    return cte.union_all(sa.select(following.label("id")).where(cte.c.id.is_not(None)))


def _resumable(t: sa.FromClause, now: float, max_attempts: int) -> sa.ColumnElement[bool]:
    return sa.and_(
        t.c.status == PROCESSING,
        t.c.lease_expires_at < now,
        t.c.attempts < max_attempts,
    )


def _live_running(key: sa.ColumnElement[str], now: float) -> sa.ScalarSelect[int]:
    """The key's processing tasks under a live lease."""
    r = tasks.alias("running")
    return (
        sa.select(sa.func.count())
        .select_from(r)
        .where(r.c.status == PROCESSING, r.c.api_key_id == key, r.c.lease_expires_at >= now)
        .scalar_subquery()
    )


def keys_to_serve(where: Filter, *, now: float, max_attempts: int, limit: int) -> sa.Select[Any]:
    """Step 1: the first `limit` keys with runnable work and room under their limit, least
    recently served first: (key, served_at, max_running, running)."""
    pk = pending_keys(where)
    resumed = tasks.alias("resumed")
    candidates = sa.union(
        sa.select(pk.c.id).where(pk.c.id.is_not(None)),
        sa.select(resumed.c.api_key_id).where(_resumable(resumed, now, max_attempts)),
    ).subquery("candidates")
    key = candidates.c.id
    running = _live_running(key, now)
    served = sa.func.coalesce(queue_keys.c.served_at, 0.0)
    return (
        sa.select(
            key,
            served.label("served"),
            api_keys.c.max_running,
            sa.case((api_keys.c.max_running.is_(None), None), else_=running).label("running"),
        )
        .select_from(
            candidates.outerjoin(queue_keys, queue_keys.c.api_key_id == key).outerjoin(
                api_keys, api_keys.c.id == key
            )
        )
        .where(sa.or_(api_keys.c.max_running.is_(None), running < api_keys.c.max_running))
        .order_by(served, key)
        .limit(limit)
    )


def key_queue(where: Filter, key: str, limit: int) -> sa.Select[Any]:
    """One key's oldest pending tasks: a range of the (status, api_key_id, created_at) index."""
    return (
        sa.select(tasks.c.id, tasks.c.api_key_id, tasks.c.created_at)
        .where(tasks.c.status == PENDING, tasks.c.api_key_id == key, *where(tasks))
        .order_by(tasks.c.created_at, tasks.c.id)
        .limit(limit)
    )


def deal(order: Sequence[str], queues: dict[str, list[str]], limit: int) -> list[tuple[str, str]]:
    """Round-robin: the first task of each key in `order`, then the second of each, ... up to
    `limit` (key, task id) pairs."""
    picked: list[tuple[str, str]] = []
    rank = 0
    while len(picked) < limit:
        dealt = False
        for key in order:
            queue = queues.get(key, [])
            if rank < len(queue):
                picked.append((key, queue[rank]))
                dealt = True
                if len(picked) == limit:
                    break
        if not dealt:
            break
        rank += 1
    return picked


class TaskClaims:
    """The claims of `TaskQueue` (queue.py), which sets `engine`."""

    engine: AsyncEngine

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    async def claim(
        self,
        token: str,
        *,
        lease_seconds: float,
        max_attempts: int,
        providers: Collection[str] | None = None,
        models: Collection[str] | None = None,
    ) -> TaskRecord | None:
        """Take the next runnable task in the fair order under the lease token `token`
        (`claim_many`)."""
        claimed = await self._claim(
            sa.literal(token, sa.String),
            1,
            lease_seconds=lease_seconds,
            max_attempts=max_attempts,
            providers=providers,
            models=models,
        )
        return claimed[0] if claimed else None

    async def claim_many(
        self,
        prefix: str,
        limit: int,
        *,
        lease_seconds: float,
        max_attempts: int,
        providers: Collection[str] | None = None,
        models: Collection[str] | None = None,
    ) -> list[TaskRecord]:
        """Take up to `limit` runnable tasks in the fair order (the module's docstring), in one
        transaction: a pending one, or a processing one whose lease expired (its worker died)
        and that has attempts left. Each gets its own lease token, `prefix` followed by its id
        (`lease_token`). Two claims never take one task: the update is fenced on the task
        being runnable still, and claims of one key take turns (PostgreSQL: its `queue_keys`
        row is locked; SQLite: one writer at a time)."""
        return await self._claim(
            sa.literal(prefix, sa.String) + tasks.c.id,
            limit,
            lease_seconds=lease_seconds,
            max_attempts=max_attempts,
            providers=providers,
            models=models,
        )

    async def _claim(
        self,
        owner: sa.ColumnElement[str],
        limit: int,
        *,
        lease_seconds: float,
        max_attempts: int,
        providers: Collection[str] | None,
        models: Collection[str] | None,
    ) -> list[TaskRecord]:
        limit = max(1, limit)
        where = task_filter(providers, models)
        async with begin_write(self.engine) as conn:
            if not self.is_postgres:
                await conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock, from the start
            now = time.time()
            stmt = keys_to_serve(where, now=now, max_attempts=max_attempts, limit=limit)
            rows = (await conn.execute(stmt)).all()
            if not rows:
                return []
            order = [str(row[0]) for row in rows]
            caps = {str(row[0]): row[2] for row in rows}  # max_running, None for no limit
            room = {
                k: limit if caps[k] is None else max(0, int(caps[k]) - int(row[3] or 0))
                for k, row in zip(order, rows, strict=True)
            }
            limited = [k for k in order if caps[k] is not None]
            if self.is_postgres:
                await self._lock_keys(conn, order)
                if limited:  # counted again, now that no other claim of these keys runs
                    counted = await self._running(conn, limited, now)
                    for k in limited:
                        room[k] = max(0, int(caps[k]) - counted.get(k, 0))
            queues = await self._queues(conn, order, room, where, now, max_attempts, limit)
            picked = deal(order, queues, limit)
            if not picked:
                return []
            runnable = sa.or_(tasks.c.status == PENDING, _resumable(tasks, now, max_attempts))
            update = (
                tasks.update()
                .where(tasks.c.id.in_([task_id for _, task_id in picked]), runnable)
                .values(
                    status=PROCESSING,
                    lease_owner=owner,
                    lease_expires_at=now + lease_seconds,
                    attempts=tasks.c.attempts + 1,
                    started_at=sa.func.coalesce(tasks.c.started_at, now),
                    updated_at=now,
                )
                .returning(*tasks.c)
            )
            claimed = {row.id: TaskRecord.from_row(row) for row in (await conn.execute(update))}
            slots = {key: slot for slot, (key, task_id) in enumerate(picked) if task_id in claimed}
            if slots:
                await self._served(conn, {k: now + s * SLOT_SECONDS for k, s in slots.items()})
        return [claimed[task_id] for _, task_id in picked if task_id in claimed]

    async def _queues(
        self,
        conn: AsyncConnection,
        order: list[str],
        room: dict[str, int],
        where: Filter,
        now: float,
        max_attempts: int,
        limit: int,
    ) -> dict[str, list[str]]:
        """Step 3: each key's runnable tasks in its own order (resumed ones, then pending ones
        oldest first), at most its room; a key needs at most `limit - (keys - 1)` of them,
        the others having at least one each."""
        most = max(1, limit - len(order) + 1)
        wanted = {k: min(room[k], most) for k in order if room[k] > 0}
        if not wanted:
            return {}
        queues: dict[str, list[str]] = {k: [] for k in wanted}
        resumed = (
            sa.select(tasks.c.id, tasks.c.api_key_id, tasks.c.created_at)
            .where(
                _resumable(tasks, now, max_attempts),
                tasks.c.api_key_id.in_(list(wanted)),
                *where(tasks),
            )
            .order_by(tasks.c.created_at, tasks.c.id)
            .limit(limit)
        )
        for task_id, key, _ in (await conn.execute(resumed)).all():
            queues[str(key)].append(str(task_id))
        arms: list[sa.Select[Any]] = []
        for key, n in wanted.items():
            n -= len(queues[key])
            if n > 0:
                arm = key_queue(where, key, n).subquery()
                arms.append(sa.select(*arm.c))
        if arms:
            pending = arms[0] if len(arms) == 1 else sa.union_all(*arms)
            rows = (await conn.execute(pending)).all()
            for task_id, key, _ in sorted(rows, key=lambda r: (r[2], r[0])):
                queues[str(key)].append(str(task_id))
        return queues

    async def _lock_keys(self, conn: AsyncConnection, keys: list[str]) -> None:
        """PostgreSQL: lock the keys' `queue_keys` rows (made if missing), in key order, so that
        claims of one key take turns and deadlocks cannot form."""
        ordered = sorted(set(keys))
        insert = postgresql.insert(queue_keys).values(
            [{"api_key_id": k, "served_at": 0.0} for k in ordered]
        )
        await conn.execute(insert.on_conflict_do_nothing(index_elements=["api_key_id"]))
        await conn.execute(
            sa.select(queue_keys.c.api_key_id)
            .where(queue_keys.c.api_key_id.in_(ordered))
            .order_by(queue_keys.c.api_key_id)
            .with_for_update()
        )

    async def _running(self, conn: AsyncConnection, keys: list[str], now: float) -> dict[str, int]:
        """The keys' processing tasks under live leases, read after their rows are locked."""
        query = (
            sa.select(tasks.c.api_key_id, sa.func.count())
            .where(
                tasks.c.status == PROCESSING,
                tasks.c.api_key_id.in_(keys),
                tasks.c.lease_expires_at >= now,
            )
            .group_by(tasks.c.api_key_id)
        )
        return {str(k): int(n) for k, n in (await conn.execute(query)).all()}

    async def _served(self, conn: AsyncConnection, served: dict[str, float]) -> None:
        """Step 5: when each served key was served (an upsert of its `queue_keys` row)."""
        values = [{"api_key_id": k, "served_at": at} for k, at in sorted(served.items())]
        if self.is_postgres:
            pg = postgresql.insert(queue_keys).values(values)
            await conn.execute(
                pg.on_conflict_do_update(
                    index_elements=["api_key_id"], set_={"served_at": pg.excluded.served_at}
                )
            )
        else:
            lite = sqlite.insert(queue_keys).values(values)
            await conn.execute(
                lite.on_conflict_do_update(
                    index_elements=["api_key_id"], set_={"served_at": lite.excluded.served_at}
                )
            )
