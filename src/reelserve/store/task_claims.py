"""The claim: a worker takes runnable tasks under leases, fairly between keys.

A runnable task is a pending one, or a processing one whose lease expired (its worker died) and
that has attempts left (a resumed task). Claims go round-robin over the keys with runnable work:
the key least recently served first (`queue_keys.served_at`; a key never served comes first,
ties by key id), one task each, then a second round, and so on; within a key, its resumed tasks
first, then its pending ones oldest first. A key with a `max_running` limit is skipped while
that many of its tasks are processing under live leases: its tasks stay pending.

One claim (`claim_many`) is one transaction of a few statements (on SQLite after a read
without the write lock; see below):
1. the keys to serve: the `limit` first keys in that order among those with runnable work and
   room under their limit. The keys with pending work are found by a loose scan of the index
   (status, api_key_id, created_at): one index seek per key, whatever its number of tasks.
2. PostgreSQL: the keys' `queue_keys` rows are locked (created if missing), in key order, and
   the running counts of the limited keys read again after the lock: two claims of one key
   take turns, so no moment has more than `max_running` processing. SQLite: the transaction
   holds the write lock from its start (`BEGIN IMMEDIATE`), which serialises claims of every
   process.
3. each key's first runnable tasks (one index range per key: LATERAL on PostgreSQL, a
   correlated `IN` on SQLite; at most its room), dealt out round-robin in Python to at most
   `limit`;
4. the update of those tasks, fenced on still being runnable, each under its own token;
5. the served keys' `served_at`: now, plus the slot of the key's last task in this claim in
   microseconds, so the next claim continues the round where this one stopped.

On SQLite the transaction is preceded by a read on the read-only reader's threads
(`runnable_probe`): a worker claims whenever one of its tasks ends, and where nothing is
runnable the claim ends there, without taking the write lock. In the 1,000-task bench
(bench/inflight.py) that took the claims' turns at the write lock from 1,182 down to 185.

The queue position (task_reads.py) counts in the same order. Every statement is built once per
engine and filter shape (`claim_statements`), with bound parameters, so a claim only binds.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from reelserve.store.db import begin_write
from reelserve.store.reads import PostgresReader, SqliteReader, SqliteStatement
from reelserve.store.tables import api_keys, queue_keys, tasks
from reelserve.store.task_rows import PENDING, PROCESSING, TaskRecord

SLOT_SECONDS = 1e-6  # what each slot of one claim adds to a served key's served_at

Filter = Callable[[sa.FromClause], list[sa.ColumnElement[bool]]]


def task_filter(
    providers: Collection[str] | None, models: Collection[str] | None, spill: bool = False
) -> Filter:
    """The conditions a worker's providers and models put on a (table alias of) tasks: bound
    lists, `providers` and `models` (`filter_params`), for those that are given. A spill
    claim (`SpillClaim`) takes only pending tasks that have waited on their
    route since before the bound `spill_before` (`updated_at`: when they were queued there)."""

    def where(t: sa.FromClause) -> list[sa.ColumnElement[bool]]:
        out: list[sa.ColumnElement[bool]] = []
        if providers is not None:
            out.append(t.c.provider.in_(sa.bindparam("providers", expanding=True)))
        if models is not None:
            out.append(t.c.model.in_(sa.bindparam("models", expanding=True)))
        if spill:
            # A pending task has nothing upstream: a task goes back to pending only by a
            # failover, which clears its checkpoint (TaskQueue.reroute).
            out.extend(
                [
                    t.c.status == PENDING,
                    t.c.updated_at < sa.bindparam("spill_before", type_=sa.Float),
                ]
            )
        return out

    return where


@dataclass(frozen=True)
class SpillClaim:
    """An overflow claim (docs/routing.md): pending tasks of `model` queued on route `source`
    for more than `max_wait` seconds, taken for route `target` (the task row's route changes
    in the claim's own fenced update)."""

    model: str
    source: str
    target: str
    max_wait: float


def filter_params(
    providers: Collection[str] | None, models: Collection[str] | None
) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if providers is not None:
        out["providers"] = sorted(providers)
    if models is not None:
        out["models"] = sorted(models)
    return out


def pending_keys(where: Filter, name: str = "pending_keys") -> sa.CTE:
    """`WITH RECURSIVE pending_keys(id)`: every key with a pending task (that `where` admits),
    one row each, found by a loose scan of the (status, api_key_id, created_at) index: each step
    is `SELECT api_key_id ... WHERE status = 'pending' AND api_key_id > <the last> ORDER BY
    api_key_id LIMIT 1`, one index seek (a filter walks the key's entries until one matches).
    The last row is a NULL (the end of the scan)."""

    def next_key(after: sa.ColumnElement[str] | None) -> sa.ScalarSelect[str]:
        t = tasks.alias(f"{name}_next" if after is not None else f"{name}_first")
        conditions = [t.c.status == PENDING, *where(t)]
        if after is not None:
            conditions.append(t.c.api_key_id > after)
        query = sa.select(t.c.api_key_id).where(*conditions).order_by(t.c.api_key_id).limit(1)
        return query.scalar_subquery()

    cte = sa.select(next_key(None).label("id")).cte(name, recursive=True)
    return cte.union_all(sa.select(next_key(cte.c.id).label("id")).where(cte.c.id.is_not(None)))


_NOW = sa.bindparam("now", type_=sa.Float)
_MAX_ATTEMPTS = sa.bindparam("max_attempts", type_=sa.Integer)
_LIMIT = sa.bindparam("limit", type_=sa.Integer)
_KEYS: sa.BindParameter[Any] = sa.bindparam("keys", expanding=True)


def _resumable(t: sa.FromClause) -> sa.ColumnElement[bool]:
    """A processing task whose lease expired (bound `now`) with attempts left."""
    return sa.and_(
        t.c.status == PROCESSING, t.c.lease_expires_at < _NOW, t.c.attempts < _MAX_ATTEMPTS
    )


def _live_running(key: sa.ColumnElement[str]) -> sa.ScalarSelect[int]:
    """The key's processing tasks under a live lease."""
    r = tasks.alias("running")
    return (
        sa.select(sa.func.count())
        .select_from(r)
        .where(r.c.status == PROCESSING, r.c.api_key_id == key, r.c.lease_expires_at >= _NOW)
        .scalar_subquery()
    )


def keys_to_serve(where: Filter) -> sa.Select[Any]:
    """Step 1: the first `limit` keys with runnable work and room under their limit, least
    recently served first: (key, served_at, max_running, running). Binds `now`,
    `max_attempts`, `limit` and the filter's lists."""
    pk = pending_keys(where)
    resumed = tasks.alias("resumed")
    candidates = sa.union(
        sa.select(pk.c.id).where(pk.c.id.is_not(None)),
        sa.select(resumed.c.api_key_id).where(_resumable(resumed), *where(resumed)),
    ).subquery("candidates")
    key = candidates.c.id
    running = _live_running(key)
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
        .limit(_LIMIT)
    )


