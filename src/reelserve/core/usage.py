"""`GET /v1/usage` as an operation: the caller's usage over a time range, its ledger entries, its
balance (budget, reserved, spent, left) and its limits."""

from __future__ import annotations

from typing import Any

from reelserve.core.limits import require_tenant
from reelserve.core.views import usage_json
from reelserve.domain.errors import InvalidRequest
from reelserve.store.keys import ApiKey
from reelserve.store.ledger import MAX_ENTRIES, Balance, Entry, LedgerStore
from reelserve.store.usage import UsageStore


async def usage_report(
    store: UsageStore,
    ledger: LedgerStore,
    key: ApiKey,
    *,
    since: float | None = None,
    until: float | None = None,
    limit: int = 100,
    currency: str = "USD",
) -> dict[str, Any]:
    """The caller's completed tasks, videos, seconds of video and cost per model (and currency),
    recorded in [since, until) (Unix seconds; both optional, `until` later than `since`); its
    newest ledger entries made in that range (at most `limit`); its balance now; and its limits
    (as this process's key cache holds them: a change is seen within its refresh).
    An admin key has none (a 403: its report is `GET /v1/admin/usage`)."""
    require_tenant(key)
    check_range(since, until)
    if not 1 <= limit <= MAX_ENTRIES:
        raise InvalidRequest(
            f"limit must be between 1 and {MAX_ENTRIES} (got {limit})", param="limit"
        )
    rows = await store.totals(key.id, since=since, until=until)
    report = usage_json(rows, since=since, until=until)
    by_route = await store.totals(key.id, since=since, until=until, by_route=True)
    report["routes"] = [
        {**row, "route": found.route}
        for row, found in zip(
            usage_json(by_route, since=since, until=until)["models"], by_route, strict=True
        )
    ]
    entries = await ledger.entries(key.id, since=since, until=until, limit=limit)
    balance = await ledger.balance(key.id, currency)
    report["test"] = key.is_test
    report["balance"] = balance_json(balance)
    report["entries"] = [entry_json(e) for e in entries]
    report["limits"] = key.limits.as_json()
    return report


def balance_json(balance: Balance) -> dict[str, Any]:
    """A key's balance: its budget (null: none), what is reserved by unfinished tasks, what its
    finished tasks were charged, and what is left (null without a budget)."""
    return {
        "budget": balance.budget,
        "reserved": balance.reserved,
        "spent": balance.spent,
        "left": balance.left,
        "currency": balance.currency,
    }


def entry_json(entry: Entry) -> dict[str, Any]:
    """One ledger entry: a task's `reserve`, `settle` (amount: the charge) or `release`."""
    return {
        "id": entry.id,
        "task_id": entry.task_id,
        "kind": entry.kind,
        "model": entry.model,
        "amount": entry.amount,
        "currency": entry.currency,
        "videos": entry.videos,
        "test": entry.test,
        "created": entry.created_at,
    }


def check_range(since: float | None, until: float | None) -> None:
    """`until`, when both are given, is later than `since` (a 400 naming `until`)."""
    if since is not None and until is not None and until <= since:
        raise InvalidRequest(
            f"until must be later than since (got since={_seconds(since)}, "
            f"until={_seconds(until)})",
            param="until",
        )


def _seconds(value: float) -> str:
    """A time as a client writes it: 1763088289, 1763088289.5."""
    return str(int(value)) if value.is_integer() else repr(value)
