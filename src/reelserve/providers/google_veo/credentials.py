"""Google credentials for the Veo provider, shared fairly between tasks.

A credential is one Gemini API key or one Vertex AI project/location with its Google
credentials (google-auth: a service-account key file, a fixed access token, or Application
Default Credentials). `CredentialPool` hands them out round-robin, at most `max_concurrency`
upstream operations on each at once (counted within this worker process: several worker
processes each apply the limit on their own), skipping the ones a caller excludes (quota
exhausted) or whose backend cannot serve the request. An operation keeps the credential that
created it until it ends, so that polling and downloading use the same key or project (an
operation is only visible to its own project).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from reelserve.providers.google_veo.rules import GEMINI, VERTEX, Backend
from reelserve.settings.google import GeminiKey, GoogleSettings, VertexCredential

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


class CredentialError(Exception):
    """A credential cannot be used (unreadable service-account file, no default credentials)."""


@dataclass
class Credential:
    """One way of calling Veo, and the operations using it right now."""

    id: str
    backend: str  # GEMINI | VERTEX
    max_concurrency: int
    api_key: str | None = None
    project: str | None = None
    location: str | None = None
    google_credentials: Any = None  # google.auth.credentials.Credentials (Vertex)
    restricted_region: bool = False
    four_k: bool = False
    submit_rate: RateLimiter | None = None  # submits
    request_rate: RateLimiter | None = None  # every request
    in_flight: int = 0
    _token_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def profile(self) -> Backend:
        """What this credential's backend and account can serve (providers/google_veo/rules.py)."""
        return Backend(self.backend, restricted_region=self.restricted_region, four_k=self.four_k)

    def describe(self) -> str:
        if self.backend == VERTEX:
            return f"Vertex AI project {self.project} ({self.location}), credential {self.id}"
        return f"Gemini API key {self.id}"

    async def headers(self, refresh_timeout: float) -> dict[str, str]:
        """The authentication headers of one request: the API key, or a bearer token
        (refreshed through google-auth in a thread when it is missing or expired)."""
        if self.backend == GEMINI:
            return {"x-goog-api-key": str(self.api_key)}
        creds = self.google_credentials
        if creds is not None and creds.valid:  # the usual case: no thread, no lock
            return {"Authorization": f"Bearer {creds.token}"}
        token = await asyncio.to_thread(self._access_token, refresh_timeout)
        return {"Authorization": f"Bearer {token}"}

    def _access_token(self, timeout: float) -> str:
        creds = self.google_credentials
        if creds is None:
            raise CredentialError(f"no Google credentials for {self.describe()}")
        with self._token_lock:
            if not creds.valid:
                creds.refresh(HttpxAuthRequest(timeout))
            return str(creds.token)


class Wait(Protocol):
    """How a task waits: `RunContext.sleep` (or `Attempt.sleep`, which stops at the task's
    deadline). One entry in the worker's due-time heap; a stop of the task ends it at once,
    raising; `until` done ends it early."""

    def __call__(
        self, seconds: float, until: asyncio.Future[Any] | None = None
    ) -> Awaitable[None]: ...


class RateLimiter:
    """A token bucket: on average `per_minute` takes a minute, in bursts of up to `burst`.

    Shared by every task of one worker process on one credential. Kept as the time its next
    token is due (the generic cell rate algorithm): a take reserves the next free turn at once,
    in arrival order, and waits for it once (`wait`), so a thousand tasks queued behind the rate
    cost one timer each and none wakes before its turn."""

    def __init__(self, per_minute: float, burst: float | None = None) -> None:
        self.per_minute = per_minute
        self.interval = 60.0 / per_minute  # seconds per token
        self.burst = max(1.0, burst if burst is not None else min(per_minute / 6.0, 10.0))
        self.tolerance = (self.burst - 1.0) * self.interval  # how far ahead a burst may go
        self.due = time.monotonic()  # when the bucket would be empty again (theoretical)

    def reserve(self) -> float:
        """Take the next turn; the seconds until it comes (0: now)."""
        now = time.monotonic()
        start = max(now, self.due - self.tolerance)
        self.due = max(self.due, now) + self.interval
        return start - now

    async def take(self, wait: Wait) -> None:
        delay = self.reserve()
        if delay <= 0:
            return
        mine = self.due
        try:
            await wait(delay)
        except BaseException:
            if self.due == mine:  # nobody queued behind this turn: give it back
                self.due -= self.interval
            raise


