"""Google Veo 3.1 over Google's documented REST API, on the Gemini API and on Vertex AI.

Every byte sent to Google is built in this module (`request_body`), with httpx; google-auth is
used only to mint Vertex AI access tokens. The endpoints:

- Gemini API (`x-goog-api-key`): `POST {base}/v1beta/models/M:predictLongRunning`, then
  `GET {base}/v1beta/{operation}` until done, then `GET {base}/v1beta/files/F:download?alt=media`,
  which answers with a redirect to the file (followed without the key).
- Vertex AI (bearer token): `POST .../publishers/google/models/M:predictLongRunning`, then
  `POST .../M:fetchPredictOperation {"operationName": ...}`; videos come inline (base64) or, with
  `storageUri`, as `gs://` objects read through the Cloud Storage JSON API.

What each backend accepts is `providers/google_veo/rules.py`. The submit check refuses a request no
configured credential can serve; here, a credential is only ever chosen among those whose
backend serves the request exactly as asked.

One task is one or more upstream operations. A backend gives at most `samples_per_request`
videos per request (the Gemini API one), so `sample_count` fans out into as many operations as
needed, each checkpointed on its own:

1. **Submit.** Before a request leaves, its checkpoint entry says `phase: submitting` with the
   credential; as soon as Google answers with the operation's name, it says `phase: polling`.
   A 429 fails over to the next credential (waiting as Google's `RetryInfo` or `Retry-After`
   says once all are exhausted); 5xx and network failures that certainly did not reach Google
   are retried with backoff; any other 4xx fails that operation with Google's reason.
2. **Poll** each operation with backoff and jitter until it is done, the task's deadline passes
   (`timeout`) or the client cancels. A resumed attempt (another worker, after a crash) polls the
   checkpointed operations with their own credentials and never submits them again. An entry
   found in `phase: submitting` cannot be known to have reached Google, so it is not sent again
   either: that sample is reported missing rather than risk paying twice.
3. **Download** each video once into the attempt's work directory and hand the MP4s to the
   worker, which probes, thumbnails and stores them.

Samples removed by Google's safety filters, or whose operation failed, are reported in the
task's result (`withheld`); the task completes with the rest, and fails (`content_filtered`
when every sample was filtered) only when none is left. Where a backend takes no parameter for
a seed field, reelserve does the work itself: the Gemini API takes no `resizeMode` (the image
sent is already padded or cropped to the output's aspect ratio) and no `generateAudio` (it
always generates audio; reelserve drops the track when `generate_audio` is false).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import email.utils
import json
import logging
import math
import random
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import httpx

from reelserve.domain.errors import InvalidRequest
from reelserve.domain.models import ModelEntry
from reelserve.domain.spec import GenerationSpec
from reelserve.domain.task import ErrorCode
from reelserve.media.images import ImageInputError, upload_image
from reelserve.providers.base import (
    Clip,
    ProviderBase,
    ProviderError,
    RunContext,
    Usage,
    Withheld,
)
from reelserve.providers.google_veo import rules
from reelserve.providers.google_veo.credentials import (
    Credential,
    CredentialError,
    CredentialPool,
    build_credentials,
)
from reelserve.providers.google_veo.rules import GEMINI, VERTEX, Backend
from reelserve.settings.google import GoogleSettings

log = logging.getLogger("reelserve.google_veo")
R = TypeVar("R")

# Messages of failed operations that mean Google's safety filters refused the request.
SAFETY_WORDS = ("usage guidelines", "responsible ai", "safety filter", "rai ")
MAX_REASON_CHARS = 600
MAX_ERROR_BODY = 64 * 1024
HTTP_CONCURRENCY = 32  # requests to Google at once per worker process (polls are short)


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


def _clip(text: str) -> str:
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."


def request_body(
    spec: GenerationSpec,
    backend: Backend,
    op: dict[str, Any],
    images: dict[str, tuple[bytes, str]],
    *,
    storage_uri: str | None,
) -> dict[str, Any]:
    """The JSON body of one `predictLongRunning` request: every seed field under Google's name,
    as far as the backend takes it (veo_rules.py says which)."""
    applied = rules.applied(spec, backend)
    instance: dict[str, Any] = {"prompt": spec.prompt}
    for name, key in (("first", "image"), ("last", "lastFrame")):
        if name in images:
            data, mime = images[name]
            instance[key] = {
                "bytesBase64Encoded": base64.b64encode(data).decode(),
                "mimeType": mime,
            }
    params: dict[str, Any] = {
        "aspectRatio": spec.aspect_ratio,
        "resolution": rules.RESOLUTION_UPSTREAM[spec.resolution],
        "durationSeconds": spec.duration,
    }
    if spec.person_generation_given:
        # Omitted, Google applies its own default (`applied.person_generation`, which the
        # result reports); users report live answers that differ from the documented values.
        params["personGeneration"] = applied.person_generation
    if spec.negative_prompt:
        params["negativePrompt"] = spec.negative_prompt
    if applied.seed:
        params["seed"] = int(op["seed"])
    if applied.samples_per_request > 1:
        params["sampleCount"] = int(op["samples"])
    if applied.generate_audio:
        params["generateAudio"] = spec.generate_audio
    if applied.resize_mode and "first" in images:
        params["resizeMode"] = spec.resize_mode
    if applied.storage_uri and storage_uri:
        params["storageUri"] = storage_uri
    return {"instances": [instance], "parameters": params}


@dataclass
class _Run:
    """One attempt at one task: what every operation of it shares."""

    spec: GenerationSpec
    ctx: RunContext
    entry: ModelEntry
    state: dict[str, Any]
    deadline_at: float
    fractions: dict[int, float] = field(default_factory=dict)
    images: dict[str, dict[str, tuple[bytes, str]]] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def ops(self) -> list[dict[str, Any]]:
        ops: list[dict[str, Any]] = self.state.setdefault("ops", [])
        return ops

    async def save(self) -> None:
        """Checkpoint the whole provider state (every operation's entry) durably."""
        async with self._lock:
            await self.ctx.checkpoint(copy.deepcopy(self.state))

    def progress(self, op: dict[str, Any], fraction: float) -> None:
        """Progress of one operation; the task's is the mean over its samples."""
        self.fractions[int(op["index"])] = fraction
        done = sum(self.fractions.get(int(o["index"]), 0.0) * int(o["samples"]) for o in self.ops)
        self.ctx.report_progress(done / max(1, self.spec.sample_count))

    def check(self) -> None:
        """Raise if the client cancelled (or the worker stops), or the deadline passed."""
        self.ctx.check_cancelled()
        self.check_deadline()

    def check_deadline(self) -> None:
        if time.time() >= self.deadline_at:
            raise ProviderError(
                ErrorCode.TIMEOUT,
                "Google did not finish the video before this task's deadline "
                f"({self.entry.id}); the task was stopped",
            )


@dataclass
class _Done:
    """What one finished operation gave: its videos, and the samples Google withheld."""

    op: dict[str, Any]
    clips: list[Clip]
    filtered: int  # removed by the safety filters
    reasons: list[str]
    missing: int = 0  # neither delivered nor reported filtered


@dataclass
class _Failed:
    """One operation that gave nothing, and why."""

    op: dict[str, Any]
    error: ProviderError


class GoogleVeoProvider(ProviderBase):
    """The `google_veo` provider (see the module docstring)."""

    name = "google_veo"
    kind = "remote"  # waits on Google: the worker's remote bound, not its compute slots

    def __init__(
        self,
        settings: GoogleSettings,
        models: dict[str, ModelEntry],
        *,
        credentials: list[Credential] | None = None,
    ) -> None:
        self.settings = settings
        self.models = models
        if credentials is None:
            credentials = build_credentials(settings)
        self.pool = CredentialPool(credentials)
        self._http: httpx.AsyncClient | None = None
        self._http_loop: asyncio.AbstractEventLoop | None = None
        self._http_slots: asyncio.Semaphore | None = None

    # -- capabilities ------------------------------------------------------------------------

    def admit(self, spec: GenerationSpec) -> None:
        """The submit check: a 400 unless some configured credential serves `spec` as asked."""
        admit(spec, self.pool.profiles())

    def fit_model(self, entry: ModelEntry) -> ModelEntry:
        """The model's capability table as the configured backends can serve it."""
        return fit_model(entry, self.pool.profiles())

    def upstream_model(self, entry: ModelEntry, backend: str) -> str:
        gemini = str(entry.options.get("upstream_model") or "")
        if backend == VERTEX:
            return str(entry.options.get("vertex_model") or gemini)
        return gemini

    # -- HTTP --------------------------------------------------------------------------------

    def http(self) -> httpx.AsyncClient:
        """One connection pool per event loop, kept between tasks (a poll is one light GET)."""
        loop = asyncio.get_running_loop()
        if self._http is None or self._http_loop is not loop:
            self._http = httpx.AsyncClient(
                timeout=httpx.Timeout(self.settings.request_timeout),
                limits=httpx.Limits(
                    max_connections=HTTP_CONCURRENCY, max_keepalive_connections=HTTP_CONCURRENCY
                ),
                follow_redirects=False,
                trust_env=False,
            )
            self._http_loop = loop
            self._http_slots = asyncio.Semaphore(HTTP_CONCURRENCY)
        return self._http

    def _vertex_base(self, cred: Credential) -> str:
        if self.settings.vertex_base_url:
            return self.settings.vertex_base_url.rstrip("/")
        return f"https://{cred.location}-aiplatform.googleapis.com"

    def _model_url(self, cred: Credential, model: str) -> str:
        s = self.settings
        if cred.backend == GEMINI:
            return f"{s.base_url.rstrip('/')}/{s.gemini_api_version}/models/{model}"
        return (
            f"{self._vertex_base(cred)}/{s.vertex_api_version}/projects/{cred.project}"
            f"/locations/{cred.location}/publishers/google/models/{model}"
        )

    async def _call(
        self,
        cred: Credential,
        method: str,
        url: str,
        body: dict[str, Any] | None = None,
        *,
        check: Callable[[], None],
    ) -> dict[str, Any]:
        """One JSON request with the credential's authentication; GoogleError unless 2xx."""
        if cred.request_rate is not None:
            await cred.request_rate.take(check)
        headers = await cred.headers(self.settings.request_timeout)
        http = self.http()
        assert self._http_slots is not None
        # Requests wait their turn here, not in httpcore's pool, whose bookkeeping walks every
        # queued request and connection on each one (quadratic with thousands of polls).
        async with self._http_slots:
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

    # -- run ---------------------------------------------------------------------------------

    async def run(self, spec: GenerationSpec, ctx: RunContext) -> list[Clip]:
        entry = self.models.get(spec.model)
        if entry is None:
            raise ProviderError(
                ErrorCode.PROVIDER_NOT_CONFIGURED, f'model "{spec.model}" is not configured'
            )
        state = _current_state(ctx.resume_state, spec)
        deadline_at = float(state.get("deadline_at") or time.time() + self.settings.deadline)
        state["deadline_at"] = deadline_at
        run = _Run(spec=spec, ctx=ctx, entry=entry, state=state, deadline_at=deadline_at)
        jobs: list[asyncio.Task[_Done | _Failed]] = []
        try:
            for op in run.ops:
                jobs.append(asyncio.create_task(self._operation(run, op, None)))
            remaining = spec.sample_count - sum(int(op["samples"]) for op in run.ops)
            while remaining > 0:
                cred = await self._acquire(run, 1)
                per_request = rules.applied(spec, cred.profile).samples_per_request
                samples = min(remaining, per_request)
                index = spec.sample_count - remaining
                op = {"index": index, "samples": samples, "seed": spec.sample_seed(index)}
                run.ops.append(op)
                jobs.append(asyncio.create_task(self._operation(run, op, cred)))
                remaining -= samples
            outcomes = await asyncio.gather(*jobs, return_exceptions=True)
        except BaseException:
            for job in jobs:
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)
            raise
        return self._outcome(run, outcomes)

    def _outcome(self, run: _Run, outcomes: list[_Done | _Failed | BaseException]) -> list[Clip]:
        """The task's clips in sample order, and what Google withheld; raises when none."""
        clips: list[Clip] = []
        withheld: list[Withheld] = []
        errors: list[ProviderError] = []
        filtered = ErrorCode.CONTENT_FILTERED.value
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome  # cancelled, shutting down, lease lost, or a bug
            if isinstance(outcome, _Failed):
                errors.append(outcome.error)
                count = int(outcome.op["samples"])
                withheld.append(Withheld(outcome.error.code, count, outcome.error.message))
                continue
            clips.extend(outcome.clips)
            if outcome.filtered:
                why = f": {_clip('; '.join(outcome.reasons))}" if outcome.reasons else ""
                message = f"Google's safety filters removed {outcome.filtered} video(s){why}"
                withheld.append(
                    Withheld(filtered, outcome.filtered, message, tuple(outcome.reasons))
                )
            if outcome.missing:
                message = f"Google returned {outcome.missing} video(s) fewer than asked"
                withheld.append(Withheld(ErrorCode.UPSTREAM_ERROR.value, outcome.missing, message))
        if not clips:
            if errors:
                raise errors[0]
            if withheld and all(w.code == filtered for w in withheld):
                reasons = [r for w in withheld for r in w.reasons]
                why = "; ".join(reasons) or f"{sum(w.count for w in withheld)} video(s) removed"
                raise ProviderError(
                    ErrorCode.CONTENT_FILTERED,
                    f"Google's safety filters removed the video: {_clip(why)}",
                )
            raise ProviderError(ErrorCode.UPSTREAM_ERROR, "Google finished without any video")
        if withheld:
            log.warning(
                "task %s: %d of %d samples withheld: %s",
                run.ctx.task_id,
                sum(w.count for w in withheld),
                run.spec.sample_count,
                "; ".join(w.message for w in withheld),
            )
            run.ctx.report_withheld(withheld)
        return clips

    @staticmethod
    def _usable(spec: GenerationSpec, samples: int) -> Callable[[Credential], bool]:
        """Whether a credential serves `spec` and gives `samples` videos in one request."""

        def usable(cred: Credential) -> bool:
            profile = cred.profile
            return (
                rules.serves(spec, profile)
                and rules.applied(spec, profile).samples_per_request >= samples
            )

        return usable

    async def _acquire(
        self, run: _Run, samples: int, exclude: set[str] | None = None
    ) -> Credential:
        """A slot on a credential that serves the spec and gives `samples` per request."""
        usable = self._usable(run.spec, samples)
        cred = await self.pool.acquire(usable, exclude or set(), run.check)
        if cred is None:
            refused = rules.refusal(run.spec, self.pool.profiles())
            why = refused[1] if refused else "no configured credential serves it"
            raise ProviderError(ErrorCode.UPSTREAM_ERROR, f"cannot send this task to Google: {why}")
        return cred

    async def _operation(
        self, run: _Run, op: dict[str, Any], cred: Credential | None
    ) -> _Done | _Failed:
        """One upstream operation from wherever its checkpoint says, to its downloaded videos.
        `cred` is a slot already acquired for a new operation; the slot is released here."""
        try:
            if op.get("operation"):
                cred = self.pool.by_id.get(str(op.get("credential")))
                if cred is None:
                    raise ProviderError(
                        ErrorCode.UPSTREAM_ERROR,
                        f"this task's operation was started with credential "
                        f"{op.get('credential')}, which is no longer configured on this "
                        "server; it cannot be polled",
                    )
                await self.pool.acquire_pinned(cred, run.check)
                log.info("task %s: resuming operation %s", run.ctx.task_id, op["operation"])
            elif op.get("phase") == "submitting":
                raise ProviderError(
                    ErrorCode.UPSTREAM_ERROR,
                    "an earlier attempt stopped while the request for this sample was in flight "
                    f"({op.get('credential')}); Google may have accepted and billed it, so "
                    "reelserve did not send it again. Submit a new task to try again.",
                )
            else:
                cred = await self._submit(run, op, cred)
            try:
                response = await self._poll(run, op, cred)
                return await self._collect(run, op, cred, response)
            finally:
                self.pool.release(cred)
        except ProviderError as exc:
            return _Failed(op, exc)

    async def _submit(self, run: _Run, op: dict[str, Any], first: Credential | None) -> Credential:
        """Send one operation's request (failing over and retrying as the module docstring
        says) and checkpoint its name. Returns with a pool slot held on the credential used."""
        spec, ctx = run.spec, run.ctx
        samples = int(op["samples"])
        exhausted: set[str] = set()
        attempt = 0
        last: Fault | None = None
        quota_waits = 0
        cred = first
        while True:
            if cred is None:
                if exhausted and not self.pool.candidates(self._usable(spec, samples), exhausted):
                    # Every credential answered 429: Google's per-minute quota. That is a
                    # queue, not a failure: wait as told (RetryInfo), then go round again,
                    # until the task's deadline.
                    quota_waits += 1
                    await self._backoff(run, quota_waits, last.retry_after if last else None)
                    if time.time() >= run.deadline_at:
                        why = _clip(last.message if last else "429")
                        raise ProviderError(
                            ErrorCode.TIMEOUT,
                            "Google's quota stayed exhausted on every configured credential "
                            f"until this task's deadline ({why})",
                        )
                    exhausted.clear()
                cred = await self._acquire(run, samples, exhausted)
            model = self.upstream_model(run.entry, cred.backend)
            try:
                if cred.submit_rate is not None:
                    await cred.submit_rate.take(run.check)
                body = request_body(
                    spec,
                    cred.profile,
                    op,
                    await self._images(run, cred.backend),
                    storage_uri=self._storage_uri(run, op),
                )
                op.update(
                    credential=cred.id,
                    backend=cred.backend,
                    upstream_model=model,
                    phase="submitting",
                    since=time.time(),
                    person_generation=rules.applied(spec, cred.profile).person_generation,
                    seed_sent="seed" in body["parameters"],
                )
                # From here until the operation name is checkpointed, a crash leaves this
                # mark, and the next attempt does not send this request again.
                await run.save()
                answer = await self._call(
                    cred,
                    "POST",
                    self._model_url(cred, model) + ":predictLongRunning",
                    body,
                    check=ctx.check_cancelled,
                )
            except asyncio.CancelledError:
                self.pool.release(cred)
                raise
            except Exception as exc:
                self.pool.release(cred)
                fault = classify(exc)
                if fault is None and isinstance(exc, ProviderError | ImageInputError):
                    raise
                if fault is None or fault.kind == Fault.UNSURE:
                    # The request may have reached Google: the "submitting" mark stays, and
                    # this sample fails instead of risking a second, paid submission.
                    reason = fault.message if fault else repr(exc)
                    raise ProviderError(
                        ErrorCode.UPSTREAM_ERROR,
                        f"the request to Google failed midway ({_clip(reason)}); it may have "
                        "been accepted, so reelserve does not send it again. Submit a new "
                        "task to try again.",
                    ) from None
                # Google answered (or the request never left): nothing was accepted.
                op["phase"] = "idle"
                await run.save()
                last = fault
                log.warning("task %s: submit on %s: %s", ctx.task_id, cred.id, fault.message)
                cred = None
                if fault.kind == Fault.QUOTA:
                    exhausted.add(str(op["credential"]))
                    continue
                if fault.kind == Fault.FATAL:
                    raise ProviderError(
                        ErrorCode.UPSTREAM_ERROR,
                        f"Google rejected the request: {_clip(fault.message)}",
                    ) from None
                attempt += 1
                if attempt > self.settings.retry_attempts:
                    raise ProviderError(
                        ErrorCode.UPSTREAM_ERROR, f"Google kept failing: {_clip(fault.message)}"
                    ) from None
                await self._backoff(run, attempt, fault.retry_after)
                continue
            name = answer.get("name")
            if not isinstance(name, str) or not name:
                self.pool.release(cred)
                raise ProviderError(
                    ErrorCode.UPSTREAM_ERROR, "Google returned an operation without a name"
                )
            op.update(phase="polling", operation=name, submitted_at=time.time())
            try:
                await run.save()
            except BaseException:
                self.pool.release(cred)
                raise
            log.info("task %s: operation %s on %s", ctx.task_id, name, cred.id)
            run.progress(op, 0.05)
            return cred

    def _storage_uri(self, run: _Run, op: dict[str, Any]) -> str | None:
        if not self.settings.output_gcs_uri:
            return None
        return f"{self.settings.output_gcs_uri.rstrip('/')}/{run.ctx.task_id}/{op['index']}/"

    async def _images(self, run: _Run, backend: str) -> dict[str, tuple[bytes, str]]:
        """The input images as this backend takes them, made once per attempt: never larger
        than the output, at most 20 MB, JPEG or PNG. The Gemini API, which takes no
        `resizeMode`, gets them already padded or cropped to the output's aspect ratio;
        Vertex AI gets them whole and fits them itself, as `resizeMode` says."""
        if backend in run.images:
            return run.images[backend]
        spec = run.spec
        fit = None if rules.applied(spec, Backend(backend)).resize_mode else spec.resize_mode
        out: dict[str, tuple[bytes, str]] = {}
        for name, raw in (
            ("first", run.ctx.images.first_bytes),
            ("last", run.ctx.images.last_bytes),
        ):
            if raw is None:
                continue
            try:
                out[name] = await asyncio.to_thread(
                    upload_image,
                    raw[0],
                    spec.width,
                    spec.height,
                    fit,
                    max_bytes=rules.MAX_IMAGE_BYTES,
                    types=rules.IMAGE_TYPES,
                )
            except ImageInputError as exc:
                raise ProviderError(
                    ErrorCode.INVALID_IMAGE, f"{name}_frame_image: {exc.message}"
                ) from None
        run.images[backend] = out
        return out

    # -- poll + download ---------------------------------------------------------------------

    async def _poll(self, run: _Run, op: dict[str, Any], cred: Credential) -> dict[str, Any]:
        """Poll until done, with backoff and jitter; transient failures are retried. Returns
        the operation's `response`, or raises with its `error`."""
        name = str(op["operation"])
        model = str(op.get("upstream_model") or self.upstream_model(run.entry, cred.backend))
        s = self.settings
        if cred.backend == GEMINI:
            url = f"{s.base_url.rstrip('/')}/{s.gemini_api_version}/{name}"
            method, body = "GET", None
        else:
            url = self._model_url(cred, model) + ":fetchPredictOperation"
            method, body = "POST", {"operationName": name}
        interval = s.poll_interval
        started = time.monotonic()
        while True:
            # The deadline is checked after each answer, not before: an operation that finished
            # meanwhile (a resumed attempt after a long outage) is still collected.
            answer = await self._retrying(
                run,
                lambda: self._call(cred, method, url, body, check=run.ctx.check_cancelled),
                refused=f"Google refused to report on operation {name}",
                failing="polling Google",
                within_deadline=True,
            )
            if answer.get("done"):
                run.progress(op, 0.9)
                error = answer.get("error")
                if isinstance(error, dict):
                    message = str(error.get("message") or error)
                    code = (
                        ErrorCode.CONTENT_FILTERED
                        if any(w in message.lower() for w in SAFETY_WORDS)
                        else ErrorCode.UPSTREAM_ERROR
                    )
                    raise ProviderError(
                        code,
                        f"Google could not generate the video (error {error.get('code')}): "
                        f"{_clip(message)}",
                    )
                response = answer.get("response")
                return response if isinstance(response, dict) else {}
            elapsed = time.monotonic() - started
            expected = max(1.0, float(run.entry.estimated_time))
            run.progress(op, 0.05 + 0.85 * (1 - math.exp(-elapsed / expected)))
            run.check_deadline()
            jitter = s.poll_jitter
            await self._sleep(run, interval * random.uniform(1 - jitter, 1 + jitter))
            interval = min(s.poll_max_interval, interval * s.poll_backoff)

    async def _collect(
        self, run: _Run, op: dict[str, Any], cred: Credential, response: dict[str, Any]
    ) -> _Done:
        """Download the videos of a finished operation; record what it delivered."""
        samples, filtered, reasons = _samples(response)
        spec = run.spec
        clips: list[Clip] = []
        seed = int(op["seed"]) if op.get("seed_sent") else None
        upstream_person = str(op.get("person_generation") or "")
        person = rules.PERSON_CLIENT.get(upstream_person, upstream_person or None)
        for offset, sample in enumerate(samples[: int(op["samples"])]):
            run.ctx.check_cancelled()
            path = run.ctx.workdir / f"sample_{int(op['index']) + offset}.mp4"
            await self._download(run, cred, sample, path)
            await asyncio.to_thread(_check_video, path, spec.generate_audio)
            clips.append(Clip(path=path, seed=seed, person_generation=person))
            run.progress(op, 0.9 + 0.1 * (offset + 1) / len(samples))
        shortfall = int(op["samples"]) - len(clips)
        if filtered:
            filtered = min(filtered, shortfall)
        elif reasons:
            filtered = shortfall
        missing = shortfall - filtered
        if not clips and not filtered:
            raise ProviderError(ErrorCode.UPSTREAM_ERROR, "Google finished without any video")
        op.update(delivered=len(clips), filtered=filtered)
        await run.save()
        return _Done(op=op, clips=clips, filtered=filtered, reasons=reasons, missing=missing)

    async def _download(
        self, run: _Run, cred: Credential, sample: dict[str, Any], path: Path
    ) -> None:
        """One video into `path`, retrying transient failures (downloads are idempotent)."""
        inline = sample.get("bytesBase64Encoded") or sample.get("encodedVideo")
        if isinstance(inline, str) and inline:
            try:
                data = await asyncio.to_thread(base64.b64decode, inline, validate=True)
            except (binascii.Error, ValueError):
                raise ProviderError(
                    ErrorCode.UPSTREAM_ERROR, "Google returned a video whose base64 is invalid"
                ) from None
            await asyncio.to_thread(path.write_bytes, data)
            return
        uri = str(sample.get("uri") or sample.get("gcsUri") or "")

        async def fetch() -> None:
            if cred.request_rate is not None:
                await cred.request_rate.take(run.ctx.check_cancelled)
            if uri.startswith("gs://"):
                await self._download_gcs(cred, uri, path)
            elif cred.backend == GEMINI and (file_id := _gemini_file(uri)):
                await self._download_gemini(cred, file_id, path)
            else:
                raise ProviderError(
                    ErrorCode.UPSTREAM_ERROR,
                    f"Google returned a video without bytes or a usable URI ({_clip(uri)!r})",
                )

        # No deadline here: the video is made (and paid for) already.
        await self._retrying(
            run,
            fetch,
            refused="downloading the video from Google failed",
            failing="downloading the video",
        )

    async def _download_gemini(self, cred: Credential, file_id: str, path: Path) -> None:
        """`files/F:download` on the configured base URL (the key never goes to a host the
        answer names), then the redirect it answers with, followed without the key."""
        s = self.settings
        url = f"{s.base_url.rstrip('/')}/{s.gemini_api_version}/files/{file_id}:download"
        headers = await cred.headers(s.request_timeout)
        for hop in range(6):
            async with self.http().stream(
                "GET", url, params={"alt": "media"} if hop == 0 else None, headers=headers
            ) as response:
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

    async def _download_gcs(self, cred: Credential, uri: str, path: Path) -> None:
        """A `gs://bucket/object` result (Vertex AI with `storageUri`), through the Cloud
        Storage JSON API with the same credentials."""
        parts = urlsplit(uri)
        bucket, obj = parts.netloc, parts.path.lstrip("/")
        base = self.settings.storage_base_url.rstrip("/")
        url = f"{base}/download/storage/v1/b/{quote(bucket, safe='')}/o/{quote(obj, safe='')}"
        headers = await cred.headers(self.settings.request_timeout)
        async with self.http().stream(
            "GET", url, params={"alt": "media"}, headers=headers
        ) as response:
            await _save_stream(response, path)

    async def _retrying(
        self,
        run: _Run,
        call: Callable[[], Awaitable[R]],
        *,
        refused: str,
        failing: str,
        within_deadline: bool = False,
    ) -> R:
        """`call()`, retrying transient faults (5xx, 408, 429, network) with backoff as long as
        they come fewer than `retry_attempts` times in a row; a fatal fault (`refused`) or too
        many (`failing` ... kept failing) fail with Google's reason."""
        failures = 0
        while True:
            run.ctx.check_cancelled()
            try:
                return await call()
            except (ProviderError, asyncio.CancelledError):
                raise
            except Exception as exc:
                fault = classify(exc)
                if fault is None:
                    raise
                if fault.kind == Fault.FATAL:
                    raise ProviderError(
                        ErrorCode.UPSTREAM_ERROR, f"{refused}: {_clip(fault.message)}"
                    ) from None
                failures += 1
                log.warning("%s failed (%d): %s", failing, failures, fault.message)
                if within_deadline:
                    run.check_deadline()
                if failures > self.settings.retry_attempts:
                    raise ProviderError(
                        ErrorCode.UPSTREAM_ERROR, f"{failing} kept failing: {_clip(fault.message)}"
                    ) from None
                await self._backoff(run, failures, fault.retry_after)

    # -- waiting -----------------------------------------------------------------------------

    async def _backoff(self, run: _Run, attempt: int, retry_after: float | None) -> None:
        """Wait before retry `attempt` (1-based): exponential with jitter, or as long as the
        upstream asks (Retry-After, RetryInfo) when it says."""
        s = self.settings
        delay = min(s.retry_max_delay, s.retry_initial_delay * 2 ** (attempt - 1))
        delay *= random.uniform(1, 1 + s.poll_jitter)
        if retry_after is not None:
            delay = retry_after
        await self._sleep(run, delay)

    async def _sleep(self, run: _Run, seconds: float) -> None:
        """Sleep in short slices, so a cancellation is noticed promptly; never past the task's
        deadline (the caller then decides what the deadline means at its step)."""
        left = max(0.0, run.deadline_at - time.time())
        end = time.monotonic() + min(max(0.0, seconds), left)
        while True:
            run.ctx.check_cancelled()
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            await asyncio.sleep(min(remaining, 0.25))

    # -- usage -------------------------------------------------------------------------------

    def usage(self, spec: GenerationSpec, state: dict[str, Any] | None, videos: int) -> Usage:
        """What Google charges for this task: each operation's delivered videos at its
        backend's price for the model, resolution and audio (`google.prices`, per second)."""
        ops = _current_state(state, spec).get("ops") or []
        cost = 0.0
        credentials: list[str] = []
        for op in ops:
            delivered = int(op.get("delivered") or 0)
            backend = str(op.get("backend") or "")
            model = str(op.get("upstream_model") or "")
            price = self.settings.prices.get(backend, {}).get(model, {}).get(spec.resolution)
            if price is not None and delivered:
                with_audio = backend == GEMINI or spec.generate_audio or price.video is None
                rate = price.video_audio if with_audio else float(price.video or 0.0)
                cost += rate * spec.duration * delivered
            if op.get("credential") and str(op["credential"]) not in credentials:
                credentials.append(str(op["credential"]))
        return Usage(
            cost=round(cost, 6),
            currency=self.settings.currency,
            credential=",".join(credentials) or None,
        )