def key_queues(where: Filter, dialect: str) -> sa.Select[Any]:
    """Step 3: the oldest `limit` pending tasks of each of `keys` (whose `queue_keys` rows
    exist), one range of the (status, api_key_id, created_at) index per key: (id, key,
    created_at). LATERAL on PostgreSQL; SQLite has none, and runs the correlated `IN` per key."""
    k = queue_keys.alias("k")
    head = tasks.alias("head")
    first = (
        sa.select(head.c.id)
        .where(head.c.status == PENDING, head.c.api_key_id == k.c.api_key_id, *where(head))
        .order_by(head.c.created_at, head.c.id)
        .limit(_LIMIT)
    )
    if dialect == "postgresql":
        heads = first.add_columns(head.c.api_key_id, head.c.created_at).lateral("heads")
        return (
            sa.select(heads.c.id, heads.c.api_key_id, heads.c.created_at)
            .select_from(k.join(heads, sa.true()))
            .where(k.c.api_key_id.in_(_KEYS))
        )
    t = tasks.alias("t")
    return (
        sa.select(t.c.id, t.c.api_key_id, t.c.created_at)
        .select_from(k.join(t, t.c.id.in_(first.scalar_subquery().correlate(k))))
        .where(k.c.api_key_id.in_(_KEYS))
    )


@dataclass(frozen=True)
class ClaimStatements:
    keys: sa.Select[Any]
    resumed: sa.Select[Any]
    queues: sa.Select[Any]
    running: sa.Select[Any]
    update: sa.Update  # binds ids, now, lease_until, max_attempts and owner


