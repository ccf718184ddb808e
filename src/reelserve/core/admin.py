"""What an operator does with keys and usage, over HTTP (`/v1/admin/*`) or the CLI.

The admin API's operations take the caller's key and refuse any but an admin key (403); the CLI,
run on the host, calls the same operations without one (`create`, `update`). Every body is
checked here, each refusal a 400 naming its member. A key's balance (budget, reserved, spent,
left) is read from the ledger, as `reelserve keys show` and the key's own `GET /v1/usage` read
it, so every view of it agrees. A change is seen at once by this
process (its authentication cache forgets the key) and by other processes within
`core.access.AUTH_CACHE_SECONDS`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from reelserve.core.access import Access
from reelserve.core.limits import require_admin
from reelserve.core.usage import balance_json, check_range
from reelserve.core.views import currency_totals
from reelserve.domain.errors import InvalidRequest, NotFound, clip, describe
from reelserve.domain.limits import LIMIT_FIELDS, KeyLimits, parse_limit_changes
from reelserve.store.keys import ApiKey, KeyMode
from reelserve.store.ledger import Balance, LedgerStore
from reelserve.store.usage_days import DailyUsage, DayUsage

MAX_NAME = 200
CREATE_FIELDS = ("mode", "name", "admin", *LIMIT_FIELDS)


def key_json(key: ApiKey, balance: Balance) -> dict[str, Any]:
    """A key as the admin API shows it, with its balance on the ledger: never a secret, only
    the shown prefix."""
    return {
        "id": key.id,
        "object": "api_key",
        "name": key.name,
        "mode": key.mode,
        "prefix": key.prefix,
        "admin": key.admin,
        "created": int(key.created_at),
        "revoked": int(key.revoked_at) if key.revoked_at is not None else None,
        **key.limits.as_json(),
        "balance": balance_json(balance),
    }


def _object(body: object, allowed: Collection[str]) -> Mapping[str, object]:
    if not isinstance(body, dict):
        raise InvalidRequest(f"the request body must be a JSON object (got {describe(body)})")
    for name in body:
        if name not in allowed:
            raise InvalidRequest(
                f'unknown member "{clip(str(name))}"; expected any of {", ".join(allowed)}',
                param=str(name),
            )
    return body


class Admin:
    def __init__(
        self,
        access: Access,
        days: DailyUsage,
        ledger: LedgerStore,
        models: Collection[str],
        currency: str = "USD",
    ) -> None:
        self.access = access
        self.keys = access.keys
        self.days = days
        self.ledger = ledger
        self.models = models
        self.currency = currency  # the price currency budgets are in

    # -- the operations, for the CLI and the routes ---------------------------------------------

    def check_changes(self, changes: Mapping[str, object]) -> dict[str, Any]:
        """Limit changes, checked against the configured models (400 naming the member)."""
        return parse_limit_changes(changes, self.models)

    async def create(
        self, mode: KeyMode, name: str, changes: Mapping[str, object], *, admin: bool = False
    ) -> tuple[ApiKey, str, str]:
        """(key, secret, webhook secret) of a new key with the limits in `changes`."""
        limits = self.check_changes(changes)
        if admin and any(v is not None for v in limits.values()):
            raise InvalidRequest(
                "an admin key has no limits: it cannot submit tasks", param=next(iter(limits))
            )
        return await self.access.create_key(mode, name, limits=KeyLimits(**limits), admin=admin)

    async def find(self, ident: str) -> ApiKey:
        key = await self.keys.find(ident)
        if key is None:
            raise NotFound(f'no key "{clip(ident)}" found (by id or shown prefix)', param="key_id")
        return key

    async def update(self, ident: str, changes: Mapping[str, object]) -> ApiKey:
        """Set or clear (None) the limits named in `changes`; the others stay as they were."""
        checked = self.check_changes(changes)
        key = await self.find(ident)
        if key.admin and any(v is not None for v in checked.values()):
            raise InvalidRequest(
                "an admin key has no limits: it cannot submit tasks", param=next(iter(checked))
            )
        updated = await self.keys.update_limits(key.id, checked)
        if updated is None:  # revoked keys stay; only a vanished row gets here
            raise await self._gone(ident)
        self.access.forget(key.id)
        return updated

    async def revoke(self, ident: str) -> ApiKey:
        key = await self.find(ident)
        revoked = await self.keys.revoke(key.id)
        if revoked is None:
            raise await self._gone(ident)
        self.access.forget(key.id)
        return revoked

    async def balance(self, key: ApiKey) -> Balance:
        """The key's balance on the ledger (what `reelserve keys show` prints)."""
        return await self.ledger.balance(key.id, self.currency)

    async def _json(self, key: ApiKey) -> dict[str, Any]:
        return key_json(key, await self.balance(key))

    async def _gone(self, ident: str) -> NotFound:
        return NotFound(f'no key "{clip(ident)}" found (by id or shown prefix)', param="key_id")

    # -- the admin API: the caller must hold an admin key --------------------------------------

    async def list_keys(self, caller: ApiKey) -> list[dict[str, Any]]:
        require_admin(caller)
        keys = await self.keys.list_keys()
        balances = await self.ledger.balances(self.currency)
        return [key_json(k, balances.get(k.id) or _empty(k, self.currency)) for k in keys]

    async def create_key(self, caller: ApiKey, body: object) -> dict[str, Any]:
        require_admin(caller)
        fields = _object(body, CREATE_FIELDS)
        admin = fields.get("admin", False)
        if admin is None:
            admin = False
        if not isinstance(admin, bool):
            raise InvalidRequest(f"admin must be a boolean (got {describe(admin)})", param="admin")
        mode = fields.get("mode")
        if mode is None and admin:
            mode = "live"
        if mode not in ("live", "test"):
            raise InvalidRequest(
                f'mode must be "live" or "test" (got {describe(mode)})', param="mode"
            )
        name = fields.get("name") or ""
        if not isinstance(name, str) or len(name) > MAX_NAME:
            raise InvalidRequest(
                f"name must be a string of at most {MAX_NAME} characters (got {describe(name)})",
                param="name",
            )
        key, secret, webhook_secret = await self.create(mode, name, fields, admin=admin)
        return {**await self._json(key), "secret": secret, "webhook_secret": webhook_secret}

    async def update_key(self, caller: ApiKey, key_id: str, body: object) -> dict[str, Any]:
        require_admin(caller)
        return await self._json(await self.update(key_id, _object(body, LIMIT_FIELDS)))

    async def revoke_key(self, caller: ApiKey, key_id: str) -> dict[str, Any]:
        require_admin(caller)
        return await self._json(await self.revoke(key_id))

    async def usage_report(
        self, caller: ApiKey, *, since: float | None = None, until: float | None = None
    ) -> dict[str, Any]:
        """Every key's usage by UTC day and model, recorded in [since, until); and every
        tenant key's balance on the ledger now, over all time."""
        require_admin(caller)
        check_range(since, until)
        rows = await self.days.by_day(since=since, until=until)
        keys = await self.keys.list_keys()
        balances = await self.ledger.balances(self.currency)
        return {
            "object": "admin.usage",
            "since": since,
            "until": until,
            **_days_json(rows),
            "keys": [
                {"api_key_id": k.id, **balance_json(balances.get(k.id) or _empty(k, self.currency))}
                for k in keys
                if not k.admin
            ],
        }


def _empty(key: ApiKey, currency: str) -> Balance:
    """The balance of a key the ledger read did not see (made since): nothing held or spent."""
    return Balance(key.limits.budget, 0.0, 0.0, currency)


def _days_json(rows: list[DayUsage]) -> dict[str, Any]:
    return {
        "days": [
            {
                "day": r.day,
                "api_key_id": r.api_key_id,
                "model": r.model,
                "tasks": r.tasks,
                "videos": r.videos,
                "video_seconds": r.video_seconds,
                "cost": r.cost,
                "currency": r.currency,
            }
            for r in rows
        ],
        "totals": currency_totals(rows),
    }
