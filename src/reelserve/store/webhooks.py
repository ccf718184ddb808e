"""Webhook secrets and durable webhook deliveries. The SQL is kept visible, as in `queue.py`.

A task submitted with a `webhook_url` gets one delivery row, inserted in the same transaction as
the task itself, in state `waiting`. The row does not wait to be told that its task finished: a
delivery is *due* when its task row is in a final state (whichever process, statement or crash
recovery put it there: a worker completing or failing it, the API cancelling a pending task, the
reaper failing a task whose attempts ran out), or when its next retry time has come. Any worker
process claims due deliveries with a lease, exactly like tasks: `FOR UPDATE SKIP LOCKED` on
PostgreSQL, one atomic UPDATE on SQLite. A worker that dies mid-attempt loses nothing: its lease
expires and another worker tries again with the same `webhook-id` (delivery is at least once;
receivers deduplicate on that id, as Standard Webhooks says). Every attempt is recorded.

States: `waiting` (the task is not finished) -> `pending` (due at `next_attempt_at`) ->
`delivered` | `failed` (retries exhausted) | `refused` (the target address is not allowed).

Signing secrets (`whsec_<base64>`, one per API key) must be readable by the server, which signs
with them, so they cannot be stored hashed like API keys. They are stored *sealed*: encrypted with
AES-256-GCM under a key derived (HKDF-SHA256) from the server's `secret_key`. A copy of the
database alone (a backup, a replica, read access to SQL) therefore does not let anyone forge
webhooks; it takes the `secret_key` too. The price: a deployment that changes its `secret_key`
can no longer read the sealed secrets, and each key's webhook secret must be rotated.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy.ext.asyncio import AsyncEngine

from reelserve.domain.ids import ulid
from reelserve.domain.task import FINISHED
from reelserve.store.db import begin_write
from reelserve.store.tables import api_keys, tasks, webhook_attempts, webhook_deliveries

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
_SEAL_VERSION = "v1"
_SEAL_CONTEXT = b"reelserve webhook secret"

d = webhook_deliveries
a = webhook_attempts


class DeliveryState(StrEnum):
    WAITING = "waiting"
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    REFUSED = "refused"

    @property
    def final(self) -> bool:
        return self in (DeliveryState.DELIVERED, DeliveryState.FAILED, DeliveryState.REFUSED)


class AttemptOutcome(StrEnum):
    DELIVERED = "delivered"  # a 2xx answer
    FAILED = "failed"  # non-2xx, timeout, connection or signing problem: retried on schedule
    REFUSED = "refused"  # the target resolves to an address that is not allowed: never retried


# -- secrets -----------------------------------------------------------------------------------


def new_webhook_secret() -> str:
    """A fresh Standard Webhooks secret: `whsec_` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_bytes(secret: str) -> bytes:
    """The HMAC key a `whsec_...` secret stands for."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


class SecretUnavailable(Exception):
    """A sealed secret that this server cannot open (its `secret_key` changed), or none at all."""


class SecretBox:
    """Seals and opens webhook secrets with a key derived from the server's secret."""

    def __init__(self, server_secret: bytes) -> None:
        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"reelserve webhook secrets v1"
        ).derive(server_secret)
        self._aead = AESGCM(key)

    def seal(self, secret: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, secret.encode(), _SEAL_CONTEXT)
        return f"{_SEAL_VERSION}.{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def open(self, sealed: str) -> str:
        version, _, text = sealed.partition(".")
        if version != _SEAL_VERSION:
            raise SecretUnavailable("the stored webhook secret has an unknown format")
        try:
            raw = base64.urlsafe_b64decode(text)
            return self._aead.decrypt(raw[:12], raw[12:], _SEAL_CONTEXT).decode()
        except (InvalidTag, binascii.Error, ValueError):
            raise SecretUnavailable(
                "the stored webhook secret cannot be decrypted with this server's secret_key "
                "(was secret_key changed?); rotate it with `reelserve keys rotate-webhook-secret`"
            ) from None


# -- records -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    id: str
    task_id: str
    api_key_id: str
    url: str
    base_url: str
    state: DeliveryState
    event: str | None
    payload: str | None
    attempts: int
    next_attempt_at: float | None
    lease_owner: str | None
    lease_expires_at: float | None
    created_at: float
    updated_at: float
    finished_at: float | None

    @classmethod
    def from_row(cls, row: sa.Row[Any]) -> Delivery:
        values = dict(row._mapping)
        values["state"] = DeliveryState(values["state"])
        return cls(**values)


