"""Google's REST API for Veo, over httpx: the endpoints, one JSON call, the downloads, and how
a failed call is sorted (`classify`). google-auth is used only to mint Vertex AI access tokens.

- Gemini API (`x-goog-api-key`): `POST {base}/v1beta/models/M:predictLongRunning`, then
  `GET {base}/v1beta/{operation}` until done, then `GET {base}/v1beta/files/F:download?alt=media`,
  which answers with a redirect to the file (followed without the key).
- Vertex AI (bearer token): `POST .../publishers/google/models/M:predictLongRunning`, then
  `POST .../M:fetchPredictOperation {"operationName": ...}`; videos come inline (base64) or, with
  `storageUri`, as `gs://` objects read through the Cloud Storage JSON API.

Every error answer from Google is counted in `reelserve_upstream_errors_total` (provider
`google_veo`, code: the HTTP status) as it arrives, retried or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from reelserve.metrics import upstream_error
from reelserve.net.transport import default_ssl_context
from reelserve.providers.google_veo.credentials import Credential, CredentialError, Wait
from reelserve.providers.google_veo.rules import GEMINI
from reelserve.settings.google import GoogleSettings

PROVIDER = "google_veo"
MAX_REASON_CHARS = 600
MAX_ERROR_BODY = 64 * 1024
HTTP_CONCURRENCY = 32  # requests to Google at once per worker process (polls are short)
# ... over this many connection pools, one connection each: httpcore walks every connection of a
# pool (a readability syscall each) when a request comes and again when it goes, so a pool of 4
# made a poll cost 8 such syscalls (15% of the worker's loop at 3,000 tasks in flight); a pool of
# one costs 2. A request goes to a pool with none in flight, so no request queues inside httpcore.
HTTP_SHARDS = HTTP_CONCURRENCY


def clip(text: str) -> str:
    """Google's reason, shortened to what an error message should carry."""
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."