# -- the submit check and /v1/models, shared with API hosts that hold no credentials ---------


class VeoCapabilities:
    """Veo's submit check and model listing for an API host that runs no Veo poller and holds
    no Google credentials (`remote_providers`): it trusts `google.remote_backends` to say which
    backends the pollers hold. The poller checks again with its own credentials."""

    def __init__(self, profiles: list[Backend]) -> None:
        self.profiles = profiles

    @classmethod
    def of_backends(cls, kinds: Sequence[str], *, vertex_4k: bool) -> VeoCapabilities:
        return cls([Backend(k, four_k=vertex_4k and k == VERTEX) for k in dict.fromkeys(kinds)])

    def admit(self, spec: GenerationSpec) -> None:
        admit(spec, self.profiles)

    def fit_model(self, entry: ModelEntry) -> ModelEntry:
        return fit_model(entry, self.profiles)


def admit(spec: GenerationSpec, profiles: list[Backend]) -> None:
    """Raise a 400 (`InvalidRequest` with `param`) unless some backend serves `spec`."""
    refused = rules.refusal(spec, profiles)
    if refused is not None:
        param, message = refused
        raise InvalidRequest(message, param=param)


def profile_label(profile: Backend) -> str:
    return profile.kind + (" (restricted region)" if profile.restricted_region else "")


