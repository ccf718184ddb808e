"""API keys: minted once, stored as SHA-256 hashes, looked up by hash, compared in constant time.

Keys carry 192 random bits, so a fast hash is the right tool (no password stretching needed).
A key is `live` (runs the model's real provider) or `test` (runs every model on the sandbox).
It carries its limits (`domain.limits.KeyLimits`), and an admin key (`admin`) only uses the
admin API. A key is named by its id (`key_...`) or by its shown prefix.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from reelserve.domain.ids import key_id
from reelserve.domain.limits import LIMIT_FIELDS, KeyLimits
from reelserve.store.db import begin_write
from reelserve.store.reads import PointRead, PostgresReader, SqliteReader
from reelserve.store.tables import api_keys

KeyMode = Literal["live", "test"]


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    mode: KeyMode
    prefix: str
    created_at: float
    revoked_at: float | None
    limits: KeyLimits = field(default_factory=KeyLimits)
    admin: bool = False

    @classmethod
    def from_row(cls, row: sa.Row[Any] | Mapping[str, Any]) -> ApiKey:
        """From a SQLAlchemy row, or a mapping of a reader's plain values (`models` as JSON
        text, `admin` as SQLite's 0 or 1)."""
        m = row._mapping if isinstance(row, sa.Row) else row
        models = m["models"]
        if isinstance(models, str):
            models = json.loads(models)  # JSON's null included
        return cls(
            id=m["id"],
            name=m["name"],
            mode=m["mode"],
            prefix=m["prefix"],
            created_at=m["created_at"],
            revoked_at=m["revoked_at"],
            limits=KeyLimits(
                max_running=m["max_running"],
                rate_per_minute=m["rate_per_minute"],
                budget=m["budget"],
                models=tuple(models) if models is not None else None,
            ),
            admin=bool(m["admin"]),
        )

    @property
    def is_test(self) -> bool:
        return self.mode == "test"


# A request's key, by the hash of its secret: on every request, so on the store's reader
# (reads.py) where there is one; `models` as its JSON text on both engines.
_BY_HASH = PointRead(
    sa.select(
        *(c for c in api_keys.c if c.name != "models"),
        sa.cast(api_keys.c.models, sa.Text).label("models"),
    ).where(api_keys.c.secret_hash == sa.bindparam("digest", type_=sa.String))
)
_BY_HASH_NAMES = tuple(c.name for c in _BY_HASH.statement.selected_columns)


class KeyStore:
    def __init__(
        self, engine: AsyncEngine, reader: SqliteReader | PostgresReader | None = None
    ) -> None:
        self.engine = engine
        self.reader = reader  # the task queue's (TaskQueue.reader)

    async def create(
        self,
        mode: KeyMode,
        name: str = "",
        *,
        webhook_secret: str | None = None,
        limits: KeyLimits | None = None,
        admin: bool = False,
    ) -> tuple[ApiKey, str]:
        """Mint a key; the secret is returned once and never stored in clear.
        `webhook_secret` is the key's webhook signing secret, already sealed (store/webhooks).
        An admin key's secret reads `rs_admin_...`."""
        if mode not in ("live", "test"):
            raise ValueError(f"key mode must be live or test, not {mode!r}")
        secret = f"rs_{'admin' if admin else mode}_{secrets.token_urlsafe(24)}"
        record = ApiKey(
            id=key_id(),
            name=name,
            mode=mode,
            prefix=secret[:12],
            created_at=time.time(),
            revoked_at=None,
            limits=limits or KeyLimits(),
            admin=admin,
        )
        async with begin_write(self.engine) as conn:
            await conn.execute(
                api_keys.insert().values(
                    id=record.id,
                    name=name,
                    mode=mode,
                    prefix=record.prefix,
                    secret_hash=hash_secret(secret),
                    created_at=record.created_at,
                    webhook_secret=webhook_secret,
                    admin=admin,
                    **_limit_values(record.limits.as_json()),
                )
            )
        return record, secret

    async def authenticate(self, secret: str) -> ApiKey | None:
        digest = hash_secret(secret)
        if self.reader is not None:
            rows = await self.reader.fetch(_BY_HASH, digest=digest)
        else:
            async with self.engine.connect() as conn:
                rows = [
                    tuple(r) for r in await conn.execute(_BY_HASH.statement, {"digest": digest})
                ]
        if not rows:
            return None
        found = dict(zip(_BY_HASH_NAMES, rows[0], strict=True))
        if not hmac.compare_digest(found["secret_hash"], digest):
            return None
        key = ApiKey.from_row(found)
        return None if key.revoked_at is not None else key

    async def list_keys(self) -> list[ApiKey]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(api_keys).order_by(api_keys.c.id))).all()
        return [ApiKey.from_row(r) for r in rows]

    async def find(self, ident: str) -> ApiKey | None:
        """The one key with this id (`key_...`) or shown prefix, or None (unknown, or a prefix
        that several keys share)."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(api_keys).where(_named(ident)))).all()
        return ApiKey.from_row(rows[0]) if len(rows) == 1 else None

    async def revoke(self, ident: str) -> ApiKey | None:
        """Revoke by id (`key_...`) or by the shown prefix; returns the key, or None if unknown."""
        return await self._change(
            ident, lambda key: {} if key.revoked_at else {"revoked_at": time.time()}
        )

    async def update_limits(self, ident: str, changes: Mapping[str, Any]) -> ApiKey | None:
        """Set the limits named in `changes` (checked: `domain.limits.parse_limit_changes`); a
        None value clears that limit, a limit not named stays as it was. Returns the key as it
        now is, or None if no single key matches."""
        unknown = set(changes) - set(LIMIT_FIELDS)
        if unknown:
            raise ValueError(f"not key limits: {sorted(unknown)}")
        return await self._change(ident, lambda _key: _limit_values(changes))

    async def _change(
        self, ident: str, values: Callable[[ApiKey], Mapping[str, Any]]
    ) -> ApiKey | None:
        async with begin_write(self.engine) as conn:
            rows = (await conn.execute(sa.select(api_keys).where(_named(ident)))).all()
            if len(rows) != 1:
                return None
            key = ApiKey.from_row(rows[0])
            changed = values(key)
            if changed:
                await conn.execute(
                    api_keys.update().where(api_keys.c.id == key.id).values(**changed)
                )
            row = (await conn.execute(sa.select(api_keys).where(api_keys.c.id == key.id))).one()
        return ApiKey.from_row(row)


def _named(ident: str) -> sa.ColumnElement[bool]:
    column = api_keys.c.id if ident.startswith("key_") else api_keys.c.prefix
    return column == ident


def _limit_values(limits: Mapping[str, Any]) -> dict[str, Any]:
    """Column values of limits; a JSON column's None must be SQL NULL, not JSON null."""
    out = dict(limits)
    if "models" in out:
        out["models"] = list(out["models"]) if out["models"] is not None else sa.null()
    return out