class GoogleError(Exception):
    """An HTTP answer of Google's other than success, in its JSON error shape
    `{"error": {"code", "message", "status", "details"}}`."""

    def __init__(
        self, code: int, status: str, message: str, *, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{code} {status}: {message}".strip())
        self.code = code
        self.status = status
        self.message = message
        self.retry_after = retry_after

    @classmethod
    def of(cls, response: httpx.Response, body: bytes) -> GoogleError:
        """The error of an error answer, counted in the upstream error metric."""
        upstream_error(PROVIDER, response.status_code)
        status, message = "", ""
        details: list[Any] = []
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        error = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(error, dict):
            status = str(error.get("status") or "")
            message = str(error.get("message") or "")
            found = error.get("details")
            details = found if isinstance(found, list) else []
        elif body:
            message = body[:MAX_REASON_CHARS].decode("utf-8", "replace")
        return cls(
            response.status_code,
            status,
            message or response.reason_phrase,
            retry_after=retry_after_of(response.headers, details),
        )


class Fault:
    """What went wrong with one upstream call, and what may be done about it."""

    QUOTA = "quota"  # 429: try another credential, or wait
    TRANSIENT = "transient"  # 5xx, 408, network: retry (the request certainly did no harm)
    UNSURE = "unsure"  # network failure after the request may have reached Google
    FATAL = "fatal"  # any other 4xx, bad credentials: fail with the reason

    def __init__(
        self, kind: str, message: str, *, status: int | None = None, retry_after: float | None
    ) -> None:
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after


def classify(exc: BaseException) -> Fault | None:
    """Sort an exception from an upstream call; None for a bug."""
    import google.auth.exceptions

    if isinstance(exc, GoogleError):
        if exc.code == 429:
            return Fault(Fault.QUOTA, str(exc), status=exc.code, retry_after=exc.retry_after)
        if exc.code == 408 or exc.code >= 500:
            return Fault(Fault.TRANSIENT, str(exc), status=exc.code, retry_after=exc.retry_after)
        return Fault(Fault.FATAL, str(exc), status=exc.code, retry_after=None)
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return Fault(Fault.TRANSIENT, f"cannot connect: {exc!r}", retry_after=None)
    if isinstance(exc, httpx.TransportError):
        return Fault(Fault.UNSURE, f"network error: {exc!r}", retry_after=None)
    if isinstance(exc, CredentialError):
        return Fault(Fault.FATAL, str(exc), retry_after=None)
    if isinstance(exc, google.auth.exceptions.RefreshError):
        return Fault(Fault.FATAL, f"cannot obtain a Google access token: {exc}", retry_after=None)
    if isinstance(exc, google.auth.exceptions.TransportError):
        return Fault(
            Fault.TRANSIENT, f"cannot reach Google's token service: {exc}", retry_after=None
        )
    return None


def retry_after_of(headers: httpx.Headers, details: list[Any]) -> float | None:
    """Seconds to wait: a `Retry-After` header (seconds or HTTP date), else the `retryDelay`
    of a `google.rpc.RetryInfo` detail in the error body (e.g. "17s", "0.5s")."""
    value = headers.get("retry-after")
    if value:
        value = value.strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            when = None
        if when is not None:
            return max(0.0, when.timestamp() - time.time())
    for item in details:
        if isinstance(item, dict) and str(item.get("@type", "")).endswith("RetryInfo"):
            delay = item.get("retryDelay")
            if isinstance(delay, dict):  # the proto form {"seconds": n, "nanos": n}
                seconds = float(delay.get("seconds", 0)) + float(delay.get("nanos", 0)) / 1e9
                return max(0.0, seconds)
            try:
                return max(0.0, float(str(delay).strip().rstrip("s")))
            except ValueError:
                return None
    return None


class GoogleClient:
    """Calls to Google for one provider: connection pools per event loop, kept between tasks
    (a poll is one light GET), and at most `HTTP_CONCURRENCY` requests at once, each on the
    least busy of `HTTP_SHARDS` small pools."""

    def __init__(self, settings: GoogleSettings) -> None:
        self.settings = settings
        self._pools: list[httpx.AsyncClient] = []
        self._busy: list[int] = []
        self._http_loop: asyncio.AbstractEventLoop | None = None
        self._http_slots: asyncio.Semaphore | None = None

    @contextlib.asynccontextmanager
    async def http(self) -> AsyncIterator[httpx.AsyncClient]:
        """A client to send one request with, its turn among `HTTP_CONCURRENCY` taken."""
        loop = asyncio.get_running_loop()
        if self._http_slots is None or self._http_loop is not loop:
            per_pool = max(1, HTTP_CONCURRENCY // HTTP_SHARDS)
            self._pools = [
                httpx.AsyncClient(
                    # One SSL context for all the pools: httpx builds one per client otherwise
                    # (20 ms each, on the event loop: 0.6 s for 32 at a process's first call).
                    verify=default_ssl_context(),
                    timeout=httpx.Timeout(self.settings.request_timeout),
                    limits=httpx.Limits(
                        max_connections=per_pool, max_keepalive_connections=per_pool
                    ),
                    follow_redirects=False,
                    trust_env=False,
                )
                for _ in range(HTTP_SHARDS)
            ]
            self._busy = [0] * HTTP_SHARDS
            self._http_loop = loop
            self._http_slots = asyncio.Semaphore(per_pool * HTTP_SHARDS)
        busy = self._busy
        # Requests wait their turn here, not in httpcore's pool, whose bookkeeping walks every
        # queued request and connection on each one (quadratic with thousands of polls).
        async with self._http_slots:
            shard = busy.index(min(busy))
            busy[shard] += 1
            try:
                yield self._pools[shard]
            finally:
                busy[shard] -= 1

    def _vertex_base(self, cred: Credential) -> str:
        if self.settings.vertex_base_url:
            return self.settings.vertex_base_url.rstrip("/")
        return f"https://{cred.location}-aiplatform.googleapis.com"

    def _gemini_base(self) -> str:
        s = self.settings
        return f"{s.base_url.rstrip('/')}/{s.gemini_api_version}"

    def model_url(self, cred: Credential, model: str) -> str:
        s = self.settings
        if cred.backend == GEMINI:
            return f"{self._gemini_base()}/models/{model}"
        return (
            f"{self._vertex_base(cred)}/{s.vertex_api_version}/projects/{cred.project}"
            f"/locations/{cred.location}/publishers/google/models/{model}"
        )

    async def submit(
        self, cred: Credential, model: str, body: dict[str, Any], *, wait: Wait
    ) -> dict[str, Any]:
        """`predictLongRunning`: Google's answer names the new operation."""
        url = self.model_url(cred, model) + ":predictLongRunning"
        return await self.call(cred, "POST", url, body, wait=wait)

    async def poll(
        self, cred: Credential, model: str, operation: str, *, wait: Wait
    ) -> dict[str, Any]:
        """The operation as Google reports it now (`done`, `response` or `error`)."""
        if cred.backend == GEMINI:
            return await self.call(cred, "GET", f"{self._gemini_base()}/{operation}", wait=wait)
        url = self.model_url(cred, model) + ":fetchPredictOperation"
        return await self.call(cred, "POST", url, {"operationName": operation}, wait=wait)

    async def call(
        self,
        cred: Credential,
        method: str,
        url: str,
        body: dict[str, Any] | None = None,
        *,
        wait: Wait,
    ) -> dict[str, Any]:
        """One JSON request with the credential's authentication; GoogleError unless 2xx.
        `wait` is how to wait for a turn under the credential's request rate (the task's
        `RunContext.sleep`)."""
        if cred.request_rate is not None:
            await cred.request_rate.take(wait)
        headers = await cred.headers(self.settings.request_timeout)
        async with self.http() as http:
            response = await http.request(method, url, json=body, headers=headers)
        if response.status_code >= 300:
            raise GoogleError.of(response, response.content[:MAX_ERROR_BODY])
        try:
            payload = response.json()
        except ValueError:
            raise GoogleError(
                response.status_code, "", "Google answered with a body that is not JSON"
            ) from None
        if not isinstance(payload, dict):
            raise GoogleError(response.status_code, "", "Google answered with a non-object")
        return payload

    async def download_gemini(self, cred: Credential, file_id: str, path: Path) -> None:
        """`files/F:download` on the configured base URL (the key never goes to a host the
        answer names), then the redirect it answers with, followed without the key."""
        url = f"{self._gemini_base()}/files/{file_id}:download"
        headers = await cred.headers(self.settings.request_timeout)
        for hop in range(6):
            async with (
                self.http() as http,
                http.stream(
                    "GET", url, params={"alt": "media"} if hop == 0 else None, headers=headers
                ) as response,
            ):
                if response.is_redirect:
                    location = response.headers.get("location")
                    if not location:
                        raise GoogleError(response.status_code, "", "a redirect without Location")
                    url = str(response.url.join(location))
                    headers = {}
                    continue
                await _save_stream(response, path)
                return
        raise GoogleError(310, "", "too many redirects downloading the video")

    async def download_gcs(self, cred: Credential, uri: str, path: Path) -> None:
        """A `gs://bucket/object` result (Vertex AI with `storageUri`), through the Cloud
        Storage JSON API with the same credentials."""
        parts = urlsplit(uri)
        bucket, obj = parts.netloc, parts.path.lstrip("/")
        base = self.settings.storage_base_url.rstrip("/")
        url = f"{base}/download/storage/v1/b/{quote(bucket, safe='')}/o/{quote(obj, safe='')}"
        headers = await cred.headers(self.settings.request_timeout)
        async with (
            self.http() as http,
            http.stream("GET", url, params={"alt": "media"}, headers=headers) as response,
        ):
            await _save_stream(response, path)


async def _save_stream(response: httpx.Response, path: Path) -> None:
    """A streamed 200 answer into `path` (writes in a thread); GoogleError otherwise."""
    if response.status_code != 200:
        body = (await response.aread())[:MAX_ERROR_BODY]
        raise GoogleError.of(response, body)
    handle = await asyncio.to_thread(path.open, "wb")
    try:
        async for chunk in response.aiter_bytes(1024 * 1024):
            await asyncio.to_thread(handle.write, chunk)
    finally:
        await asyncio.to_thread(handle.close)