def fit_model(entry: ModelEntry, profiles: list[Backend]) -> ModelEntry:
    """`entry` as these backends can serve it: the resolutions (and their durations) some
    backend serves, and per backend what it can do (`GET /v1/models`)."""
    if not profiles:
        return entry
    resolutions = [
        r for r in entry.resolutions if any(rules.resolution_rule(p, r) for p in profiles)
    ]
    durations: dict[str, list[int]] = {}
    for resolution in resolutions:
        allowed = sorted(
            {
                d
                for p in profiles
                if (row := rules.resolution_rule(p, resolution)) is not None
                for d in row.durations
                if d in entry.durations
            }
        )
        if allowed != sorted(entry.durations):
            durations[resolution] = allowed
    backends = {profile_label(p): rules.describe(p) for p in profiles}
    return entry.model_copy(
        update={"resolutions": resolutions, "resolution_durations": durations, "backends": backends}
    )


# -- helpers ---------------------------------------------------------------------------------


def _current_state(state: dict[str, Any] | None, spec: GenerationSpec) -> dict[str, Any]:
    """The provider checkpoint in today's shape (a list of operations). A checkpoint of an
    earlier release (one operation for the whole task) becomes one entry."""
    current: dict[str, Any] = copy.deepcopy(state or {})
    if "ops" not in current and current.get("phase") in ("submitting", "polling"):
        op: dict[str, Any] = {
            key: current.pop(key)
            for key in ("phase", "operation", "credential", "backend", "upstream_model", "since")
            if key in current
        }
        op.update(index=0, samples=spec.sample_count, seed=spec.seed, seed_sent=False)
        current["ops"] = [op]
    current.setdefault("ops", [])
    return current