def _limiter(per_minute: float | None) -> RateLimiter | None:
    return RateLimiter(per_minute) if per_minute else None


class HttpxAuthRequest:
    """google-auth's transport interface (`google.auth.transport.Request`) over httpx, so that
    token refreshes need no other HTTP library. Blocking: called from a thread."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> _AuthResponse:
        import google.auth.exceptions

        try:
            response = httpx.request(
                method,
                url,
                content=body,
                headers=dict(headers or {}),
                timeout=timeout or self.timeout,
            )
        except httpx.HTTPError as exc:
            raise google.auth.exceptions.TransportError(exc) from exc  # type: ignore[no-untyped-call]
        return _AuthResponse(response.status_code, dict(response.headers), response.content)


@dataclass
class _AuthResponse:
    """google-auth's `transport.Response`: status, headers, data."""

    status: int
    headers: dict[str, str]
    data: bytes


def _gemini_id(entry: GeminiKey) -> str:
    if entry.id:
        return entry.id
    digest = hashlib.sha256(entry.key.get_secret_value().encode()).hexdigest()[:10]
    return f"gemini:{digest}"


def _vertex_google_credentials(entry: VertexCredential) -> Any:
    """google-auth credentials for a Vertex entry: a fixed access token, a service-account key
    file, or (neither given) Application Default Credentials."""
    import google.auth
    import google.auth.exceptions
    import google.oauth2.credentials
    import google.oauth2.service_account

    if entry.access_token is not None:
        return google.oauth2.credentials.Credentials(  # type: ignore[no-untyped-call]
            token=entry.access_token.get_secret_value()
        )
    if entry.service_account_file is not None:
        path = entry.service_account_file.expanduser()
        try:
            sa = google.oauth2.service_account.Credentials
            return sa.from_service_account_file(  # type: ignore[no-untyped-call]
                str(path), scopes=[CLOUD_PLATFORM_SCOPE]
            )
        except (OSError, ValueError) as exc:
            raise CredentialError(
                f"google: cannot use the service-account file {path} for Vertex project "
                f"{entry.project}: {exc}"
            ) from None
    try:
        creds, _project = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
    except google.auth.exceptions.DefaultCredentialsError as exc:
        raise CredentialError(
            f"google: no credentials for Vertex project {entry.project}: set "
            f"service_account_file or access_token, or configure Application Default "
            f"Credentials ({exc})"
        ) from None
    return creds


def build_credentials(settings: GoogleSettings) -> list[Credential]:
    """Every configured credential, Gemini API keys first. Raises `CredentialError` for one
    that cannot be used, so a misconfigured server says so when it starts."""
    creds: list[Credential] = []
    for key in settings.gemini_keys():
        creds.append(
            Credential(
                id=_gemini_id(key),
                backend=GEMINI,
                max_concurrency=key.max_concurrency or settings.max_concurrency,
                api_key=key.key.get_secret_value(),
                restricted_region=key.restricted_region,
                submit_rate=_limiter(key.submits_per_minute or settings.submits_per_minute),
                request_rate=_limiter(key.requests_per_minute or settings.requests_per_minute),
            )
        )
    for entry in settings.vertex_credentials():
        creds.append(
            Credential(
                id=entry.id or f"vertex:{entry.project}/{entry.location}",
                backend=VERTEX,
                max_concurrency=entry.max_concurrency or settings.max_concurrency,
                project=entry.project,
                location=entry.location,
                google_credentials=_vertex_google_credentials(entry),
                four_k=settings.vertex_4k,
                submit_rate=_limiter(entry.submits_per_minute or settings.submits_per_minute),
                request_rate=_limiter(entry.requests_per_minute or settings.requests_per_minute),
            )
        )
    seen: set[str] = set()
    for cred in creds:
        if cred.id in seen:
            raise CredentialError(
                f"google: two credentials are named {cred.id!r}; give them distinct ids"
            )
        seen.add(cred.id)
    return creds


