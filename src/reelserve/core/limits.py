"""The checks a key's limits make at submit, and who may use which operations.

An admin key only administers (`core/admin.py`): every task operation refuses it with a 403, and
every admin operation refuses an ordinary key. At submit a key's allowed models are checked
(403 naming the model and the allowed ones), its submits per minute (429 with the seconds
until one more is accepted) and its budget (402 giving the estimate and the balance; checked in
the transaction that reserves the estimate, `store/ledger.py`, so it holds across processes).
Test keys are held to the same limits as live ones.

The rate is counted in the database (the key's tasks created in the last 60 s, one indexed read
of at most `rate_per_minute` rows), so it holds across server processes. Within a process the
count and the insert of one key's submits take turns, so a burst into one process cannot
overshoot; a burst spread over several processes at the same instant can, by at most one submit
per other process in flight. An Idempotency-Key replay is not a new submit: it is never
refused and never counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from reelserve.domain.errors import PaymentRequired, PermissionDenied, RateLimited
from reelserve.domain.limits import RATE_WINDOW_SECONDS, retry_after
from reelserve.store.keys import ApiKey
from reelserve.store.ledger import Balance
from reelserve.store.limits import LimitReads
from reelserve.store.queue import IDEMPOTENCY_WINDOW

MAX_LOCKS = 10_000


def require_tenant(key: ApiKey) -> None:
    """Task operations are an ordinary key's: an admin key gets a 403."""
    if key.admin:
        raise PermissionDenied(
            "this is an admin API key: it administers keys and usage (/v1/admin/*) and cannot "
            "submit or read tasks; use an ordinary (live or test) key"
        )


def require_admin(key: ApiKey) -> None:
    """Admin operations are an admin key's: any other gets a 403."""
    if not key.admin:
        raise PermissionDenied(
            "this operation needs an admin API key (made with `reelserve keys create --admin`); "
            f"key {key.prefix}... is not one"
        )


def check_model(key: ApiKey, model: str) -> None:
    """A model the key may not use is a 403 naming it and the ones it may."""
    allowed = key.limits.models
    if allowed is not None and model not in allowed:
        raise PermissionDenied(
            f'model "{model}" is not allowed for this API key; allowed models: '
            f"{', '.join(allowed)}",
            param="model",
        )


def money(amount: float, currency: str) -> str:
    """An amount as a message shows it: `1.6 USD`, `0.000001 USD`."""
    return f"{round(amount, 6):.6f}".rstrip("0").rstrip(".") + f" {currency}"


def payment_required(estimate: float, balance: Balance) -> PaymentRequired:
    """The 402 of a submit whose estimate is more than its key has left (the budget is
    checked where the reservation is written, store/ledger.py: atomically with it)."""
    c = balance.currency
    return PaymentRequired(
        f"this request's estimated cost is {money(estimate, c)}, more than this API key has "
        f"left: {money(balance.left or 0.0, c)} (budget {money(balance.budget or 0.0, c)}, "
        f"reserved {money(balance.reserved, c)}, spent {money(balance.spent, c)})"
    )


def affordable(estimate: float, balance: Balance) -> bool:
    """Whether a submit of this estimate would be accepted by the budget now."""
    left = balance.left
    return left is None or estimate <= left + 1e-9


class SubmitLimits:
    def __init__(self, reads: LimitReads) -> None:
        self.reads = reads
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, key_id: str) -> asyncio.Lock:
        lock = self._locks.get(key_id)
        if lock is None:
            if len(self._locks) >= MAX_LOCKS:
                for name in [k for k, v in self._locks.items() if not v.locked()]:
                    del self._locks[name]
            lock = self._locks[key_id] = asyncio.Lock()
        return lock

    @contextlib.asynccontextmanager
    async def admit(
        self, key: ApiKey, model: str, idempotency_key: str | None = None
    ) -> AsyncIterator[None]:
        """Around the insert of one submit: refuses it (403, 429) or lets it through, the rate's
        count and the insert taking turns with this key's other submits in this process."""
        check_model(key, model)
        rate = key.limits.rate_per_minute
        if rate is None:
            yield
            return
        async with self._lock(key.id):
            await self._check_rate(key, rate, idempotency_key)
            yield

    async def _check_rate(self, key: ApiKey, rate: int, idempotency_key: str | None) -> None:
        now = time.time()
        recent = await self.reads.recent_submits(key.id, now - RATE_WINDOW_SECONDS, rate)
        wait = retry_after(recent, rate, now)
        if wait is None:
            return
        if idempotency_key is not None and await self.reads.has_idempotent_task(
            key.id, idempotency_key, now - IDEMPOTENCY_WINDOW
        ):
            return  # a replay of a task the key has: answered, not counted
        raise RateLimited(
            f"this API key may submit {rate} task{'s' if rate != 1 else ''} per minute and has "
            f"reached that; one more will be accepted in {wait} second{'s' if wait != 1 else ''}",
            retry_after=wait,
        )
