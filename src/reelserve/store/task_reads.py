"""Every read of task rows: whole rows for the operations that need the spec, views for status
polls and event streams, the listings, and the counts of the metrics scrape.

A status poll is one statement on both engines: the view's columns and, while the task is
pending, its queue position, counted by `position_of` in the claim's fair order (the pending
tasks a claim takes first; the standalone `queue_position` counts with the same expression).
The poll runs on the store's reader (reads.py), as the same statement compiled once to each
engine's text: on SQLite inline on a read-only connection (about 10 us instead of a millisecond
through the async layer, see bench/api.py), on PostgreSQL on a plain asyncpg pool outside any
transaction (one round trip instead of four).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from reelserve.domain.result import TaskView
from reelserve.store.reads import PointRead, PostgresReader, SqliteReader
from reelserve.store.tables import queue_keys, tasks
from reelserve.store.task_claims import pending_keys, task_filter
from reelserve.store.task_rows import PENDING, VIEW_COLUMNS, TaskRecord, view_from_row

_t = tasks.alias("t")  # the task read
_VIEW_COLUMNS = [_t.c[name] for name in VIEW_COLUMNS]
_IN_CHUNK = 500  # ids per IN (...) list


def position_of(
    key: sa.ColumnElement[str], created_at: sa.ColumnElement[float], task_id: sa.ColumnElement[str]
) -> sa.ColumnElement[int]:
    """How many pending tasks the claim takes before the pending task (`key`, `created_at`,
    `task_id`) in its fair order (task_claims.py: round-robin over the keys, least recently
    served first, each key's tasks oldest first). With `r` the key's own tasks ahead of it,
    that is `r` + for every other key with pending tasks, `min(n, r)` of its `n` (the rounds
    before this task's) + one more if it has more than `r` and comes before this key in the
    round. The values given must not refer to the enclosing query (SQLite takes no correlated
    LIMIT): bound parameters, or subqueries of them.

    Bounded and indexed: `r` is one range of the (status, api_key_id, created_at) index; the
    other keys come from one loose scan of it (one seek per key, task_claims.pending_keys), and
    each is counted up to `r + 1` tasks. Tasks being resumed after a lost worker, a worker's
    providers and keys waiting at their max_running are not accounted for."""
    p = tasks.alias("p")
    mine = queue_keys.alias("mine")
    me = (  # this task's key: its tasks ahead of this one (r), and when it was last served
        sa.select(
            sa.select(sa.func.count())
            .select_from(p)
            .where(
                p.c.status == PENDING,
                p.c.api_key_id == key,
                p.c.created_at <= created_at,
                sa.or_(p.c.created_at < created_at, p.c.id < task_id),
            )
            .scalar_subquery()
            .label("r"),
            sa.func.coalesce(
                sa.select(mine.c.served_at).where(mine.c.api_key_id == key).scalar_subquery(),
                0.0,
            ).label("turn"),
        )
        .cte("position_me")
        .prefix_with("MATERIALIZED")
    )
    ahead_in_key = sa.select(me.c.r).scalar_subquery()  # counted once, read where needed
    my_turn = sa.select(me.c.turn).scalar_subquery()
    keys = pending_keys(task_filter(None, None), "position_keys")
    q = tasks.alias("q")
    upto = (  # the key's pending tasks, at most r + 1 of them
        sa.select(sa.literal(1).label("one"))
        .select_from(q)
        .where(q.c.status == PENDING, q.c.api_key_id == keys.c.id)
        .order_by(q.c.created_at)  # the index's order: an index range, never a table scan
        .limit(ahead_in_key + 1)
        .correlate(keys)
        .subquery("upto")
    )
    theirs = queue_keys.alias("theirs")
    their_turn = sa.func.coalesce(theirs.c.served_at, 0.0)
    first = sa.or_(their_turn < my_turn, sa.and_(their_turn == my_turn, keys.c.id < key))
    counts = (
        sa.select(
            first.label("first"),
            sa.select(sa.func.count()).select_from(upto).scalar_subquery().label("n"),
        )
        .select_from(keys.outerjoin(theirs, theirs.c.api_key_id == keys.c.id))
        .where(keys.c.id.is_not(None), keys.c.id != key)
        .cte("position_counts")
        .prefix_with("MATERIALIZED")
    )
    n = counts.c.n
    share = sa.case((counts.c.first, n), (n > ahead_in_key, ahead_in_key), else_=n)
    others = sa.select(sa.cast(sa.func.coalesce(sa.func.sum(share), 0), sa.Integer))
    return ahead_in_key + others.select_from(counts).scalar_subquery()


_created = tasks.alias("created")
# A status poll: the view of one task of one key, with its queue position while it is pending.
_POLL = sa.select(
    *_VIEW_COLUMNS,
    sa.case(
        (
            _t.c.status == PENDING,
            position_of(
                sa.bindparam("api_key_id", type_=sa.String),
                sa.select(_created.c.created_at)
                .where(_created.c.id == sa.bindparam("task_id"))
                .scalar_subquery(),
                sa.bindparam("task_id", type_=sa.String),
            ),
        ),
    ).label("queue_position"),
).where(_t.c.id == sa.bindparam("task_id"), _t.c.api_key_id == sa.bindparam("api_key_id"))
_POLL_READ = PointRead(_POLL)


@dataclass(frozen=True)
class TaskStats:
    """What the metrics scrape reads from the store."""

    counts: dict[tuple[str, str], int]  # (model, status) -> tasks
    oldest_pending: dict[str, float]  # model -> created_at of its oldest pending task
    # (model, route, status) -> tasks; the route is the task row's `provider` (its route name)
    routes: dict[tuple[str, str, str], int] = field(default_factory=dict)


class TaskReads:
    """The reads of `TaskQueue` (queue.py), which sets `engine` and `reader`."""

    engine: AsyncEngine
    reader: SqliteReader | PostgresReader | None  # none for an in-memory SQLite

    async def get(self, task_id: str, api_key_id: str | None = None) -> TaskRecord | None:
        """The whole row of a task (of one key, when `api_key_id` is given)."""
        query = sa.select(tasks).where(tasks.c.id == task_id)
        if api_key_id is not None:
            query = query.where(tasks.c.api_key_id == api_key_id)
        rows = await self._records(query)
        return rows[0] if rows else None

    async def view(self, task_id: str, api_key_id: str) -> TaskView | None:
        """A status poll: the view of one of a key's tasks, with its queue position while it
        is pending; one statement, on the store's reader where there is one."""
        if self.reader is not None:
            rows = await self.reader.fetch(_POLL_READ, task_id=task_id, api_key_id=api_key_id)
            row: Sequence[Any] | None = rows[0] if rows else None
        else:
            async with self.engine.connect() as conn:
                params = {"task_id": task_id, "api_key_id": api_key_id}
                row = (await conn.execute(_POLL, params)).first()
        if row is None:
            return None
        return view_from_row(row[:-1], row[-1])

    async def views(self, ids: Sequence[str]) -> dict[str, TaskView]:
        """The current views of `ids` (an id not found is absent), without queue positions:
        one read per tick serves every event stream of a process (api/watch.py)."""
        found: dict[str, TaskView] = {}
        if not ids:
            return found
        async with self.engine.connect() as conn:
            for start in range(0, len(ids), _IN_CHUNK):
                chunk = list(ids[start : start + _IN_CHUNK])
                query = sa.select(*_VIEW_COLUMNS).where(_t.c.id.in_(chunk))
                for row in (await conn.execute(query)).all():
                    view = view_from_row(row)
                    found[view.id] = view
        return found

    async def queue_position(self, task: TaskRecord | TaskView) -> int:
        """How many pending tasks a claim takes before this one, in the fair order
        (`position_of`)."""
        query = sa.select(
            position_of(
                sa.literal(task.api_key_id, sa.String),
                sa.literal(task.created_at, sa.Float),
                sa.literal(task.id, sa.String),
            )
        )
        async with self.engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def list_tasks(
        self,
        api_key_id: str,
        *,
        status: str | None = None,
        model: str | None = None,
        limit: int = 20,
        after: str | None = None,
    ) -> list[TaskRecord]:
        """A key's tasks, newest first; `after` is the last id of the previous page (ids sort
        by time)."""
        where = [tasks.c.api_key_id == api_key_id]
        if status is not None:
            where.append(tasks.c.status == status)
        if model is not None:
            where.append(tasks.c.model == model)
        if after is not None:
            where.append(tasks.c.id < after)
        return await self._newest_where(where, limit)

    async def newest(self, *, status: str | None = None, limit: int = 20) -> list[TaskRecord]:
        """The newest tasks of every key (`reelserve tasks list`)."""
        return await self._newest_where([tasks.c.status == status] if status else [], limit)

    async def _newest_where(
        self, where: list[sa.ColumnElement[bool]], limit: int
    ) -> list[TaskRecord]:
        query = sa.select(tasks).where(*where).order_by(tasks.c.id.desc()).limit(limit)
        return await self._records(query)

    async def _by_idempotency_key(self, api_key_id: str, key: str) -> TaskRecord | None:
        query = sa.select(tasks).where(
            tasks.c.api_key_id == api_key_id, tasks.c.idempotency_key == key
        )
        rows = await self._records(query)
        return rows[0] if rows else None

    async def _records(self, query: sa.Select[Any]) -> list[TaskRecord]:
        async with self.engine.connect() as conn:
            return [TaskRecord.from_row(r) for r in (await conn.execute(query)).all()]

    async def stats(self) -> TaskStats:
        """The task gauges of the metrics scrape: tasks by (model, route, status), and the age
        of each model's oldest pending task. Two grouped counts; tasks of every process are
        seen."""
        async with self.engine.connect() as conn:
            counted = (
                await conn.execute(
                    sa.select(
                        tasks.c.model, tasks.c.provider, tasks.c.status, sa.func.count()
                    ).group_by(tasks.c.model, tasks.c.provider, tasks.c.status)
                )
            ).all()
            oldest = (
                await conn.execute(
                    sa.select(tasks.c.model, sa.func.min(tasks.c.created_at))
                    .where(tasks.c.status == PENDING)
                    .group_by(tasks.c.model)
                )
            ).all()
        counts: dict[tuple[str, str], int] = {}
        for m, _, st, n in counted:
            counts[(str(m), str(st))] = counts.get((str(m), str(st)), 0) + int(n)
        return TaskStats(
            counts=counts,
            routes={(str(m), str(r), str(st)): int(n) for m, r, st, n in counted},
            oldest_pending={str(m): float(t) for m, t in oldest if t is not None},
        )

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