class CredentialPool:
    """Round-robin over credentials with a per-credential concurrency limit.

    While every usable credential is at its limit, a task waits in line (first come, first
    served); a released slot is handed straight to the first waiter that can use it."""

    WAIT = 60.0  # seconds a waiter sleeps before it looks again (a handed-over slot wakes it)

    def __init__(self, credentials: list[Credential]) -> None:
        self.credentials = credentials
        self.by_id = {c.id: c for c in credentials}
        self._turn = 0
        self._waiters: list[tuple[asyncio.Future[Credential], Callable[[Credential], bool]]] = []

    def subset(self, selectors: list[str]) -> CredentialPool:
        """A pool of some of these credentials (a route's: ids, or backend names for all of
        a backend's), sharing their slots, rate limits and this pool's line of waiters, so a
        slot freed by either pool goes to the first task waiting for it in both."""
        chosen: list[Credential] = []
        for selector in selectors:
            found = [c for c in self.credentials if selector in (c.id, c.backend)]
            if not found:
                known = ", ".join([c.id for c in self.credentials] + [GEMINI, VERTEX])
                raise CredentialError(
                    f"no configured Google credential is {selector!r} (known: {known})"
                )
            chosen.extend(c for c in found if c not in chosen)
        pool = CredentialPool(chosen)
        pool._waiters = self._waiters
        return pool

    def profiles(self) -> list[Backend]:
        """The distinct backends (with their account's restrictions) configured here."""
        return list(dict.fromkeys(c.profile for c in self.credentials))

    def candidates(
        self, usable: Callable[[Credential], bool], exclude: set[str]
    ) -> list[Credential]:
        return [c for c in self.credentials if usable(c) and c.id not in exclude]

    async def acquire(
        self, usable: Callable[[Credential], bool], exclude: set[str], wait: Wait
    ) -> Credential | None:
        """The next usable credential not in `exclude` with a free slot, waiting in line for
        one while all are busy (`wait`, which raises when the task stops). None when no
        credential is usable at all."""

        def fits(cred: Credential) -> bool:
            return cred.id in self.by_id and usable(cred) and cred.id not in exclude

        while True:
            choices = self.candidates(usable, exclude)
            if not choices:
                return None
            count = len(self.credentials)
            for step in range(count):
                index = (self._turn + step) % count
                cred = self.credentials[index]
                if cred in choices and cred.in_flight < cred.max_concurrency:
                    cred.in_flight += 1
                    self._turn = (index + 1) % count
                    return cred
            handed = await self._wait_in_line(fits, wait)
            if handed is not None:
                return handed

    async def acquire_pinned(self, cred: Credential, wait: Wait) -> None:
        """A slot on this very credential (a resumed task polls with the one it used)."""
        while cred.in_flight >= cred.max_concurrency:
            if await self._wait_in_line(lambda c: c is cred, wait) is not None:
                return
        cred.in_flight += 1

    async def _wait_in_line(
        self, fits: Callable[[Credential], bool], wait: Wait
    ) -> Credential | None:
        """Wait for a slot `release` hands over (the credential, its slot already counted),
        or None after `WAIT` seconds, to look again."""
        handed: asyncio.Future[Credential] = asyncio.get_running_loop().create_future()
        entry = (handed, fits)
        self._waiters.append(entry)
        try:
            await wait(self.WAIT, handed)
        except BaseException:
            if handed.done() and not handed.cancelled():
                self.release(handed.result())  # handed over as this task stopped: pass it on
            raise
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)
            if not handed.done():
                handed.cancel()
        return handed.result() if handed.done() and not handed.cancelled() else None

    def release(self, cred: Credential) -> None:
        """Free a slot: hand it to the first waiter that can use it, else count it free."""
        for entry in self._waiters:
            handed, fits = entry
            if not handed.done() and fits(cred):
                self._waiters.remove(entry)
                handed.set_result(cred)
                return
        cred.in_flight = max(0, cred.in_flight - 1)
