"""Signed file tokens: `base64url(payload).base64url(hmac-sha256)`.

The payload names the storage key, the content type and the expiry (Unix seconds); it carries no
API key, so a URL can be handed to a browser or a `<video>` tag. Tokens are deterministic for
(key, expiry), so polling a task returns the same URLs every time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class FileGrant:
    key: str
    content_type: str
    expires_at: int


class TokenError(Exception):
    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


class Signer:
    def __init__(self, secret: bytes) -> None:
        self._secret = hashlib.sha256(b"reelserve-files\x00" + secret).digest()

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()[:20]

    def sign(self, grant: FileGrant) -> str:
        payload = json.dumps(
            {"k": grant.key, "t": grant.content_type, "e": grant.expires_at},
            separators=(",", ":"),
            sort_keys=True,
        ).encode()
        body = _b64(payload)
        return f"{body}.{_b64(self._mac(body.encode()))}"

    def verify(self, token: str, *, now: float | None = None) -> FileGrant:
        # The MAC covers the token's text and is compared as text, so no other spelling of the
        # same bytes (base64 padding bits, say) passes.
        body, _, mac = token.partition(".")
        if not hmac.compare_digest(_b64(self._mac(body.encode())), mac):
            raise TokenError("invalid file token")
        try:
            payload = _unb64(body)
        except (ValueError, TypeError):
            raise TokenError("malformed file token") from None
        try:
            data = json.loads(payload)
            grant = FileGrant(
                key=str(data["k"]), content_type=str(data["t"]), expires_at=int(data["e"])
            )
        except (ValueError, KeyError, TypeError):
            raise TokenError("malformed file token") from None
        if grant.expires_at < (time.time() if now is None else now):
            raise TokenError("this file link has expired", expired=True)
        return grant
