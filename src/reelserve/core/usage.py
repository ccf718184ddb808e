"""`GET /v1/usage` as an operation: the caller's usage over a time range."""

from __future__ import annotations

from typing import Any

from reelserve.core.views import usage_json
from reelserve.domain.errors import InvalidRequest
from reelserve.store.keys import ApiKey
from reelserve.store.usage import UsageStore


async def usage_report(
    store: UsageStore, key: ApiKey, *, since: float | None = None, until: float | None = None
) -> dict[str, Any]:
    """The caller's completed tasks, videos, seconds of video and cost per model (and currency),
    recorded in [since, until) (Unix seconds; both optional, `until` later than `since`)."""
    if since is not None and until is not None and until <= since:
        raise InvalidRequest(
            f"until must be later than since (got since={_seconds(since)}, "
            f"until={_seconds(until)})",
            param="until",
        )
    rows = await store.totals(key.id, since=since, until=until)
    return usage_json(rows, since=since, until=until)


def _seconds(value: float) -> str:
    """A time as a client writes it: 1763088289, 1763088289.5."""
    return str(int(value)) if value.is_integer() else repr(value)