def _samples(response: dict[str, Any]) -> tuple[list[dict[str, Any]], int, list[str]]:
    """The videos of a finished operation, and how many safety filters removed (and why), in
    either backend's shape: the Gemini API's `generateVideoResponse.generatedSamples[].video`
    or Vertex AI's `videos[]`."""
    inner = response.get("generateVideoResponse")
    source = inner if isinstance(inner, dict) else response
    videos: list[dict[str, Any]] = []
    for item in source.get("generatedSamples") or []:
        if isinstance(item, dict) and isinstance(item.get("video"), dict):
            videos.append(item["video"])
    for item in source.get("videos") or []:
        if isinstance(item, dict):
            videos.append(item)
    try:
        filtered = int(source.get("raiMediaFilteredCount") or 0)
    except (TypeError, ValueError):
        filtered = 0
    reasons = [str(r) for r in source.get("raiMediaFilteredReasons") or [] if r]
    return videos, filtered, reasons


def _gemini_file(uri: str) -> str | None:
    """The file id of a Gemini API video URI (`.../v1beta/files/<id>:download?alt=media`)."""
    match = re.search(r"/files/([A-Za-z0-9_-]+)", uri)
    return match.group(1) if match else None


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


def _check_video(path: Path, keep_audio: bool) -> None:
    """The download is a readable MP4; without `generate_audio`, its audio track is dropped
    (the Gemini API always generates one). Blocking: call in a thread."""
    import av

    try:
        with av.open(str(path)) as container:
            has_video = bool(container.streams.video)
            has_audio = bool(container.streams.audio)
    except (av.error.FFmpegError, OSError) as exc:
        raise ProviderError(
            ErrorCode.UPSTREAM_ERROR, f"Google returned a file that is not a readable video: {exc}"
        ) from None
    if not has_video:
        raise ProviderError(ErrorCode.UPSTREAM_ERROR, "Google returned a file with no video")
    if has_audio and not keep_audio:
        _drop_audio(path)


def _drop_audio(path: Path) -> None:
    """Remux the video stream alone (no re-encoding) and replace the file."""
    import av

    out_path = path.with_name(f".{path.name}.noaudio")
    with (
        av.open(str(path)) as source,
        av.open(str(out_path), "w", format="mp4", options={"movflags": "+faststart"}) as out,
    ):
        video_in = source.streams.video[0]
        video_out = out.add_stream_from_template(video_in)
        for packet in source.demux(video_in):
            if packet.dts is None:
                continue
            packet.stream = video_out
            out.mux(packet)
    out_path.replace(path)