@functools.lru_cache(maxsize=16)
def claim_statements(
    dialect: str, providers: bool, models: bool, owner_is_prefix: bool, spill: bool = False
) -> ClaimStatements:
    """The claim's statements for one engine and filter shape, built once."""
    where = task_filter(() if providers else None, () if models else None, spill)
    resumed = (
        sa.select(tasks.c.id, tasks.c.api_key_id, tasks.c.created_at)
        .where(_resumable(tasks), tasks.c.api_key_id.in_(_KEYS), *where(tasks))
        .order_by(tasks.c.created_at, tasks.c.id)
        .limit(_LIMIT)
    )
    running = (
        sa.select(tasks.c.api_key_id, sa.func.count())
        .where(
            tasks.c.status == PROCESSING,
            tasks.c.api_key_id.in_(_KEYS),
            tasks.c.lease_expires_at >= _NOW,
        )
        .group_by(tasks.c.api_key_id)
    )
    owner: sa.ColumnElement[str] = sa.bindparam("owner", type_=sa.String)
    if owner_is_prefix:
        owner = owner + tasks.c.id
    runnable = sa.or_(tasks.c.status == PENDING, _resumable(tasks))
    values: dict[str, Any] = {
        "status": PROCESSING,
        "lease_owner": owner,
        "lease_expires_at": sa.bindparam("lease_until", type_=sa.Float),
        "attempts": tasks.c.attempts + 1,
        "started_at": sa.func.coalesce(tasks.c.started_at, _NOW),
        "updated_at": _NOW,
    }
    fence: list[sa.ColumnElement[bool]] = [runnable]
    if spill:  # still waiting on the source route, as the select found it
        values["provider"] = sa.bindparam("spill_to", type_=sa.String)
        fence.extend(where(tasks))
    update = (
        tasks.update()
        .where(tasks.c.id.in_(sa.bindparam("ids", expanding=True)), *fence)
        .values(**values)
        .returning(*tasks.c)
    )
    return ClaimStatements(
        keys_to_serve(where), resumed, key_queues(where, dialect), running, update
    )


