"""What both relays share: the HTTP calls and how their failures are sorted, and one task's
life on the upstream (submit once, poll, download, cancel) around the checkpoint.

The checkpoint (`RunContext.checkpoint`, durable) says where a task stands upstream:

* `phase: submitting`, with the `Idempotency-Key`, just before a create leaves. A crash there
  leaves a create of unknown outcome: the next attempt sends it again with the same key only
  when the upstream honours it (`idempotent`; reelserve and the seed's API do: the same task
  comes back), else the task fails rather than risk paying twice.
* `phase: polling` with the upstream's task id as soon as the upstream answers. A resumed
  attempt polls that task; nothing is created twice.

Failures are sorted (`Fault`) by what they prove. A connection that was refused proves the
request never left; a 4xx (400, 401, 402, 429) that nothing was created. Those fail over to the
model's next route (`ProviderError(failover=True)`, where `ctx.can_fail_over`), once the retries
the options allow are spent. A timeout, a reset or a 5xx after the request left proves nothing:
no failover from there, ever, and a retry only with the same Idempotency-Key where it is
honoured. While polling and downloading, every transient failure (the upstream restarting, a
5xx, a 429) is waited out with backoff until the task's deadline: a restart of the upstream
does not fail the task.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import copy
import email.utils
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

import httpx

from reelserve.domain.errors import clip
from reelserve.domain.models import ModelEntry
from reelserve.domain.spec import GenerationSpec
from reelserve.domain.task import ErrorCode
from reelserve.media.remux import UnreadableVideo, drop_audio, stream_kinds
from reelserve.media.threads import in_media_thread
from reelserve.net.transport import default_ssl_context
from reelserve.providers.base import (
    Clip,
    ProviderBase,
    ProviderError,
    RunContext,
    TaskCancelled,
    Usage,
)
from reelserve.providers.relay.options import RelayOptions

log = logging.getLogger("reelserve.relay")

MAX_ERROR_BODY = 16 * 1024  # bytes of an error answer read for its message
MAX_REDIRECTS = 5
CANCEL_TIMEOUT = 5.0  # seconds a best-effort upstream cancel may take
POLL_JITTER = 0.1
_TASK_CODES = frozenset(code.value for code in ErrorCode)


# -- errors ----------------------------------------------------------------------------------


class UpstreamError(Exception):
    """A non-2xx answer of the upstream, with what its error envelope says."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.retry_after = retry_after

    @classmethod
    def of(cls, response: httpx.Response, body: bytes) -> UpstreamError:
        """The answer's envelope: the seed's and reelserve's `{"code", "error": {"message",
        "type", "param"}}`, OpenAI's `{"error": {"message", "type", "code", "param"}}`, a
        FastAPI `{"detail": ...}`, or the bare text."""
        message, kind, code, param = "", None, None, None
        try:
            payload = httpx.Response(200, content=body).json()
        except ValueError:
            payload = None
        if isinstance(payload, dict):
            error = payload.get("error")
            if isinstance(error, dict):
                message = str(error.get("message") or "")
                kind = _text(error.get("type"))
                code = _text(error.get("code"))
                param = _text(error.get("param"))
            elif isinstance(error, str):
                message = error
            if not message:
                detail = payload.get("detail") or payload.get("message")
                message = detail if isinstance(detail, str) else (str(detail) if detail else "")
        if not message:
            message = body.decode("utf-8", "replace").strip() or response.reason_phrase
        return cls(
            response.status_code,
            clip(" ".join(message.split()), 300),
            type=kind,
            code=code,
            param=param,
            retry_after=retry_after_of(response.headers),
        )

    def describe(self) -> str:
        """`HTTP 429 rate_limit_error: <message>` as a failed task shows it."""
        kind = f" {self.type}" if self.type else ""
        return f"HTTP {self.status}{kind}: {self.message}"


def _text(value: object) -> str | None:
    return str(value) if isinstance(value, str | int) and not isinstance(value, bool) else None


