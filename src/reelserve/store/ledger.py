"""The ledger: what each key has reserved and spent, one row per entry.

A submit reserves its estimated cost (`reserve`, in the task insert's transaction); the task's
end closes the reservation with one `settle` (the task completed: what it produced is charged)
or one `release` (failed, cancelled: nothing is charged), written in the same transaction as
the task's final state (the fenced update of `store/queue.py`, a cancel of a pending task, the
reaper's fail of an exhausted one). So a crash can neither lose an entry nor write one twice:
the state change and its entry commit together, and a state change happens once.

A key's balance is `budget - reserved - spent`, where `reserved` is the sum of `hold` (+R at
reserve, -R when closed) and `spent` the sum of `charge`. A submit of a key with a budget locks
the key's row first (`UPDATE api_keys ... WHERE id = :key`: a row lock on PostgreSQL, SQLite's
write lock), so concurrent submits, in any number of server processes, check and reserve one at
a time and the balance never goes below zero.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from reelserve.store.tables import api_keys, ledger, usage

RESERVE = "reserve"
SETTLE = "settle"
RELEASE = "release"
EPSILON = 1e-9  # float sums: a balance this close to the estimate covers it
MAX_ENTRIES = 1000


@dataclass(frozen=True)
class Reservation:
    """What a submit reserves: the estimate of `samples` videos of `model`."""

    amount: float
    currency: str
    model: str
    samples: int
    test: bool


@dataclass(frozen=True)
class Balance:
    budget: float | None
    reserved: float
    spent: float
    currency: str

    @property
    def left(self) -> float | None:
        """What the key can still reserve; None without a budget."""
        if self.budget is None:
            return None
        return round(self.budget - self.reserved - self.spent, 6)


@dataclass(frozen=True)
class Entry:
    id: int
    task_id: str
    kind: str
    model: str
    amount: float  # reserve, release: the reservation; settle: the charge
    currency: str
    videos: int
    test: bool
    created_at: float


class InsufficientBalance(Exception):
    """A submit's estimate is more than its key has left; nothing was written."""

    def __init__(self, estimate: float, balance: Balance) -> None:
        super().__init__(f"estimate {estimate} > left {balance.left}")
        self.estimate = estimate
        self.balance = balance


def _sums(api_key_id: str) -> sa.Select[Any]:
    return sa.select(
        sa.func.coalesce(sa.func.sum(ledger.c.hold), 0.0),
        sa.func.coalesce(sa.func.sum(ledger.c.charge), 0.0),
    ).where(ledger.c.api_key_id == api_key_id)


async def reserve(
    conn: AsyncConnection,
    *,
    task_id: str,
    api_key_id: str,
    reservation: Reservation,
    insert_task: sa.Insert,
    checked: bool,
) -> None:
    """Insert the task (`insert_task`) and its reservation in `conn`'s transaction. With
    `checked` (the key has a budget) the key's row is locked first and the reservation must fit
    what is left (else `InsufficientBalance`, and the caller's transaction rolls back). The
    task is inserted before the check, so a concurrent submit under the same Idempotency-Key
    meets its unique index (and replays) rather than a 402."""
    budget: float | None = None
    if checked:
        locked = await conn.execute(
            api_keys.update()
            .where(api_keys.c.id == api_key_id)
            .values(budget=api_keys.c.budget)
            .returning(api_keys.c.budget)
        )
        row = locked.first()
        budget = None if row is None or row[0] is None else float(row[0])
    await conn.execute(insert_task)
    if budget is not None:
        held, charged = (await conn.execute(_sums(api_key_id))).one()
        balance = Balance(budget, float(held), float(charged), reservation.currency)
        left = balance.left
        if left is not None and reservation.amount > left + EPSILON:
            raise InsufficientBalance(reservation.amount, balance)
    await conn.execute(
        ledger.insert().values(
            api_key_id=api_key_id,
            task_id=task_id,
            kind=RESERVE,
            model=reservation.model,
            hold=reservation.amount,
            charge=0.0,
            currency=reservation.currency,
            samples=reservation.samples,
            videos=0,
            test=reservation.test,
            created_at=time.time(),
        )
    )


def _reserved(task_ids: list[str]) -> sa.Select[Any]:
    return sa.select(ledger).where(ledger.c.task_id.in_(task_ids), ledger.c.kind == RESERVE)


