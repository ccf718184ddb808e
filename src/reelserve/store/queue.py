"""The durable task queue. The task row is the single source of truth; the SQL is kept visible.

Every operation a worker performs on a task it runs is *fenced* by its lease token: an update
names the token and the state it may leave, so a worker whose lease expired (and whose task was
resumed elsewhere) can neither report progress nor finish the task a second time. Transitions are
exactly pending -> processing -> completed | failed | cancelled, plus pending -> cancelled.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from reelserve.domain.result import TaskResult
from reelserve.domain.task import ErrorCode, TaskStatus
from reelserve.store.db import begin_write
from reelserve.store.reads import SqliteReader, sqlite_path
from reelserve.store.tables import tasks

IDEMPOTENCY_WINDOW = 24 * 3600.0
# A stopping worker hands its tasks back without spending an attempt, this many times per task;
# later releases spend one. A task that keeps every worker from stopping in time (a provider
# that ignores the stop) therefore fails after `max_attempts` instead of being claimed forever.
FREE_RELEASES = 3
NOTIFY_CHANNEL = "reelserve_tasks"

log = logging.getLogger("reelserve.queue")

PENDING = TaskStatus.PENDING.value
PROCESSING = TaskStatus.PROCESSING.value
COMPLETED = TaskStatus.COMPLETED.value
FAILED = TaskStatus.FAILED.value
CANCELLED = TaskStatus.CANCELLED.value


@dataclass(frozen=True)
class TaskRecord:
    id: str
    api_key_id: str
    model: str
    provider: str
    status: TaskStatus
    progress: int
    spec: dict[str, Any]
    checkpoint: dict[str, Any] | None
    result: TaskResult | None
    error_code: str | None
    error_message: str | None
    estimated_time: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float
    lease_owner: str | None
    lease_expires_at: float | None
    attempts: int
    cancel_requested: bool
    idempotency_key: str | None
    request_hash: str | None
    files_expired_at: float | None
    releases: int = 0

    @classmethod
    def from_row(cls, row: sa.Row[Any]) -> TaskRecord:
        values = dict(row._mapping)
        values["status"] = TaskStatus(values["status"])
        values["cancel_requested"] = bool(values["cancel_requested"])
        values["result"] = _result(values["result"])
        return cls(**values)

    @classmethod
    def for_view(cls, values: dict[str, Any]) -> TaskRecord:
        """From the `VIEW_COLUMNS` of a row: a record to build the task's public view from,
        with an empty spec and no checkpoint (neither is part of the view)."""
        values["status"] = TaskStatus(values["status"])
        values["cancel_requested"] = bool(values["cancel_requested"])
        values["result"] = _result(values["result"])
        return cls(**values, spec={}, checkpoint=None)

    @classmethod
    def view_from_raw(cls, row: tuple[Any, ...]) -> TaskRecord:
        """`for_view` from a plain DB-API row in `VIEW_COLUMNS` order (result still as text)."""
        values = dict(zip(VIEW_COLUMNS, row, strict=True))
        return cls.for_view(values)


def _result(value: object) -> TaskResult | None:
    """The result column as stored (JSON, or its text from a plain DB-API row) -> TaskResult."""
    if isinstance(value, str):
        value = json.loads(value)  # JSON's null included: SQLAlchemy stores None as 'null'
    if value is None:
        return None
    assert isinstance(value, dict)
    return TaskResult.from_json(value)


# What a task's public view needs: every column but the spec (it can hold data-URL images of
# several MB, which a status poll would otherwise read and parse every time) and the checkpoint.
VIEW_COLUMNS = tuple(c.name for c in tasks.c if c.name not in ("spec", "checkpoint"))
_POSITION_SQL = (
    "SELECT count(*) FROM tasks p WHERE p.status = 'pending' AND "
    "(p.created_at < t.created_at OR (p.created_at = t.created_at AND p.id < t.id))"
)
_GET_SQL = (
    f"SELECT {', '.join('t.' + c for c in VIEW_COLUMNS)}, "
    f"CASE WHEN t.status = 'pending' THEN ({_POSITION_SQL}) END "
    "FROM tasks t WHERE t.id = ?"
)


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


class TaskQueue:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        path = sqlite_path(str(engine.url))
        self.reader = SqliteReader(path) if path is not None else None

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

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
    ) -> tuple[TaskRecord, bool]:
        """Queue a task. Returns (task, created); with an Idempotency-Key seen in the last 24 h
        for this API key the earlier task comes back with created=False. `also_insert` runs in
        the task's own transaction, only when the task is created (its webhook delivery)."""
        now = time.time()
        values: dict[str, Any] = {
            "id": task_id,
            "api_key_id": api_key_id,
            "model": model,
            "provider": provider,
            "status": TaskStatus.PENDING,
            "progress": 0,
            "spec": spec,
            "estimated_time": estimated_time,
            "created_at": now,
            "updated_at": now,
            "attempts": 0,
            "cancel_requested": False,
            "checkpoint": None,
            "result": None,
            "error_code": None,
            "error_message": None,
            "started_at": None,
            "finished_at": None,
            "lease_owner": None,
            "lease_expires_at": None,
            "idempotency_key": idempotency_key,
            "request_hash": request_hash,
            "files_expired_at": None,
            "releases": 0,
        }
        for _ in range(3):
            if idempotency_key is not None:
                existing = await self._by_idempotency_key(api_key_id, idempotency_key)
                if existing is not None:
                    if existing.created_at >= now - IDEMPOTENCY_WINDOW:
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
                    await conn.execute(tasks.insert().values(**values))
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
            return TaskRecord(**values), True
        raise RuntimeError("could not resolve a concurrent Idempotency-Key submit")

    async def _by_idempotency_key(self, api_key_id: str, key: str) -> TaskRecord | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(tasks).where(
                        tasks.c.api_key_id == api_key_id, tasks.c.idempotency_key == key
                    )
                )
            ).first()
        return TaskRecord.from_row(row) if row is not None else None

    async def get_with_position(
        self, task_id: str, api_key_id: str
    ) -> tuple[TaskRecord | None, int | None]:
        """A status poll: the task as a view record (`TaskRecord.for_view`: no spec, no
        checkpoint) and, while it is pending, its queue position; one query on SQLite."""
        if self.reader is None:
            query = sa.select(*(tasks.c[name] for name in VIEW_COLUMNS)).where(
                tasks.c.id == task_id, tasks.c.api_key_id == api_key_id
            )
            async with self.engine.connect() as conn:
                row = (await conn.execute(query)).first()
            if row is None:
                return None, None
            task = TaskRecord.for_view(dict(row._mapping))
            if task.status is not TaskStatus.PENDING:
                return task, None
            return task, await self.queue_position(task)
        rows = await self.reader.fetch(_GET_SQL + " AND t.api_key_id = ?", (task_id, api_key_id))
        if not rows:
            return None, None
        return TaskRecord.view_from_raw(rows[0][:-1]), rows[0][-1]

    async def get(self, task_id: str, api_key_id: str | None = None) -> TaskRecord | None:
        query = sa.select(tasks).where(tasks.c.id == task_id)
        if api_key_id is not None:
            query = query.where(tasks.c.api_key_id == api_key_id)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return TaskRecord.from_row(row) if row is not None else None

    async def list_tasks(
        self,
        api_key_id: str,
        *,
        status: str | None = None,
        model: str | None = None,
        limit: int = 20,
        after: str | None = None,
    ) -> list[TaskRecord]:
        """Newest first; `after` is the last id of the previous page (ids sort by time)."""
        query = sa.select(tasks).where(tasks.c.api_key_id == api_key_id)
        if status is not None:
            query = query.where(tasks.c.status == status)
        if model is not None:
            query = query.where(tasks.c.model == model)
        if after is not None:
            query = query.where(tasks.c.id < after)
        query = query.order_by(tasks.c.id.desc()).limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [TaskRecord.from_row(r) for r in rows]

    async def queue_position(self, task: TaskRecord) -> int:
        """How many pending tasks were queued before this one."""
        query = (
            sa.select(sa.func.count())
            .select_from(tasks)
            .where(
                tasks.c.status == PENDING,
                sa.or_(
                    tasks.c.created_at < task.created_at,
                    sa.and_(tasks.c.created_at == task.created_at, tasks.c.id < task.id),
                ),
            )
        )
        async with self.engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

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

    async def delete_finished(self, task_id: str, api_key_id: str) -> bool:
        """Delete a finished task's row (its owner deleted it; its files are already gone)."""
        async with begin_write(self.engine) as conn:
            done = await conn.execute(
                tasks.delete().where(
                    tasks.c.id == task_id,
                    tasks.c.api_key_id == api_key_id,
                    tasks.c.status.in_([COMPLETED, FAILED, CANCELLED]),
                )
            )
        return bool(done.rowcount)

    # -- worker side -------------------------------------------------------------------------

    async def claim(
        self,
        token: str,
        *,
        lease_seconds: float,
        max_attempts: int,
        providers: Collection[str] | None = None,
        models: Collection[str] | None = None,
    ) -> TaskRecord | None:
        """Take the oldest runnable task: a pending one, or a processing one whose lease expired
        (its worker died) and that has attempts left. `FOR UPDATE SKIP LOCKED` on PostgreSQL;
        SQLite serialises writers, which makes the single UPDATE atomic there."""
        now = time.time()
        runnable = sa.or_(
            tasks.c.status == PENDING,
            sa.and_(
                tasks.c.status == PROCESSING,
                tasks.c.lease_expires_at < now,
                tasks.c.attempts < max_attempts,
            ),
        )
        pick = sa.select(tasks.c.id).where(runnable)
        if providers is not None:
            pick = pick.where(tasks.c.provider.in_(list(providers)))
        if models is not None:
            pick = pick.where(tasks.c.model.in_(list(models)))
        pick = pick.order_by(tasks.c.created_at, tasks.c.id).limit(1)
        pick = pick.with_for_update(skip_locked=True)
        stmt = (
            tasks.update()
            .where(tasks.c.id == pick.scalar_subquery(), runnable)
            .values(
                status=PROCESSING,
                lease_owner=token,
                lease_expires_at=now + lease_seconds,
                attempts=tasks.c.attempts + 1,
                started_at=sa.func.coalesce(tasks.c.started_at, now),
                updated_at=now,
            )
            .returning(*tasks.c)
        )
        async with begin_write(self.engine) as conn:
            row = (await conn.execute(stmt)).first()
        return TaskRecord.from_row(row) if row is not None else None

    async def fail_exhausted(self, max_attempts: int) -> list[str]:
        """Fail tasks whose lease expired after their last allowed attempt: no task stays stuck."""
        now = time.time()
        where = sa.and_(
            tasks.c.status == PROCESSING,
            tasks.c.lease_expires_at < now,
            tasks.c.attempts >= max_attempts,
        )
        async with begin_write(self.engine) as conn:
            ids = [r[0] for r in (await conn.execute(sa.select(tasks.c.id).where(where))).all()]
            if ids:
                await conn.execute(
                    tasks.update()
                    .where(where, tasks.c.id.in_(ids))
                    .values(
                        status=FAILED,
                        error_code=ErrorCode.INTERNAL_ERROR.value,
                        error_message=(
                            f"the task was interrupted {max_attempts} times "
                            "(its worker was lost or had to stop); giving up"
                        ),
                        finished_at=now,
                        updated_at=now,
                        lease_owner=None,
                        lease_expires_at=None,
                    )
                )
        return ids

    def _owned(self, task_id: str, token: str) -> sa.ColumnElement[bool]:
        return sa.and_(
            tasks.c.id == task_id, tasks.c.lease_owner == token, tasks.c.status == PROCESSING
        )

    async def heartbeat(
        self, task_id: str, token: str, *, lease_seconds: float, progress: int | None = None
    ) -> tuple[bool, bool]:
        """Extend the lease (and raise progress, never lowering it).
        Returns (still_owned, cancel_requested)."""
        now = time.time()
        values: dict[str, Any] = {"lease_expires_at": now + lease_seconds, "updated_at": now}
        if progress is not None:
            values["progress"] = sa.case(
                (tasks.c.progress < progress, progress), else_=tasks.c.progress
            )
        async with begin_write(self.engine) as conn:
            row = (
                await conn.execute(
                    tasks.update()
                    .where(self._owned(task_id, token))
                    .values(**values)
                    .returning(tasks.c.cancel_requested)
                )
            ).first()
        if row is None:
            return False, False
        return True, bool(row[0])

    HEARTBEAT_CHUNK = 2000  # leases renewed per statement (bound parameters stay few)

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
        another attempt took the task)."""
        now = time.time()
        owned: dict[str, bool] = {}
        wanted = dict((token, task_id) for task_id, token in leases)
        async with begin_write(self.engine) as conn:
            for start in range(0, len(leases), self.HEARTBEAT_CHUNK):
                chunk = leases[start : start + self.HEARTBEAT_CHUNK]
                rows = await conn.execute(
                    tasks.update()
                    .where(
                        tasks.c.id.in_({task_id for task_id, _ in chunk}),
                        tasks.c.lease_owner.in_({token for _, token in chunk}),
                        tasks.c.status == PROCESSING,
                    )
                    .values(lease_expires_at=now + lease_seconds, updated_at=now)
                    .returning(tasks.c.id, tasks.c.lease_owner, tasks.c.cancel_requested)
                )
                for task_id, owner, cancel in rows:
                    if wanted.get(owner) == task_id:  # a token belongs to one attempt
                        owned[owner] = bool(cancel)
            changed = [
                {"task_id": wanted[token], "token": token, "pct": pct}
                for token, pct in (progress or {}).items()
                if token in owned
            ]
            if changed:
                pct = sa.bindparam("pct", type_=sa.Integer)
                await conn.execute(
                    tasks.update()
                    .where(
                        tasks.c.id == sa.bindparam("task_id"),
                        tasks.c.lease_owner == sa.bindparam("token"),
                        tasks.c.status == PROCESSING,
                    )
                    .values(
                        progress=sa.case((tasks.c.progress < pct, pct), else_=tasks.c.progress)
                    ),
                    changed,
                )
        return owned

    async def checkpoint(self, task_id: str, token: str, state: dict[str, Any]) -> bool:
        async with begin_write(self.engine) as conn:
            done = await conn.execute(
                tasks.update()
                .where(self._owned(task_id, token))
                .values(checkpoint=state, updated_at=time.time())
            )
        return bool(done.rowcount)

    async def complete(self, task_id: str, token: str, result: TaskResult) -> bool:
        now = time.time()
        async with begin_write(self.engine) as conn:
            done = await conn.execute(
                tasks.update()
                .where(self._owned(task_id, token))
                .values(
                    status=COMPLETED,
                    progress=100,
                    result=result.to_json(),
                    finished_at=now,
                    updated_at=now,
                    lease_expires_at=None,
                )
            )
        return bool(done.rowcount)

    async def fail(self, task_id: str, token: str, code: str, message: str) -> bool:
        now = time.time()
        async with begin_write(self.engine) as conn:
            done = await conn.execute(
                tasks.update()
                .where(self._owned(task_id, token))
                .values(
                    status=FAILED,
                    error_code=code,
                    error_message=message,
                    finished_at=now,
                    updated_at=now,
                    lease_expires_at=None,
                )
            )
        return bool(done.rowcount)

    async def mark_cancelled(self, task_id: str, token: str) -> bool:
        now = time.time()
        async with begin_write(self.engine) as conn:
            done = await conn.execute(
                tasks.update()
                .where(self._owned(task_id, token))
                .values(status=CANCELLED, finished_at=now, updated_at=now, lease_expires_at=None)
            )
        return bool(done.rowcount)

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
        async with begin_write(self.engine) as conn:
            done = await conn.execute(
                tasks.update().where(self._owned(task_id, token)).values(**values)
            )
        return bool(done.rowcount)

    async def expired_files(self, before: float, limit: int = 100) -> list[str]:
        """Finished tasks whose files are due for deletion (finished before `before`)."""
        query = (
            sa.select(tasks.c.id)
            .where(
                tasks.c.status.in_([COMPLETED, FAILED, CANCELLED]),
                tasks.c.finished_at < before,
                tasks.c.files_expired_at.is_(None),
            )
            .order_by(tasks.c.finished_at)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [r[0] for r in (await conn.execute(query)).all()]

    async def mark_files_expired(self, task_id: str) -> None:
        async with begin_write(self.engine) as conn:
            await conn.execute(
                tasks.update()
                .where(tasks.c.id == task_id, tasks.c.files_expired_at.is_(None))
                .values(files_expired_at=time.time())
            )

    async def counts(self) -> dict[str, int]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(tasks.c.status, sa.func.count()).group_by(tasks.c.status)
                )
            ).all()
        return {str(r[0]): int(r[1]) for r in rows}

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