def retry_after_of(headers: httpx.Headers) -> float | None:
    """`Retry-After` in seconds (a number or an HTTP date), or None."""
    value = (headers.get("retry-after") or "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


FaultKind = Literal["unsent", "unsure", "rate", "payment", "refused"]


@dataclass(frozen=True)
class Fault:
    """What a failed call proves. `unsent`: the request never left (connection refused, DNS,
    connect timeout). `unsure`: it may have been acted on (a timeout or reset after sending, a
    5xx, a 408). `rate`: a 429. `payment`: a 402. `refused`: any other 4xx."""

    kind: FaultKind
    message: str
    retry_after: float | None = None
    error: UpstreamError | None = None

    @property
    def transient(self) -> bool:
        """Worth waiting out while polling or downloading (no harm in asking again)."""
        return self.kind in ("unsent", "unsure", "rate")


def classify(exc: BaseException) -> Fault | None:
    """Sort an exception of an upstream call; None for anything else (a bug: raised on)."""
    if isinstance(exc, UpstreamError):
        if exc.status == 429:
            return Fault("rate", exc.describe(), exc.retry_after, exc)
        if exc.status == 402:
            return Fault("payment", exc.describe(), None, exc)
        if exc.status == 408 or exc.status >= 500:
            return Fault("unsure", exc.describe(), exc.retry_after, exc)
        return Fault("refused", exc.describe(), None, exc)
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return Fault("unsent", f"cannot connect ({type(exc).__name__}: {exc})")
    if isinstance(exc, httpx.TransportError):
        return Fault("unsure", f"network error ({type(exc).__name__}: {exc})")
    return None


# -- HTTP ------------------------------------------------------------------------------------


class Http:
    """The calls to one upstream. Each attempt at a task has its own client (`session`,
    closed when the attempt ends: nothing outlives it, in any event loop), whose connection
    its polls keep alive; creates go on a fresh connection each (a kept-alive connection that
    the upstream closed, when it restarted, would make a create's outcome unknown; a fresh
    one that fails to connect proves the create never left)."""

    def __init__(self, options: RelayOptions) -> None:
        self.options = options
        self.base = options.base_url

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "reelserve-relay"}
        secret = self.options.secret()
        if secret:
            headers["Authorization"] = f"Bearer {secret}"
        headers.update(extra or {})
        return headers

    def _client(self, *, keepalive: bool) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            # The process's one SSL context: httpx would build one per client, 20 ms of the
            # event loop for each attempt.
            verify=default_ssl_context(),
            timeout=httpx.Timeout(self.options.request_timeout),
            limits=httpx.Limits(max_connections=2, max_keepalive_connections=1 if keepalive else 0),
            follow_redirects=False,
            trust_env=False,
        )

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[httpx.AsyncClient]:
        """One attempt's client (polls, downloads, cancels)."""
        async with self._client(keepalive=True) as client:
            yield client

    @contextlib.asynccontextmanager
    async def fresh(self) -> AsyncIterator[httpx.AsyncClient]:
        """A client for one create: its own connection, closed after."""
        async with self._client(keepalive=False) as client:
            yield client

    async def call(
        self,
        client: httpx.AsyncClient,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """One request; its JSON answer (None when empty), `UpstreamError` unless 2xx."""
        response = await client.request(
            method, self.url(path), headers=self.headers(headers), **kwargs
        )
        if response.status_code >= 300:
            raise UpstreamError.of(response, response.content[:MAX_ERROR_BODY])
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise UpstreamError(
                502, f"the upstream answered {method} {path} with a body that is not JSON"
            ) from None

    def _same_origin(self, url: str) -> bool:
        a, b = urlsplit(url), urlsplit(self.base)
        return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)

    async def download(self, client: httpx.AsyncClient, url: str, path: Path) -> None:
        """Stream `url` into `path`, following redirects by hand: the key goes only to the
        upstream's own origin, never to a storage host a link or a redirect names."""
        url = urljoin(self.base + "/", url)
        for _ in range(MAX_REDIRECTS + 1):
            if urlsplit(url).scheme not in ("http", "https"):
                raise UpstreamError(502, f"the upstream named a video at {clip(url, 80)!r}")
            headers = self.headers({"Accept": "*/*"})
            if not self._same_origin(url):
                headers.pop("Authorization", None)
            async with client.stream("GET", url, headers=headers) as response:
                if response.is_redirect:
                    location = response.headers.get("location")
                    if not location:
                        raise UpstreamError(502, "the upstream redirected without a Location")
                    url = urljoin(str(response.url), location)
                    continue
                if response.status_code != 200:
                    body = (await response.aread())[:MAX_ERROR_BODY]
                    raise UpstreamError.of(response, body)
                await _save_stream(response, path)
                return
        raise UpstreamError(502, "too many redirects downloading the video")