async def release(conn: AsyncConnection, task_ids: list[str]) -> None:
    """Close these tasks' reservations without a charge (failed, cancelled), in `conn`'s
    transaction. A task without a reservation (queued before the ledger) gets no entry."""
    if not task_ids:
        return
    now = time.time()
    rows = (await conn.execute(_reserved(task_ids))).all()
    if rows:
        await conn.execute(ledger.insert(), [_closing(r, RELEASE, 0.0, 0, now) for r in rows])


async def settle(conn: AsyncConnection, task_id: str, videos: int) -> None:
    """Close a completed task's reservation with its charge, in `conn`'s transaction.

    The charge is what the provider reported for the task (its usage row, written just before
    the task completes: Veo's is each delivered video at its backend's price). A test key, or a
    provider that reports no cost, is charged the list price per delivered video: the
    reservation over the samples asked, times the videos delivered."""
    row = (await conn.execute(_reserved([task_id]))).first()
    if row is None:
        return
    reserved = row._mapping
    charge = float(reserved["hold"]) * min(videos, reserved["samples"]) / reserved["samples"]
    if not reserved["test"]:
        reported = (
            await conn.execute(sa.select(usage.c.cost).where(usage.c.task_id == task_id))
        ).scalar()
        if reported:
            charge = float(reported)
    await conn.execute(ledger.insert().values(**_closing(row, SETTLE, charge, videos, time.time())))


def _closing(row: sa.Row[Any], kind: str, charge: float, videos: int, now: float) -> dict[str, Any]:
    m = row._mapping
    return {
        "api_key_id": m["api_key_id"],
        "task_id": m["task_id"],
        "kind": kind,
        "model": m["model"],
        "hold": -float(m["hold"]),
        "charge": round(charge, 6),
        "currency": m["currency"],
        "samples": m["samples"],
        "videos": videos,
        "test": m["test"],
        "created_at": now,
    }


class LedgerStore:
    """The reads of the ledger: a key's balance and entries."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def balance(self, api_key_id: str, currency: str = "USD") -> Balance:
        """The key's budget (as stored now), reserved and spent."""
        async with self.engine.connect() as conn:
            held, charged = (await conn.execute(_sums(api_key_id))).one()
            budget = (
                await conn.execute(sa.select(api_keys.c.budget).where(api_keys.c.id == api_key_id))
            ).scalar()
        return Balance(
            None if budget is None else float(budget),
            round(max(0.0, float(held)), 6),
            round(float(charged), 6),
            currency,
        )

    async def balances(self, currency: str = "USD") -> dict[str, Balance]:
        """Every key's balance, by key id, in one grouped read (what `balance` answers for
        each; a key without entries has reserved and spent 0)."""
        query = (
            sa.select(
                api_keys.c.id,
                api_keys.c.budget,
                sa.func.coalesce(sa.func.sum(ledger.c.hold), 0.0),
                sa.func.coalesce(sa.func.sum(ledger.c.charge), 0.0),
            )
            .select_from(api_keys.outerjoin(ledger, ledger.c.api_key_id == api_keys.c.id))
            .group_by(api_keys.c.id, api_keys.c.budget)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return {
            str(key_id): Balance(
                None if budget is None else float(budget),
                round(max(0.0, float(held)), 6),
                round(float(charged), 6),
                currency,
            )
            for key_id, budget, held, charged in rows
        }

    async def entries(
        self,
        api_key_id: str,
        *,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
        task_id: str | None = None,
    ) -> list[Entry]:
        """The key's entries, newest first, at most `limit`, made in [since, until)."""
        query = (
            sa.select(ledger)
            .where(ledger.c.api_key_id == api_key_id)
            .order_by(ledger.c.id.desc())
            .limit(limit)
        )
        if since is not None:
            query = query.where(ledger.c.created_at >= since)
        if until is not None:
            query = query.where(ledger.c.created_at < until)
        if task_id is not None:
            query = query.where(ledger.c.task_id == task_id)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_entry(r) for r in rows]


def _entry(row: sa.Row[Any]) -> Entry:
    m = row._mapping
    amount = float(m["charge"]) if m["kind"] == SETTLE else abs(float(m["hold"]))
    return Entry(
        id=int(m["id"]),
        task_id=str(m["task_id"]),
        kind=str(m["kind"]),
        model=str(m["model"]),
        amount=round(amount, 6),
        currency=str(m["currency"]),
        videos=int(m["videos"]),
        test=bool(m["test"]),
        created_at=float(m["created_at"]),
    )
