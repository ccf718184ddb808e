"""API keys: minted once, stored as SHA-256 hashes, looked up by hash, compared in constant time.

Keys carry 192 random bits, so a fast hash is the right tool (no password stretching needed).
A key is `live` (runs the model's real provider) or `test` (runs every model on the sandbox).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from reelserve.domain.ids import key_id
from reelserve.store.db import begin_write
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

    @classmethod
    def from_row(cls, row: sa.Row[Any]) -> ApiKey:
        m = row._mapping
        return cls(
            id=m["id"],
            name=m["name"],
            mode=m["mode"],
            prefix=m["prefix"],
            created_at=m["created_at"],
            revoked_at=m["revoked_at"],
        )

    @property
    def is_test(self) -> bool:
        return self.mode == "test"


class KeyStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(
        self, mode: KeyMode, name: str = "", *, webhook_secret: str | None = None
    ) -> tuple[ApiKey, str]:
        """Mint a key; the secret is returned once and never stored in clear.
        `webhook_secret` is the key's webhook signing secret, already sealed (store/webhooks)."""
        if mode not in ("live", "test"):
            raise ValueError(f"key mode must be live or test, not {mode!r}")
        secret = f"rs_{mode}_{secrets.token_urlsafe(24)}"
        record = ApiKey(
            id=key_id(),
            name=name,
            mode=mode,
            prefix=secret[:12],
            created_at=time.time(),
            revoked_at=None,
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
                )
            )
        return record, secret

    async def authenticate(self, secret: str) -> ApiKey | None:
        digest = hash_secret(secret)
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(api_keys, api_keys.c.secret_hash).where(
                        api_keys.c.secret_hash == digest
                    )
                )
            ).first()
        if row is None or not hmac.compare_digest(row._mapping["secret_hash"], digest):
            return None
        key = ApiKey.from_row(row)
        return None if key.revoked_at is not None else key

    async def list_keys(self) -> list[ApiKey]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(api_keys).order_by(api_keys.c.id))).all()
        return [ApiKey.from_row(r) for r in rows]

    async def revoke(self, ident: str) -> ApiKey | None:
        """Revoke by id (`key_...`) or by the shown prefix; returns the key, or None if unknown."""
        column = api_keys.c.id if ident.startswith("key_") else api_keys.c.prefix
        async with begin_write(self.engine) as conn:
            rows = (await conn.execute(sa.select(api_keys).where(column == ident))).all()
            if len(rows) != 1:
                return None
            await conn.execute(
                api_keys.update()
                .where(api_keys.c.id == rows[0]._mapping["id"], api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(api_keys).where(api_keys.c.id == rows[0]._mapping["id"])
                )
            ).first()
        return ApiKey.from_row(row) if row is not None else None