async def _save_stream(response: httpx.Response, path: Path) -> None:
    handle = await asyncio.to_thread(path.open, "wb")
    try:
        async for chunk in response.aiter_bytes(1024 * 1024):
            await asyncio.to_thread(handle.write, chunk)
    finally:
        await asyncio.to_thread(handle.close)


# -- one task upstream ------------------------------------------------------------------------


@dataclass(frozen=True)
class Video:
    """One finished video as the upstream names it."""

    url: str
    seed: int | None = None


@dataclass(frozen=True)
class Status:
    """The upstream task as one poll saw it. `progress` in [0, 1] where reported."""

    state: Literal["running", "completed", "failed", "cancelled"]
    progress: float | None = None
    videos: tuple[Video, ...] = ()
    error_code: str | None = None
    error_message: str | None = None

    @classmethod
    def failed(cls, progress: float | None, found: object) -> Status:
        """A failed upstream task, with the code and message of its `error` object (the
        seed's and OpenAI's answers both carry one) where there is one."""
        error = found if isinstance(found, dict) else {}
        return cls(
            "failed",
            progress,
            error_code=str(error.get("code") or "") or None,
            error_message=str(error.get("message") or "") or None,
        )


@dataclass
class Run:
    """One attempt at one task: the task, its checkpoint and deadline."""

    spec: GenerationSpec
    ctx: RunContext
    state: dict[str, Any]
    deadline_at: float
    options: RelayOptions
    client: httpx.AsyncClient  # this attempt's (`Http.session`)
    started: float = field(default_factory=time.monotonic)

    @property
    def upstream_id(self) -> str | None:
        value = self.state.get("upstream_id")
        return str(value) if value else None

    async def save(self) -> None:
        await self.ctx.checkpoint(copy.deepcopy(self.state))

    def left(self) -> float:
        return self.deadline_at - time.time()

    async def sleep(self, seconds: float) -> None:
        """`ctx.sleep` (ended at once by a cancellation), never past the deadline."""
        await self.ctx.sleep(min(max(0.0, seconds), max(0.0, self.left())))

    def backoff_delay(self, failures: int, retry_after: float | None = None) -> float:
        """Exponential from `retry_delay` with jitter, at most `poll_max_interval`; or what
        the upstream asked for (Retry-After)."""
        if retry_after is not None:
            return retry_after
        o = self.options
        delay = min(o.poll_max_interval, o.retry_delay * float(2 ** max(0, failures - 1)))
        return delay * random.uniform(1.0, 1.0 + POLL_JITTER)


