"""The durable task queue: submit, claim with a lease, the fenced writes of a running task,
cancel and release. The task row is the single source of truth; the SQL is kept visible.

Every write a worker makes to a task it runs goes through `_fenced`: the update names the lease
token it was given and `status = 'processing'`, so a worker whose lease expired (and whose task
was resumed elsewhere) can neither report progress nor finish the task a second time. Those
writes are group-committed (`store/groups.py`): many attempts' checkpoints and outcomes share a
transaction, each with its own fenced statement and row count.
Transitions are exactly pending -> processing -> completed | failed | cancelled, plus
pending -> cancelled. The claim is in task_claims.py, the reads in task_reads.py, the reaper and
retention in task_maintenance.py; `TaskQueue` offers all of them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from enum import Enum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from reelserve.domain.result import TaskResult
from reelserve.store import ledger
from reelserve.store.db import begin_write
from reelserve.store.groups import POSTGRES_LANES, WriteGroups
from reelserve.store.reads import PostgresReader, SqliteReader, sqlite_path
from reelserve.store.tables import CANCEL_REQUESTED, tasks
from reelserve.store.task_claims import TaskClaims
from reelserve.store.task_maintenance import TaskMaintenance
from reelserve.store.task_reads import TaskReads, TaskStats
from reelserve.store.task_rows import CANCELLED, COMPLETED, FAILED, PENDING, PROCESSING, TaskRecord

__all__ = [
    "FREE_RELEASES",
    "CancelOutcome",
    "IdempotencyConflict",
    "TaskQueue",
    "TaskRecord",
    "TaskStats",
]

IDEMPOTENCY_WINDOW = 24 * 3600.0
# A stopping worker hands its tasks back without spending an attempt, this many times per task;
# later releases spend one. A task that keeps every worker from stopping in time (a provider
# that ignores the stop) therefore fails after `max_attempts` instead of being claimed forever.
FREE_RELEASES = 3
NOTIFY_CHANNEL = "reelserve_tasks"

log = logging.getLogger("reelserve.queue")


class CancelOutcome(Enum):
    CANCELLED = "cancelled"  # was pending: cancelled at once
    REQUESTED = "requested"  # is processing: the worker stops it as soon as the provider allows
    FINISHED = "finished"  # already completed/failed/cancelled: nothing to do (409)
    NOT_FOUND = "not_found"


class IdempotencyConflict(Exception):
    """An Idempotency-Key reused with a different request body."""

    def __init__(self, task: TaskRecord) -> None:
        super().__init__(task.id)
        self.task = task


Bound = str | sa.BindParameter[str]


def _fenced(task_id: Bound, token: Bound) -> sa.Update:
    """An update of a running task by the attempt that holds it:
    `UPDATE tasks SET ... WHERE id = :id AND lease_owner = :token AND status = 'processing'`.
    It changes nothing once the lease was lost (another attempt holds the token's task) or the
    task finished."""
    return tasks.update().where(
        tasks.c.id == task_id, tasks.c.lease_owner == token, tasks.c.status == PROCESSING
    )


# PostgreSQL's renewal, progress flush and ownership read: a worker's leases as arrays, one
# constant statement each, prepared once per connection whatever the number of leases (IN lists
# or VALUES rows made a new statement for every count). With 10,000 leases a renewal took
# 0.12-0.2 s against 0.3-0.4 s with IN lists, a flush 0.15-0.2 s against 1.3 s with VALUES.
# Rows another transaction holds are skipped (`FOR UPDATE SKIP LOCKED`), in id order.
_GIVEN_LEASES = """
    given AS (
        SELECT * FROM unnest(CAST(:ids AS VARCHAR[]), CAST(:tokens AS VARCHAR[]))
            AS g(id, token)
    )"""
_RENEW_ON_POSTGRES = sa.text(
    f"""
    WITH {_GIVEN_LEASES},
    free AS (
        SELECT t.id FROM tasks AS t JOIN given ON t.id = given.id AND t.lease_owner = given.token
        WHERE t.status = '{PROCESSING}'
        ORDER BY t.id
        FOR UPDATE OF t SKIP LOCKED
    )
    UPDATE tasks SET lease_expires_at = :until, updated_at = :now
    FROM free WHERE tasks.id = free.id
    RETURNING tasks.id, tasks.lease_owner, tasks.cancel_requested
    """
)
_STILL_OWNED_ON_POSTGRES = sa.text(
    f"""
    WITH {_GIVEN_LEASES}
    SELECT t.id, t.lease_owner, t.cancel_requested
    FROM tasks AS t JOIN given ON t.id = given.id AND t.lease_owner = given.token
    WHERE t.status = '{PROCESSING}'
    """
)
_RAISE_PROGRESS_ON_POSTGRES = sa.text(
    f"""
    WITH given AS (
        SELECT * FROM unnest(
            CAST(:ids AS VARCHAR[]), CAST(:tokens AS VARCHAR[]), CAST(:pcts AS INTEGER[])
        ) AS g(id, token, pct)
    ),
    free AS (
        SELECT t.id, given.pct FROM tasks AS t
        JOIN given ON t.id = given.id AND t.lease_owner = given.token
        WHERE t.status = '{PROCESSING}'
        ORDER BY t.id
        FOR UPDATE OF t SKIP LOCKED
    )
    UPDATE tasks SET progress = GREATEST(tasks.progress, free.pct)
    FROM free WHERE tasks.id = free.id
    RETURNING tasks.lease_owner
    """
)


def _raised(progress: int | sa.ColumnElement[int]) -> sa.ColumnElement[int]:
    """`max(progress, new)`: progress never goes back."""
    return sa.case((tasks.c.progress < progress, progress), else_=tasks.c.progress)


class TaskQueue(TaskClaims, TaskReads, TaskMaintenance):
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # The fenced writes of running tasks, grouped; in lanes side by side on PostgreSQL.
        postgres = engine.dialect.name == "postgresql"
        self.writes = WriteGroups(engine, lanes=POSTGRES_LANES if postgres else 1)
        path = sqlite_path(str(engine.url))
        self.reader: SqliteReader | PostgresReader | None = (
            SqliteReader(path) if path is not None else PostgresReader(engine) if postgres else None
        )

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()

    @contextlib.asynccontextmanager
    async def subscribe(self, on_submit: Callable[[str], None]) -> AsyncIterator[None]:
        """Call `on_submit(provider)` whenever any process queues a task, while the context is
        open: PostgreSQL LISTEN/NOTIFY on a dedicated connection. On SQLite this does nothing
        (workers of other processes find new tasks by polling). If the listening connection
        drops, workers still poll, so a lost notification delays a task but never loses it."""
        if not self.is_postgres:
            yield
            return
        conn = await self.engine.connect()
        driver: Any = None
        try:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection

            def _notified(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
                on_submit(payload)

            await driver.add_listener(NOTIFY_CHANNEL, _notified)
        except Exception:
            log.exception("LISTEN failed; workers fall back to polling")
            await conn.close()
            yield
            return
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                await driver.remove_listener(NOTIFY_CHANNEL, _notified)
            with contextlib.suppress(Exception):
                await conn.close()

    # -- client side -------------------------------------------------------------------------

    async def submit(
        self,
        *,
        task_id: str,
        api_key_id: str,
        model: str,
        provider: str,
        spec: dict[str, Any],
        estimated_time: int,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        also_insert: Sequence[sa.Insert] = (),
        reservation: ledger.Reservation | None = None,
        check_budget: bool = False,
    ) -> tuple[TaskRecord, bool]:
        """Queue a task. Returns (task, created); with an Idempotency-Key seen in the last 24 h
        for this API key the earlier task comes back with created=False. `also_insert` runs in
        the task's own transaction, only when the task is created (its webhook delivery), and
        so does the ledger's `reservation`: with `check_budget` it must fit what the key has
        left, else `ledger.InsufficientBalance` and nothing is queued (store/ledger.py)."""
        task = TaskRecord.queued(
            task_id=task_id,
            api_key_id=api_key_id,
            model=model,
            provider=provider,
            spec=spec,
            estimated_time=estimated_time,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
        )
        for _ in range(3):
            if idempotency_key is not None:
                existing = await self._by_idempotency_key(api_key_id, idempotency_key)
                if existing is not None:
                    if existing.created_at >= task.created_at - IDEMPOTENCY_WINDOW:
                        if request_hash is not None and existing.request_hash != request_hash:
                            raise IdempotencyConflict(existing)
                        return existing, False
                    # Expired: release the key so it can name a new task.
                    async with begin_write(self.engine) as conn:
                        await conn.execute(
                            tasks.update()
                            .where(tasks.c.id == existing.id)
                            .values(idempotency_key=None)
                        )
            try:
                async with begin_write(self.engine) as conn:
                    insert = tasks.insert().values(**dataclasses.asdict(task))
                    if reservation is None:
                        await conn.execute(insert)
                    else:
                        await ledger.reserve(
                            conn,
                            task_id=task_id,
                            api_key_id=api_key_id,
                            reservation=reservation,
                            insert_task=insert,
                            checked=check_budget,
                        )
                    for statement in also_insert:
                        await conn.execute(statement)
                    if self.is_postgres:
                        # Delivered at commit: workers listening wake at once.
                        await conn.execute(
                            sa.text("SELECT pg_notify(:channel, :provider)"),
                            {"channel": NOTIFY_CHANNEL, "provider": provider},
                        )
            except IntegrityError:
                if idempotency_key is None:
                    raise
                continue  # a concurrent submit with the same key won; return its task
            return task, True
        raise RuntimeError("could not resolve a concurrent Idempotency-Key submit")

    async def cancel(
        self, task_id: str, api_key_id: str
    ) -> tuple[CancelOutcome, TaskRecord | None]:
        now = time.time()
        async with begin_write(self.engine) as conn:
            done = await conn.execute(
                tasks.update()
                .where(
                    tasks.c.id == task_id,
                    tasks.c.api_key_id == api_key_id,
                    tasks.c.status == PENDING,
                )
                .values(
                    status=CANCELLED,
                    finished_at=now,
                    updated_at=now,
                    cancel_requested=True,
                    error_code=None,
                )
            )
            if done.rowcount:
                outcome = CancelOutcome.CANCELLED
                await ledger.release(conn, [task_id])  # nothing ran: nothing is charged
            else:
                requested = await conn.execute(
                    tasks.update()
                    .where(
                        tasks.c.id == task_id,
                        tasks.c.api_key_id == api_key_id,
                        tasks.c.status == PROCESSING,
                    )
                    .values(cancel_requested=True, updated_at=now)
                )
                outcome = CancelOutcome.REQUESTED if requested.rowcount else CancelOutcome.FINISHED
        task = await self.get(task_id, api_key_id)
        if task is None:
            return CancelOutcome.NOT_FOUND, None
        return outcome, task

    # -- worker side -------------------------------------------------------------------------

    async def heartbeat(
        self, task_id: str, token: str, *, lease_seconds: float, progress: int | None = None
    ) -> tuple[bool, bool]:
        """Extend one attempt's lease (and raise its progress).
        Returns (still_owned, cancel_requested)."""
        now = time.time()
        values: dict[str, Any] = {"lease_expires_at": now + lease_seconds, "updated_at": now}
        if progress is not None:
            values["progress"] = _raised(progress)
        stmt = _fenced(task_id, token).values(**values).returning(tasks.c.cancel_requested)
        async with begin_write(self.engine) as conn:
            row = (await conn.execute(stmt)).first()
        if row is None:
            return False, False
        return True, bool(row[0])

    HEARTBEAT_CHUNK = 2000  # leases renewed per statement (bound parameters stay few)
    SQLITE_HEARTBEAT_CHUNK = 200  # and per transaction on SQLite (the write lock held briefly)

    async def heartbeat_many(
        self,
        leases: Sequence[tuple[str, str]],
        *,
        lease_seconds: float,
        progress: Mapping[str, int] | None = None,
    ) -> dict[str, bool]:
        """Extend the leases of every task a worker runs, `[(task id, lease token)]`, in one
        statement per chunk, and raise the progress of the attempts in `progress` (by token;
        never lowering it). Fenced like every update of a running task: only rows still
        `processing` under the same token change. Returns `{token: cancel_requested}` for the
        attempts that still own their task; one missing from it was lost (its lease expired and
        another attempt took the task).

        On PostgreSQL a renewal never waits for a row lock: each chunk is one statement, in a
        transaction of its own, that renews the rows it can lock at once (`FOR UPDATE SKIP
        LOCKED`, in id order). A row another transaction holds (this worker's own write of
        that task: a checkpoint, an outcome) is read instead, without a lock: still this
        attempt's, it counts as owned and is renewed at the next renewal. At 10,000 tasks in
        flight, a renewal that locked every row waited up to 21 s behind the worker's own
        writes, each held open by a busy event loop (bench/inflight.py), and the leases of the
        tasks claimed first expired."""
        owned: dict[str, bool] = {}
        wanted = dict((token, task_id) for task_id, token in leases)

        async def renewal(conn: AsyncConnection, chunk: Sequence[tuple[str, str]]) -> Any:
            # From when this chunk goes, not when the renewal began: a slow renewal of many
            # chunks must not leave its last ones a short lease.
            now = time.time()
            if self.is_postgres:
                return await conn.execute(
                    _RENEW_ON_POSTGRES,
                    {
                        "ids": [task_id for task_id, _ in chunk],
                        "tokens": [token for _, token in chunk],
                        "until": now + lease_seconds,
                        "now": now,
                    },
                )
            return await conn.execute(
                tasks.update()
                .where(
                    tasks.c.id.in_({task_id for task_id, _ in chunk}),
                    tasks.c.lease_owner.in_({token for _, token in chunk}),
                    tasks.c.status == PROCESSING,
                )
                .values(lease_expires_at=now + lease_seconds, updated_at=now)
                .returning(tasks.c.id, tasks.c.lease_owner, tasks.c.cancel_requested)
            )

        def count(rows: Any) -> None:
            for task_id, owner, cancel in rows:
                if wanted.get(owner) == task_id:  # a token belongs to one attempt
                    owned[owner] = bool(cancel)

        async def raise_progress(conn: AsyncConnection) -> None:
            changed = [
                {"task_id": wanted[token], "token": token, "pct": pct}
                for token, pct in sorted((progress or {}).items(), key=lambda i: wanted[i[0]])
                if token in owned
            ]
            if changed:
                pct = sa.bindparam("pct", type_=sa.Integer)
                await conn.execute(
                    _fenced(sa.bindparam("task_id"), sa.bindparam("token")).values(
                        progress=_raised(pct)
                    ),
                    changed,
                )

        size = self.HEARTBEAT_CHUNK if self.is_postgres else self.SQLITE_HEARTBEAT_CHUNK
        ordered = sorted(leases)
        chunks = [ordered[start : start + size] for start in range(0, len(ordered), size)]
        # SQLite: a transaction per chunk too, so that a client's write waiting for the one
        # write lock (a submit) goes between two chunks instead of after a thousand leases.
        for chunk in chunks:
            async with begin_write(self.engine) as conn:
                count(await renewal(conn, chunk))
        if self.is_postgres:
            held = [(task_id, token) for task_id, token in leases if token not in owned]
            for start in range(0, len(held), size):
                count(await self._still_owned(held[start : start + size]))
        if progress:
            async with begin_write(self.engine) as conn:
                await raise_progress(conn)
        return owned

    async def _still_owned(self, leases: Sequence[tuple[str, str]]) -> list[Any]:
        """`(id, lease_owner, cancel_requested)` of the tasks among `leases` still processing
        under one of their tokens: a plain read, which waits for no lock."""
        params = {"ids": [t for t, _ in leases], "tokens": [token for _, token in leases]}
        async with self.engine.connect() as conn:
            return list((await conn.execute(_STILL_OWNED_ON_POSTGRES, params)).all())

    async def flush_progress(self, progress: Mapping[str, tuple[str, int]]) -> set[str]:
        """Raise the progress of running attempts, `{token: (task id, percent)}`, never lowering
        it; the tokens whose progress was written (or needed no writing). On SQLite in one
        fenced statement (executed per row) in one grouped transaction. On PostgreSQL in one
        statement that, like the lease renewal, skips the rows another transaction holds: their
        progress is left out of the answer, to be sent again at the next flush."""
        if not progress:
            return set()
        rows = sorted(
            (
                {"task_id": tid, "token": token, "pct": pct}
                for token, (tid, pct) in progress.items()
            ),
            key=lambda row: str(row["task_id"]),
        )
        if not self.is_postgres:
            pct = sa.bindparam("pct", type_=sa.Integer)
            stmt = _fenced(sa.bindparam("task_id"), sa.bindparam("token"))
            stmt = stmt.values(progress=_raised(pct))

            async def write(conn: AsyncConnection) -> None:
                await conn.execute(stmt, rows)

            await self.writes.run(write)
            return set(progress)
        written: set[str] = set()
        size = self.HEARTBEAT_CHUNK
        for start in range(0, len(rows), size):
            chunk = rows[start : start + size]
            params = {
                "ids": [row["task_id"] for row in chunk],
                "tokens": [row["token"] for row in chunk],
                "pcts": [row["pct"] for row in chunk],
            }
            async with begin_write(self.engine) as conn:
                result = await conn.execute(_RAISE_PROGRESS_ON_POSTGRES, params)
                written.update(str(owner) for (owner,) in result)
        return written

    async def cancel_requests(self) -> set[str]:
        """The lease tokens of running attempts whose client asked to cancel: one read, through
        a partial index that holds only the tasks asked to cancel (`ix_tasks_cancel_requested`),
        however many tasks are in flight."""
        stmt = sa.select(tasks.c.lease_owner).where(
            sa.text(CANCEL_REQUESTED), tasks.c.status == PROCESSING
        )
        async with self.engine.connect() as conn:
            return {str(owner) for (owner,) in (await conn.execute(stmt)).all() if owner}

    async def checkpoint(self, task_id: str, token: str, state: dict[str, Any]) -> bool:
        return await self._write_fenced(task_id, token, checkpoint=state, updated_at=time.time())

    async def complete(
        self,
        task_id: str,
        token: str,
        result: TaskResult,
        *,
        also: Sequence[sa.Executable] = (),
    ) -> bool:
        """Completed, and its reservation settled to the videos delivered (store/ledger.py);
        `also` (the task's usage row) runs in the same transaction, only when the task was
        completed by this call."""

        async def settle(conn: AsyncConnection) -> None:
            for statement in also:  # first: the settle charges the usage row's cost
                await conn.execute(statement)
            await ledger.settle(conn, task_id, len(result.videos))

        return await self._finish(
            task_id, token, COMPLETED, settle, progress=100, result=result.to_json()
        )

    async def fail(self, task_id: str, token: str, code: str, message: str) -> bool:
        """Failed, and its reservation released: a task that delivered nothing costs nothing."""
        return await self._finish(
            task_id, token, FAILED, self._release(task_id), error_code=code, error_message=message
        )

    async def mark_cancelled(self, task_id: str, token: str) -> bool:
        return await self._finish(task_id, token, CANCELLED, self._release(task_id))

    @staticmethod
    def _release(task_id: str) -> Callable[[AsyncConnection], Awaitable[None]]:
        async def release(conn: AsyncConnection) -> None:
            await ledger.release(conn, [task_id])

        return release

    async def _finish(
        self,
        task_id: str,
        token: str,
        status: str,
        entry: Callable[[AsyncConnection], Awaitable[None]],
        **values: Any,
    ) -> bool:
        """The final state, and the ledger's `entry` in the same transaction, written only
        when the fenced update changed the row (a state change happens once, so does its
        entry)."""
        now = time.time()
        return await self._write_fenced(
            task_id,
            token,
            status=status,
            finished_at=now,
            updated_at=now,
            lease_expires_at=None,
            then=entry,
            **values,
        )

    async def _write_fenced(
        self,
        task_id: str,
        token: str,
        *,
        then: Callable[[AsyncConnection], Awaitable[None]] | None = None,
        **values: Any,
    ) -> bool:
        """One fenced update (`_fenced`), in a group commit with the other attempts' writes of
        the moment (`store/groups.py`); whether it changed the row. `then` runs in the same
        transaction, only when it did."""
        stmt = _fenced(task_id, token).values(**values)

        async def write(conn: AsyncConnection) -> bool:
            changed = bool((await conn.execute(stmt)).rowcount)
            if changed and then is not None:
                await then(conn)
            return changed

        return await self.writes.run(write, key=task_id)

    async def reroute(self, task_id: str, token: str, route: str) -> bool:
        """Move a running task to another route of its model (a failover, docs/routing.md):
        pending again, queued for `route`'s workers, without the old route's checkpoint or
        attempts, which were nothing upstream. Fenced like every write of a running task;
        `updated_at` is when it started waiting on the new route (what an overflow counts)."""
        now = time.time()

        async def notify(conn: AsyncConnection) -> None:
            if self.is_postgres:
                await conn.execute(
                    sa.text("SELECT pg_notify(:channel, :provider)"),
                    {"channel": NOTIFY_CHANNEL, "provider": route},
                )

        return await self._write_fenced(
            task_id,
            token,
            status=PENDING,
            provider=route,
            lease_owner=None,
            lease_expires_at=None,
            checkpoint=None,
            attempts=0,
            updated_at=now,
            then=notify,
        )

    async def release(self, task_id: str, token: str, *, refund_attempt: bool = True) -> bool:
        """Give a lease back at once (graceful shutdown): the task stays `processing`, its lease
        expires now, and the next claim by any worker resumes it from its checkpoint.

        The attempt is refunded for the task's first `FREE_RELEASES` releases only, so a task
        released over and over still reaches `max_attempts` and fails."""
        values: dict[str, Any] = {
            "lease_expires_at": 0.0,
            "lease_owner": None,
            "releases": tasks.c.releases + 1,
        }
        if refund_attempt:
            values["attempts"] = sa.case(
                (
                    sa.and_(tasks.c.attempts > 0, tasks.c.releases < FREE_RELEASES),
                    tasks.c.attempts - 1,
                ),
                else_=tasks.c.attempts,
            )
        return await self._write_fenced(task_id, token, **values)