@functools.lru_cache(maxsize=4)
def runnable_probe(providers: bool, models: bool) -> SqliteStatement:
    """SQLite: whether any task is runnable for a worker's providers and models (bound as JSON
    arrays, `providers` and `models`, for those that are given; and `now`, `max_attempts`).
    It may say yes where the claim then finds nothing (a key at its `max_running`), never the
    reverse: a claim that it answers no takes nothing, and need not take the write lock."""

    def listed(column: sa.ColumnElement[str], name: str) -> sa.ColumnElement[bool]:
        values = sa.func.json_each(sa.bindparam(name, type_=sa.String)).table_valued("value")
        return column.in_(sa.select(values.c.value))

    def where(t: sa.FromClause) -> list[sa.ColumnElement[bool]]:
        out = [listed(t.c.provider, "providers")] if providers else []
        return out + ([listed(t.c.model, "models")] if models else [])

    pending, resumed = tasks.alias("pending"), tasks.alias("resumed")
    return SqliteStatement.compile(
        sa.select(sa.literal(1)).where(
            sa.or_(
                sa.exists().where(pending.c.status == PENDING, *where(pending)),
                sa.exists().where(_resumable(resumed), *where(resumed)),
            )
        )
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


def _upsert(dialect: str, *, keep: bool) -> sa.Insert:
    """`INSERT INTO queue_keys ... ON CONFLICT`: keep the row (make it if missing), or set its
    served_at."""
    insert = postgresql.insert(queue_keys) if dialect == "postgresql" else sqlite.insert(queue_keys)
    if keep:
        return insert.on_conflict_do_nothing(index_elements=["api_key_id"])
    return insert.on_conflict_do_update(
        index_elements=["api_key_id"], set_={"served_at": insert.excluded.served_at}
    )


class TaskClaims:
    """The claims of `TaskQueue` (queue.py), which sets `engine`."""

    engine: AsyncEngine
    reader: SqliteReader | PostgresReader | None  # none for an in-memory SQLite

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
            token,
            False,
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
        spill: SpillClaim | None = None,
    ) -> list[TaskRecord]:
        """Take up to `limit` runnable tasks in the fair order (the module's docstring), in one
        transaction: a pending one, or a processing one whose lease expired (its worker died)
        and that has attempts left. Each gets its own lease token, `prefix` followed by its id
        (`lease_token`). Two claims never take one task: the update is fenced on the task
        being runnable still, and claims of one key take turns (PostgreSQL: its `queue_keys`
        row is locked; SQLite: one writer at a time). With `spill`, the claim takes that
        overflow's tasks instead (`providers` and `models` are its own)."""
        if spill is not None:
            providers, models = [spill.source], [spill.model]
        return await self._claim(
            prefix,
            True,
            limit,
            lease_seconds=lease_seconds,
            max_attempts=max_attempts,
            providers=providers,
            models=models,
            spill=spill,
        )

    async def _claim(
        self,
        owner: str,
        owner_is_prefix: bool,
        limit: int,
        *,
        lease_seconds: float,
        max_attempts: int,
        providers: Collection[str] | None,
        models: Collection[str] | None,
        spill: SpillClaim | None = None,
    ) -> list[TaskRecord]:
        limit = max(1, limit)
        dialect = self.engine.dialect.name
        sql = claim_statements(
            dialect,
            providers is not None,
            models is not None,
            owner_is_prefix,
            spill is not None,
        )
        filters: dict[str, Any] = dict(filter_params(providers, models))
        if (
            isinstance(self.reader, SqliteReader)
            and spill is None
            and not await self._runnable(filters, max_attempts)
        ):
            # Nothing to take: SQLite's write lock stays free. A worker claims whenever one of
            # its tasks ends, and most of those claims, in a batch of completions, find nothing.
            return []
        async with begin_write(self.engine) as conn:
            if self.is_postgres:
                # The loose scan's steps must be ordered index scans that stop at the first
                # match; a planner misled by stale statistics (a burst into a table it saw
                # without pending tasks) would take a bitmap scan of every pending task.
                await conn.exec_driver_sql("SET LOCAL enable_bitmapscan = off")
            else:
                await conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock, from the start
            now = time.time()
            if spill is not None:
                filters["spill_before"] = now - spill.max_wait
            bound = {"now": now, "max_attempts": max_attempts, **filters}
            rows = (await conn.execute(sql.keys, {**bound, "limit": limit})).all()
            if not rows:
                return []
            order = [str(row[0]) for row in rows]
            caps = {str(row[0]): row[2] for row in rows}  # max_running, None for no limit
            room = {
                k: limit if caps[k] is None else max(0, int(caps[k]) - int(row[3] or 0))
                for k, row in zip(order, rows, strict=True)
            }
            # Every key served gets a queue_keys row; PostgreSQL locks them, in key order.
            ordered = sorted(order)
            await conn.execute(
                _upsert(dialect, keep=True), [{"api_key_id": k, "served_at": 0.0} for k in ordered]
            )
            limited = [k for k in order if caps[k] is not None]
            if self.is_postgres:
                await conn.execute(
                    sa.select(queue_keys.c.api_key_id)
                    .where(queue_keys.c.api_key_id.in_(_KEYS))
                    .order_by(queue_keys.c.api_key_id)
                    .with_for_update(),
                    {"keys": ordered},
                )
                if limited:  # counted again, now that no other claim of these keys runs
                    counted = {
                        str(k): int(n)
                        for k, n in await conn.execute(sql.running, {"keys": limited, "now": now})
                    }
                    for k in limited:
                        room[k] = max(0, int(caps[k]) - counted.get(k, 0))
            queues = await self._queues(conn, sql, order, room, bound, limit)
            picked = deal(order, queues, limit)
            if not picked:
                return []
            params = {
                **bound,
                "ids": [task_id for _, task_id in picked],
                "owner": owner,
                "lease_until": now + lease_seconds,
            }
            if spill is not None:
                params["spill_to"] = spill.target
            claimed = {
                row.id: TaskRecord.from_row(row) for row in await conn.execute(sql.update, params)
            }
            slots = {key: slot for slot, (key, task_id) in enumerate(picked) if task_id in claimed}
            if slots:
                served = [
                    {"api_key_id": k, "served_at": now + s * SLOT_SECONDS}
                    for k, s in sorted(slots.items())
                ]
                await conn.execute(_upsert(dialect, keep=False), served)
        return [claimed[task_id] for _, task_id in picked if task_id in claimed]

    async def _runnable(self, filters: dict[str, list[str]], max_attempts: int) -> bool:
        """`runnable_probe` on the SQLite reader's threads, without the write lock. Not inline:
        where nothing has expired it walks every processing task (3 ms at 10,000), which must
        not hold the event loop."""
        assert isinstance(self.reader, SqliteReader)
        probe = runnable_probe("providers" in filters, "models" in filters)
        lists = {name: json.dumps(values) for name, values in filters.items()}
        rows = await self.reader.fetch_in_thread(
            probe, now=time.time(), max_attempts=max_attempts, **lists
        )
        return bool(rows)

    async def _queues(
        self,
        conn: AsyncConnection,
        sql: ClaimStatements,
        order: list[str],
        room: dict[str, int],
        bound: dict[str, Any],
        limit: int,
    ) -> dict[str, list[str]]:
        """Step 3: each key's runnable tasks in its own order (resumed ones, then pending ones
        oldest first), at most its room; a key needs at most `limit - (keys - 1)` of them,
        the others having at least one each."""
        most = max(1, limit - len(order) + 1)
        wanted = [k for k in order if room[k] > 0]
        if not wanted:
            return {}
        queues: dict[str, list[str]] = {k: [] for k in wanted}
        rows = await conn.execute(sql.resumed, {**bound, "keys": wanted, "limit": limit})
        for task_id, key, _ in rows.all():
            queues[str(key)].append(str(task_id))
        pending = (await conn.execute(sql.queues, {**bound, "keys": wanted, "limit": most})).all()
        for task_id, key, _ in sorted(pending, key=lambda r: (r[2], r[0])):
            queues[str(key)].append(str(task_id))
        return {k: q[: min(room[k], most)] for k, q in queues.items()}