class RelayProvider(ProviderBase, abc.ABC):
    """A model served by another asynchronous video API (see the module docstring). The
    subclasses say how that API is spoken (`seed.py`, `openai.py`)."""

    kind = "remote"  # waits on the upstream: no compute slot here
    api_label = "upstream"

    def __init__(self, name: str, entry: ModelEntry, options: RelayOptions) -> None:
        self.name = name
        self.entry = entry
        self.options = options
        self.http = Http(options)

    # -- what each API says differently -----------------------------------------------------

    @abc.abstractmethod
    async def create(self, run: Run, key: str) -> str:
        """Send the create (on `self.http.fresh()`), with `key` as its Idempotency-Key;
        the upstream's task id."""

    @abc.abstractmethod
    async def status(self, run: Run, upstream_id: str) -> Status:
        """One poll of the upstream task."""

    @abc.abstractmethod
    async def cancel(self, run: Run, upstream_id: str) -> None:
        """Ask the upstream to stop the task (best effort)."""

    # -- run -------------------------------------------------------------------------------

    @property
    def where(self) -> str:
        """The upstream as messages name it: the route, the API and its address."""
        return f"{self.name} ({self.api_label} at {self.options.base_url})"

    async def run(self, spec: GenerationSpec, ctx: RunContext) -> list[Clip]:
        state: dict[str, Any] = copy.deepcopy(ctx.resume_state or {})
        deadline_at = float(state.get("deadline_at") or time.time() + self.options.deadline)
        state["deadline_at"] = deadline_at
        state.setdefault("idempotency_key", f"reelserve-{ctx.task_id}-{self.name}")
        async with self.http.session() as client:
            run = Run(
                spec=spec,
                ctx=ctx,
                state=state,
                deadline_at=deadline_at,
                options=self.options,
                client=client,
            )
            try:
                if run.upstream_id is None:
                    await self._submit(run)
                else:
                    log.info(
                        "task %s: resuming %s task %s", ctx.task_id, self.name, run.upstream_id
                    )
                upstream_id = run.upstream_id
                assert upstream_id is not None
                done = await self._poll(run, upstream_id)
                return await self._collect(run, done)
            except TaskCancelled:
                await self._cancel_quietly(run)
                raise
            except ProviderError as exc:
                if exc.code == ErrorCode.TIMEOUT.value:
                    await self._cancel_quietly(run)  # abandoned: stop paying for it upstream
                raise

    async def _submit(self, run: Run) -> None:
        """Create the upstream task exactly once (module docstring) and checkpoint its id."""
        ctx, o = run.ctx, self.options
        key = str(run.state["idempotency_key"])
        # A create of unknown outcome (this attempt's, or an earlier one's that stopped while
        # its create was in flight) rules out failing over for good.
        if run.state.get("phase") == "submitting":
            if not o.honours_idempotency:
                raise ProviderError(
                    ErrorCode.UPSTREAM_ERROR,
                    f"an earlier attempt stopped while this task's request to {self.where} was "
                    "in flight; the upstream may have accepted and billed it, and it does not "
                    "honour Idempotency-Key (idempotent = false), so reelserve did not send it "
                    "again. Submit a new task to try again.",
                )
            run.state["uncertain"] = True
            log.info("task %s: re-sending its create with Idempotency-Key", ctx.task_id)
        failures = rate_limited = 0
        while True:
            ctx.check_cancelled()
            self._check_deadline(run, "submitting")
            run.state.update(phase="submitting", since=time.time())
            await run.save()
            try:
                upstream_id = await self.create(run, key)
            except (ProviderError, TaskCancelled, asyncio.CancelledError):
                raise
            except Exception as exc:
                fault = classify(exc)
                if fault is None:
                    raise
                log.warning("task %s: create on %s: %s", ctx.task_id, self.name, fault.message)
                if fault.kind == "unsure":
                    run.state["uncertain"] = True
                    if not o.honours_idempotency:
                        raise ProviderError(
                            ErrorCode.UPSTREAM_ERROR,
                            f"the request to {self.where} failed midway ({fault.message}); it "
                            "may have been accepted, and the upstream does not honour "
                            "Idempotency-Key (idempotent = false), so reelserve does not send "
                            "it again. Submit a new task to try again.",
                        ) from None
                    failures += 1
                    if failures > o.retries:
                        raise ProviderError(
                            ErrorCode.UPSTREAM_ERROR,
                            f"{self.where} kept failing ({fault.message}) after {o.retries} "
                            "retries with the same Idempotency-Key",
                        ) from None
                    await run.sleep(run.backoff_delay(failures, fault.retry_after))
                    continue  # the "submitting" mark stays: the same key goes again
                # The upstream answered 4xx, or the request never left: nothing was created
                # by this try. After an earlier try of unknown outcome the mark stays (a
                # resumed attempt sends the same key again) and failing over is ruled out.
                uncertain = bool(run.state.get("uncertain"))
                if not uncertain:
                    run.state["phase"] = "idle"
                    await run.save()
                failover = bool(ctx.can_fail_over) and not uncertain
                if fault.kind == "unsent":
                    failures += 1
                    if failures <= o.retries:
                        await run.sleep(run.backoff_delay(failures))
                        continue
                    raise ProviderError(
                        ErrorCode.UPSTREAM_ERROR,
                        f"cannot reach {self.where}: {fault.message}",
                        failover=failover,
                    ) from None
                if fault.kind == "rate":
                    rate_limited += 1
                    wait = run.backoff_delay(rate_limited, fault.retry_after)
                    if rate_limited <= o.rate_limit_retries and wait <= o.max_retry_after:
                        await run.sleep(wait)
                        continue
                    raise ProviderError(
                        ErrorCode.UPSTREAM_ERROR,
                        self._rate_message(fault, rate_limited - 1, wait),
                        failover=failover,
                    ) from None
                raise self._refusal(fault, failover) from None
            run.state.update(phase="polling", upstream_id=upstream_id, submitted_at=time.time())
            await run.save()
            log.info("task %s: %s task %s", ctx.task_id, self.name, upstream_id)
            ctx.report_progress(0.05)
            return

    def _rate_message(self, fault: Fault, retried: int, wait: float) -> str:
        o = self.options
        if wait > o.max_retry_after:
            why = f"it asked to wait {wait:g} s, more than max_retry_after "
            why += f"({o.max_retry_after:g} s)"
        else:
            why = f"still limited after {retried} retries (rate_limit_retries = "
            why += f"{o.rate_limit_retries})"
        return f"{self.where} is rate limiting this server's key ({fault.message}); {why}"

    def _refusal(self, fault: Fault, failover: bool) -> ProviderError:
        """A create the upstream refused (402 or another 4xx)."""
        error = fault.error
        if fault.kind == "payment":
            what = "refused the request for payment: its key's budget or balance is spent"
        elif error is not None and error.status in (401, 403):
            what = "refused this server's API key (check the route's api_key)"
        else:
            what = "rejected the request"
        code = ErrorCode.UPSTREAM_ERROR.value
        if error is not None and error.param in (
            "first_frame_image",
            "last_frame_image",
            "input_reference",
        ):
            code = ErrorCode.INVALID_IMAGE.value
        return ProviderError(code, f"{self.where} {what} ({fault.message})", failover=failover)

    def _check_deadline(self, run: Run, step: str) -> None:
        if run.left() <= 0:
            raise ProviderError(
                ErrorCode.TIMEOUT,
                f"{self.where} did not finish the video before this task's deadline "
                f"({self.options.deadline:g} s, while {step}); the task was stopped",
            )

    async def _poll(self, run: Run, upstream_id: str) -> Status:
        """Poll until the upstream task ends; transient failures are waited out until the
        deadline (the upstream restarting must not fail the task)."""
        ctx, o = run.ctx, self.options
        interval = o.poll_interval
        failures = 0
        while True:
            ctx.check_cancelled()
            try:
                status = await self.status(run, upstream_id)
            except (ProviderError, TaskCancelled, asyncio.CancelledError):
                raise
            except Exception as exc:
                fault = classify(exc)
                if fault is None:
                    raise
                if not fault.transient:
                    raise ProviderError(
                        ErrorCode.UPSTREAM_ERROR,
                        f"{self.where} refused to report on its task {upstream_id} "
                        f"({fault.message})",
                    ) from None
                failures += 1
                log.warning(
                    "task %s: polling %s (%d): %s", ctx.task_id, self.name, failures, fault.message
                )
                if run.left() <= 0:
                    raise ProviderError(
                        ErrorCode.TIMEOUT,
                        f"{self.where} could not be polled until this task's deadline "
                        f"({fault.message})",
                    ) from None
                await run.sleep(run.backoff_delay(failures, fault.retry_after))
                continue
            failures = 0
            if status.state == "completed":
                ctx.report_progress(0.9)
                return status
            if status.state == "failed":
                raise self._upstream_failure(upstream_id, status)
            if status.state == "cancelled":
                raise ProviderError(
                    ErrorCode.UPSTREAM_ERROR,
                    f"{self.where} cancelled its task {upstream_id} (not at this task's request)",
                )
            ctx.report_progress(0.05 + 0.85 * self._fraction(run, status))
            self._check_deadline(run, "waiting for the upstream")
            await run.sleep(interval * random.uniform(1 - POLL_JITTER, 1 + POLL_JITTER))
            interval = min(o.poll_max_interval, interval * o.poll_backoff)

    def _fraction(self, run: Run, status: Status) -> float:
        """The upstream's progress where it reports one, else an estimate from the model's
        expected time."""
        if status.progress is not None:
            return min(1.0, max(0.0, status.progress))
        expected = max(1.0, float(self.entry.estimated_time))
        return 1 - math.exp(-(time.monotonic() - run.started) / expected)

    def _upstream_failure(self, upstream_id: str, status: Status) -> ProviderError:
        """An upstream task that failed fails ours, under its code where it is one of ours."""
        code = status.error_code or ""
        ours = code if code in _TASK_CODES else ErrorCode.UPSTREAM_ERROR.value
        why = status.error_message or "no reason given"
        shown = f" ({code})" if code else ""
        return ProviderError(
            ours, f"{self.where} failed its task {upstream_id}{shown}: {clip(why, 500)}"
        )

    async def _collect(self, run: Run, done: Status) -> list[Clip]:
        """Download every video of the finished task into the work directory (the upstream's
        links expire; the worker re-hosts the files in reelserve's storage)."""
        if not done.videos:
            raise ProviderError(
                ErrorCode.UPSTREAM_ERROR,
                f"{self.where} finished its task {run.upstream_id} without any video",
            )
        clips: list[Clip] = []
        for index, video in enumerate(done.videos[: run.spec.sample_count]):
            run.ctx.check_cancelled()
            path = run.ctx.workdir / f"sample_{index}.mp4"
            await self._download(run, video.url, path)
            await in_media_thread(self._check_video, path, run.spec.generate_audio)
            clips.append(Clip(path=path, seed=video.seed))
            run.ctx.report_progress(0.9 + 0.1 * (index + 1) / len(done.videos))
        run.state["delivered"] = len(clips)
        await run.save()
        return clips

    async def _download(self, run: Run, url: str, path: Path) -> None:
        """One video, retrying transient failures (a download may always be sent again) for
        at least `retries` tries and until the deadline."""
        failures = 0
        while True:
            run.ctx.check_cancelled()
            try:
                await self.http.download(run.client, url, path)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                fault = classify(exc)
                if fault is None:
                    raise
                failures += 1
                out_of_time = failures > self.options.retries and run.left() <= 0
                if not fault.transient or out_of_time:
                    raise ProviderError(
                        ErrorCode.UPSTREAM_ERROR,
                        f"downloading the video of {self.where} task {run.upstream_id} "
                        f"failed ({fault.message})",
                    ) from None
                log.warning("task %s: download (%d): %s", run.ctx.task_id, failures, fault.message)
                await run.ctx.sleep(run.backoff_delay(failures, fault.retry_after))

    def _check_video(self, path: Path, keep_audio: bool) -> None:
        """A readable MP4 with a picture; an audio track the request did not ask for is
        dropped (blocking: in a thread)."""
        try:
            has_video, has_audio = stream_kinds(path)
        except UnreadableVideo as exc:
            raise ProviderError(
                ErrorCode.UPSTREAM_ERROR,
                f"{self.where} returned a file that is not a readable video: {exc}",
            ) from None
        if not has_video:
            raise ProviderError(ErrorCode.UPSTREAM_ERROR, f"{self.where} returned no video")
        if has_audio and not keep_audio:
            drop_audio(path)

    async def _cancel_quietly(self, run: Run) -> None:
        """Best effort, bounded: the upstream task is stopped where the API can."""
        upstream_id = run.upstream_id
        if upstream_id is None:
            return
        try:
            await asyncio.wait_for(self.cancel(run, upstream_id), CANCEL_TIMEOUT)
            log.info("task %s: cancelled %s task %s", run.ctx.task_id, self.name, upstream_id)
        except Exception as exc:  # best effort: the task's outcome is already decided
            log.warning(
                "task %s: cancelling %s task %s failed: %r",
                run.ctx.task_id,
                self.name,
                upstream_id,
                exc,
            )

    # -- usage -----------------------------------------------------------------------------

    def usage(self, spec: GenerationSpec, state: dict[str, Any] | None, videos: int) -> Usage:
        """Neither API reports a cost: 0 here (the ledger charges the model's list price),
        on the route's name."""
        return Usage(cost=0.0, credential=self.name)
