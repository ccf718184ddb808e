"""`GET /v1/usage` as an operation: the caller's usage over a time range."""

from __future__ import annotations

from typing import Any

from reelserve.core.limits import require_tenant
from reelserve.core.views import usage_json
from reelserve.domain.errors import InvalidRequest
from reelserve.store.keys import ApiKey
from reelserve.store.usage import UsageStore


async def usage_report(
    store: UsageStore, key: ApiKey, *, since: float | None = None, until: float | None = None
) -> dict[str, Any]:
    """The caller's completed tasks, videos, seconds of video and cost per model (and currency),
    recorded in [since, until) (Unix seconds; both optional, `until` later than `since`).
    An admin key has none (a 403: its report is `GET /v1/admin/usage`)."""
    require_tenant(key)
    check_range(since, until)
    rows = await store.totals(key.id, since=since, until=until)
    return usage_json(rows, since=since, until=until)


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
