"""API keys as the server uses them: authenticating a bearer secret, minting a key.

A key is looked up in the store with a few seconds of in-process cache, so a busy client costs
no read per request; a revoked key stops working, and a changed limit applies, within
`AUTH_CACHE_SECONDS` (at once in the process that changed it: `forget`).
"""

from __future__ import annotations

import time

from reelserve.domain.limits import KeyLimits
from reelserve.store.keys import ApiKey, KeyMode, KeyStore
from reelserve.store.webhooks import WebhookStore, new_webhook_secret

AUTH_CACHE_SECONDS = 5.0
AUTH_CACHE_SIZE = 10_000


class Access:
    def __init__(self, keys: KeyStore, webhooks: WebhookStore) -> None:
        self.keys = keys
        self.webhooks = webhooks
        self._cache: dict[str, tuple[float, ApiKey]] = {}  # secret -> (monotonic expiry, key)

    async def authenticate(self, secret: str) -> ApiKey | None:
        """The live key with this secret, or None."""
        now = time.monotonic()
        cached = self._cache.get(secret)
        if cached is not None and cached[0] > now:
            return cached[1]
        key = await self.keys.authenticate(secret)
        if key is not None:
            if len(self._cache) > AUTH_CACHE_SIZE:
                self._cache.clear()
            self._cache[secret] = (now + AUTH_CACHE_SECONDS, key)
        else:
            self._cache.pop(secret, None)
        return key

    def forget(self, key_id: str) -> None:
        """Drop the cached lookups of a key whose limits or state just changed."""
        for secret in [s for s, (_, key) in self._cache.items() if key.id == key_id]:
            self._cache.pop(secret, None)

    async def create_key(
        self,
        mode: KeyMode,
        name: str = "",
        *,
        limits: KeyLimits | None = None,
        admin: bool = False,
    ) -> tuple[ApiKey, str, str]:
        """Mint an API key with its webhook signing secret: (key, API key secret, webhook
        secret). Both secrets are shown once; the webhook secret is stored sealed."""
        webhook_secret = new_webhook_secret()
        key, secret = await self.keys.create(
            mode,
            name,
            webhook_secret=self.webhooks.box.seal(webhook_secret),
            limits=limits,
            admin=admin,
        )
        return key, secret, webhook_secret
