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
import re
import time
from dataclasses import dataclass

from reelserve.storage.base import StorageKeyError, check_key

# Tokens are two base64url parts joined by a dot; a payload names a key of at most 512
# characters, so real tokens stay well under this.
MAX_TOKEN_CHARS = 2048
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


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
        check_key(grant.key)
        payload = json.dumps(
            {"k": grant.key, "t": grant.content_type, "e": grant.expires_at},
            separators=(",", ":"),
            sort_keys=True,
        ).encode()
        body = _b64(payload)
        return f"{body}.{_b64(self._mac(body.encode()))}"

    def verify(self, token: str, *, now: float | None = None) -> FileGrant:
        """The grant a token carries, or `TokenError`: this raises nothing else, whatever the
        token (it comes from any client, without a key)."""
        # A token is base64url text; anything else (non-ASCII, which `compare_digest` refuses
        # as str, or a megabyte of junk) is refused before any work is done on it.
        if len(token) > MAX_TOKEN_CHARS or not _TOKEN_RE.fullmatch(token):
            raise TokenError("invalid file token")
        # The MAC covers the token's text and is compared as text, so no other spelling of the
        # same bytes (base64 padding bits, say) passes.
        body, _, mac = token.partition(".")
        if not hmac.compare_digest(_b64(self._mac(body.encode())).encode(), mac.encode()):
            raise TokenError("invalid file token")
        try:
            data = json.loads(_unb64(body))
            key, content_type, expires_at = data["k"], data["t"], data["e"]
        except (ValueError, KeyError, TypeError, IndexError, RecursionError):
            raise TokenError("malformed file token") from None
        if not (
            isinstance(key, str)
            and isinstance(content_type, str)
            and isinstance(expires_at, int)
            and not isinstance(expires_at, bool)
        ):
            raise TokenError("malformed file token")
        try:
            check_key(key)  # signed, but a bad key must not reach the storage (defence in depth)
        except StorageKeyError:
            raise TokenError("malformed file token") from None
        grant = FileGrant(key=key, content_type=content_type, expires_at=expires_at)
        if grant.expires_at < (time.time() if now is None else now):
            raise TokenError("this file link has expired", expired=True)
        return grant