@dataclass(frozen=True)
class Attempt:
    attempt: int
    started_at: float
    duration: float
    status_code: int | None
    error: str | None
    outcome: AttemptOutcome

    @classmethod
    def from_row(cls, row: sa.Row[Any]) -> Attempt:
        m = row._mapping
        return cls(
            attempt=m["attempt"],
            started_at=m["started_at"],
            duration=m["duration"],
            status_code=m["status_code"],
            error=m["error"],
            outcome=AttemptOutcome(m["outcome"]),
        )


def new_delivery_id() -> str:
    """The `webhook-id` of one task's final-state event: the same on every retry."""
    return "msg_" + ulid()


_FINISHED = sorted(s.value for s in FINISHED)


class WebhookStore:
    def __init__(self, engine: AsyncEngine, server_secret: bytes) -> None:
        self.engine = engine
        self.box = SecretBox(server_secret)

    # -- secrets -------------------------------------------------------------------------------

    async def has_secret(self, api_key_id: str) -> bool:
        async with self.engine.connect() as conn:
            sealed = (
                await conn.execute(
                    sa.select(api_keys.c.webhook_secret).where(api_keys.c.id == api_key_id)
                )
            ).scalar_one_or_none()
        return sealed is not None

    async def secret(self, api_key_id: str) -> str:
        """The key's webhook secret in clear, or `SecretUnavailable`."""
        async with self.engine.connect() as conn:
            sealed = (
                await conn.execute(
                    sa.select(api_keys.c.webhook_secret).where(api_keys.c.id == api_key_id)
                )
            ).scalar_one_or_none()
        if sealed is None:
            raise SecretUnavailable(
                "this API key has no webhook secret; create one with "
                "`reelserve keys rotate-webhook-secret`"
            )
        return self.box.open(sealed)

    async def rotate_secret(self, ident: str) -> tuple[str, str] | None:
        """Give a key (by id `key_...` or its shown prefix) a new webhook secret, replacing the
        old one at once. Returns (key id, new secret), or None if no single key matches."""
        column = api_keys.c.id if ident.startswith("key_") else api_keys.c.prefix
        secret = new_webhook_secret()
        async with begin_write(self.engine) as conn:
            ids = (await conn.execute(sa.select(api_keys.c.id).where(column == ident))).all()
            if len(ids) != 1:
                return None
            key_id = str(ids[0][0])
            await conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id)
                .values(webhook_secret=self.box.seal(secret))
            )
        return key_id, secret

    # -- client side ---------------------------------------------------------------------------

    def insert_delivery(
        self, *, task_id: str, api_key_id: str, url: str, base_url: str
    ) -> sa.Insert:
        """The statement that queues a task's webhook: run it in the task's own transaction."""
        now = time.time()
        return d.insert().values(
            id=new_delivery_id(),
            task_id=task_id,
            api_key_id=api_key_id,
            url=url,
            base_url=base_url,
            state=DeliveryState.WAITING.value,
            attempts=0,
            created_at=now,
            updated_at=now,
        )

    async def for_task(self, task_id: str) -> list[tuple[Delivery, list[Attempt]]]:
        """A task's deliveries with their attempts, oldest first."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(sa.select(d).where(d.c.task_id == task_id).order_by(d.c.id))
            ).all()
            deliveries = [Delivery.from_row(r) for r in rows]
            attempts: dict[str, list[Attempt]] = {x.id: [] for x in deliveries}
            if deliveries:
                found = (
                    await conn.execute(
                        sa.select(a)
                        .where(a.c.delivery_id.in_(list(attempts)))
                        .order_by(a.c.delivery_id, a.c.attempt)
                    )
                ).all()
                for row in found:
                    attempts[row._mapping["delivery_id"]].append(Attempt.from_row(row))
        return [(x, attempts[x.id]) for x in deliveries]

    async def delete_for_task(self, task_id: str) -> None:
        """Forget a deleted task's deliveries and their attempts."""
        async with begin_write(self.engine) as conn:
            ids = sa.select(d.c.id).where(d.c.task_id == task_id)
            await conn.execute(a.delete().where(a.c.delivery_id.in_(ids)))
            await conn.execute(d.delete().where(d.c.task_id == task_id))

    # -- worker side ---------------------------------------------------------------------------

    @staticmethod
    def _due(now: float) -> sa.ColumnElement[bool]:
        task_finished = (
            sa.select(tasks.c.id)
            .where(tasks.c.id == d.c.task_id, tasks.c.status.in_(_FINISHED))
            .exists()
        )
        return sa.and_(
            sa.or_(
                sa.and_(d.c.state == DeliveryState.WAITING.value, task_finished),
                sa.and_(d.c.state == DeliveryState.PENDING.value, d.c.next_attempt_at <= now),
            ),
            sa.or_(d.c.lease_expires_at.is_(None), d.c.lease_expires_at < now),
        )

    async def has_due(self) -> bool:
        """A cheap read first, so idle workers do not take SQLite's write lock every poll."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(sa.select(d.c.id).where(self._due(time.time())).limit(1))
            ).first()
        return row is not None

    async def claim(self, token: str, *, lease_seconds: float) -> Delivery | None:
        """Take the oldest due delivery with a lease (see the module docstring)."""
        now = time.time()
        due = self._due(now)
        pick = (
            sa.select(d.c.id)
            .where(due)
            .order_by(d.c.created_at, d.c.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        stmt = (
            d.update()
            .where(d.c.id == pick.scalar_subquery(), due)
            .values(lease_owner=token, lease_expires_at=now + lease_seconds, updated_at=now)
            .returning(*d.c)
        )
        async with begin_write(self.engine) as conn:
            row = (await conn.execute(stmt)).first()
        return Delivery.from_row(row) if row is not None else None

    def _owned(self, delivery_id: str, token: str) -> sa.ColumnElement[bool]:
        return sa.and_(d.c.id == delivery_id, d.c.lease_owner == token)

    async def save_payload(self, delivery_id: str, token: str, event: str, payload: str) -> bool:
        """Freeze the body at the first attempt, so every retry sends the same bytes."""
        now = time.time()
        async with begin_write(self.engine) as conn:
            done = await conn.execute(
                d.update()
                .where(self._owned(delivery_id, token), d.c.payload.is_(None))
                .values(
                    event=event,
                    payload=payload,
                    state=DeliveryState.PENDING.value,
                    next_attempt_at=now,  # due again at once if this attempt is interrupted
                    updated_at=now,
                )
            )
        return bool(done.rowcount)

    async def record_attempt(
        self,
        delivery: Delivery,
        token: str,
        *,
        started_at: float,
        duration: float,
        status_code: int | None,
        error: str | None,
        outcome: AttemptOutcome,
        state: DeliveryState,
        next_attempt_at: float | None,
    ) -> bool:
        """Record one attempt and the delivery's new state, and give the lease back; fenced by
        the lease token, so a worker whose lease expired records nothing."""
        now = time.time()
        async with begin_write(self.engine) as conn:
            done = await conn.execute(
                d.update()
                .where(self._owned(delivery.id, token))
                .values(
                    state=state.value,
                    attempts=d.c.attempts + 1,
                    next_attempt_at=next_attempt_at,
                    lease_owner=None,
                    lease_expires_at=None,
                    updated_at=now,
                    finished_at=now if state.final else None,
                )
                .returning(d.c.attempts)
            )
            row = done.first()
            if row is None:
                return False
            await conn.execute(
                a.insert().values(
                    delivery_id=delivery.id,
                    attempt=int(row[0]),
                    started_at=started_at,
                    duration=duration,
                    status_code=status_code,
                    error=error,
                    outcome=outcome.value,
                )
            )
        return True

    async def release(self, delivery_id: str, token: str) -> None:
        """Hand a lease back without an attempt (the worker is stopping)."""
        async with begin_write(self.engine) as conn:
            await conn.execute(
                d.update()
                .where(self._owned(delivery_id, token))
                .values(lease_owner=None, lease_expires_at=None, updated_at=time.time())
            )

    async def drop(self, delivery_id: str, token: str) -> None:
        """Remove a delivery whose task no longer exists (deleted by its owner)."""
        async with begin_write(self.engine) as conn:
            done = await conn.execute(d.delete().where(self._owned(delivery_id, token)))
            if done.rowcount:
                await conn.execute(a.delete().where(a.c.delivery_id == delivery_id))
