"""Google Veo 3.1 through the official `google-genai` SDK, on the Gemini API and on Vertex AI.

One task is one upstream long-running operation:

1. **Submit.** A credential is taken from the pool (round-robin, per-credential concurrency
   limit, only credentials whose backend can serve the request). Before the request leaves,
   the checkpoint says `phase: submitting` with the credential; as soon as the SDK returns the
   operation, the checkpoint says `phase: polling` with the operation name and credential,
   before anything else happens. A 429 fails over to the next credential; 5xx and network
   failures that certainly did not reach Google are retried with backoff (honouring
   Retry-After); any other 4xx fails the task with Google's reason.
2. **Poll** the operation with backoff and jitter until it is done, the task's deadline passes
   (error `timeout`) or the client cancels. A resumed attempt (another worker, after a crash)
   finds `phase: polling` and polls the same operation with the same credential: it never
   submits again. A resumed attempt that finds `phase: submitting` cannot know whether Google
   accepted that request, so it fails the task with a clear message instead of paying twice.
3. **Download** each video once into the attempt's work directory (Gemini API: the file URI
   with the key; Vertex AI: inline bytes, or `gs://` objects through Cloud Storage), and hand
   the MP4s to the worker, which probes, thumbnails and stores them.

Where a backend does not take a seed parameter, reelserve does the same thing itself: the
Gemini API takes no `resizeMode` (the image sent is the frame reelserve already padded or
cropped to the output size) and no `generateAudio` (it always generates audio; reelserve drops
the audio track when the request said `generate_audio: false`). See docs/providers/google-veo.md.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import io
import logging
import math
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import httpx
from google.genai import errors as genai_errors
from google.genai import types

from reelserve.domain.models import ModelEntry
from reelserve.domain.spec import GenerationSpec
from reelserve.domain.task import ErrorCode
from reelserve.providers.base import Clip, ProviderError, RunContext, Usage
from reelserve.providers.google_credentials import (
    GEMINI,
    VERTEX,
    Credential,
    CredentialPool,
    build_credentials,
)
from reelserve.settings_google import GoogleSettings

log = logging.getLogger("reelserve.google_veo")
R = TypeVar("R")

# The seed's values -> the upstream's.
PERSON_GENERATION = {"allow_adult": "allow_adult", "disallow": "dont_allow"}
RESOLUTION = {"720p": "720p", "1080p": "1080p", "4K": "4k"}
RESIZE_MODE = {"pad": types.ImageResizeMode.PAD, "crop": types.ImageResizeMode.CROP}
# Messages of failed operations that mean Google's safety filters refused the request.
SAFETY_WORDS = ("usage guidelines", "responsible ai", "safety filter")
MAX_REASON_CHARS = 600


class Fault:
    """What went wrong with one upstream call, and what may be done about it."""

    QUOTA = "quota"  # 429: try another credential, or wait
    TRANSIENT = "transient"  # 5xx, 408, network: retry (the request certainly did no harm)
    UNSURE = "unsure"  # network failure after the request may have reached Google
    FATAL = "fatal"  # any other 4xx, bad credentials: fail the task with the reason

    def __init__(
        self, kind: str, message: str, *, status: int | None = None, retry_after: float | None
    ) -> None:
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after


def classify(exc: BaseException) -> Fault | None:
    """Sort an exception from the SDK (or the HTTP/auth layers below it); None for a bug."""
    import google.auth.exceptions

    if isinstance(exc, genai_errors.APIError):
        code = int(exc.code or 0)
        detail = exc.message or str(exc)
        message = f"{code} {exc.status or ''}".strip() + f": {detail}"
        retry_after = retry_after_of(exc)
        if code == 429:
            return Fault(Fault.QUOTA, message, status=code, retry_after=retry_after)
        if code == 408 or code >= 500:
            return Fault(Fault.TRANSIENT, message, status=code, retry_after=retry_after)
        return Fault(Fault.FATAL, message, status=code, retry_after=None)
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return Fault(Fault.TRANSIENT, f"cannot connect: {exc!r}", retry_after=None)
    if isinstance(exc, httpx.TransportError):
        return Fault(Fault.UNSURE, f"network error: {exc!r}", retry_after=None)
    if isinstance(exc, google.auth.exceptions.RefreshError):
        return Fault(Fault.FATAL, f"cannot obtain a Google access token: {exc}", retry_after=None)
    if isinstance(exc, google.auth.exceptions.TransportError):
        return Fault(
            Fault.TRANSIENT, f"cannot reach Google's token service: {exc}", retry_after=None
        )
    if isinstance(exc, ValueError):
        # The SDK validates before sending (and a garbled answer fails to parse): either way
        # nothing is retried, so nothing can be paid twice.
        return Fault(Fault.FATAL, f"the Google SDK refused the request: {exc}", retry_after=None)
    return None


def retry_after_of(exc: genai_errors.APIError) -> float | None:
    """Seconds to wait from a `Retry-After` header (seconds or HTTP date), else from a
    `google.rpc.RetryInfo` detail in the error body."""
    headers = getattr(getattr(exc, "response", None), "headers", None)
    value = headers.get("retry-after") if headers is not None else None
    if value:
        value = str(value).strip()
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
    details = exc.details if isinstance(exc.details, dict) else {}
    error = details.get("error", details)
    for item in error.get("details") or [] if isinstance(error, dict) else []:
        if isinstance(item, dict) and str(item.get("@type", "")).endswith("RetryInfo"):
            delay = str(item.get("retryDelay", "")).rstrip("s")
            try:
                return max(0.0, float(delay))
            except ValueError:
                return None
    return None


def _clip(text: str) -> str:
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."


@dataclass
class _Run:
    """One attempt at one task: the spec, context and the deadline shared by every step."""

    spec: GenerationSpec
    ctx: RunContext
    entry: ModelEntry
    deadline_at: float

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


class GoogleVeoProvider:
    """The `google_veo` provider (see the module docstring)."""

    name = "google_veo"

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

    # -- capabilities ------------------------------------------------------------------------

    def fit_model(self, entry: ModelEntry) -> ModelEntry:
        """The model's capability table as the configured backends can serve it: 4K exists on
        the Gemini API only, so a server with only Vertex AI credentials does not offer it."""
        if GEMINI in self.pool.backends() or "4K" not in entry.resolutions:
            return entry
        resolutions = [r for r in entry.resolutions if r != "4K"]
        durations = {k: v for k, v in entry.resolution_durations.items() if k != "4K"}
        return entry.model_copy(
            update={"resolutions": resolutions, "resolution_durations": durations}
        )

    @staticmethod
    def serves(cred: Credential, spec: GenerationSpec) -> bool:
        """Whether this credential's backend accepts the request (4K: Gemini API only)."""
        return not (cred.backend == VERTEX and spec.resolution == "4K")

    def upstream_model(self, entry: ModelEntry, backend: str) -> str:
        gemini = str(entry.options.get("upstream_model") or "")
        if backend == VERTEX:
            return str(entry.options.get("vertex_model") or gemini)
        return gemini

    # -- run ---------------------------------------------------------------------------------

    async def run(self, spec: GenerationSpec, ctx: RunContext) -> list[Clip]:
        entry = self.models.get(spec.model)
        if entry is None:
            raise ProviderError(
                ErrorCode.PROVIDER_NOT_CONFIGURED, f'model "{spec.model}" is not configured'
            )
        state = dict(ctx.resume_state or {})
        if state.get("phase") == "submitting":
            raise ProviderError(
                ErrorCode.UPSTREAM_ERROR,
                "an earlier attempt at this task stopped while its request to Google was in "
                f"flight ({state.get('credential')}); Google may have accepted and billed it, "
                "so reelserve does not send it again. Submit a new task to try again.",
            )
        deadline_at = float(state.get("deadline_at") or time.time() + self.settings.deadline)
        run = _Run(spec=spec, ctx=ctx, entry=entry, deadline_at=deadline_at)
        if state.get("operation"):
            cred = self.pool.by_id.get(str(state.get("credential")))
            if cred is None:
                raise ProviderError(
                    ErrorCode.UPSTREAM_ERROR,
                    f"this task's operation was started with credential {state.get('credential')}"
                    ", which is no longer configured on this server; it cannot be polled",
                )
            await self.pool.acquire_pinned(cred, run.check)
            log.info("task %s: resuming operation %s", ctx.task_id, state["operation"])
        else:
            cred, state = await self._submit(run)
        try:
            return await self._finish(run, cred, state)
        finally:
            self.pool.release(cred)

    async def _submit(self, run: _Run) -> tuple[Credential, dict[str, Any]]:
        """Send the request (failing over and retrying as the module docstring says) and
        checkpoint the operation. Returns with a pool slot held on the credential used."""
        spec, ctx = run.spec, run.ctx
        images = await self._images(spec, ctx)
        quota_exhausted: set[str] = set()
        attempt = 0
        last: Fault | None = None
        while True:
            cred = await self.pool.acquire(
                lambda c: self.serves(c, spec), quota_exhausted, run.check
            )
            if cred is None:
                if not quota_exhausted:
                    raise ProviderError(
                        ErrorCode.UPSTREAM_ERROR,
                        f"no configured Google credential can serve {spec.resolution} "
                        "(4K needs a Gemini API key)",
                    )
                # Every credential answered 429: wait as told, then go round again.
                attempt += 1
                if attempt > self.settings.retry_attempts:
                    raise ProviderError(
                        ErrorCode.UPSTREAM_ERROR,
                        "Google's quota is exhausted on every configured credential "
                        f"({_clip(last.message if last else '429')})",
                    )
                await self._backoff(run, attempt, last.retry_after if last else None)
                quota_exhausted.clear()
                continue
            model = self.upstream_model(run.entry, cred.backend)
            base: dict[str, Any] = {
                "credential": cred.id,
                "backend": cred.backend,
                "upstream_model": model,
            }
            base["deadline_at"] = run.deadline_at
            try:
                source, config = self._request(
                    spec, cred.backend, images[cred.backend], ctx.task_id
                )
                # From here until the operation name is checkpointed, a crash leaves this
                # mark, and the next attempt fails the task rather than submit twice.
                await ctx.checkpoint({**base, "phase": "submitting", "since": time.time()})
            except BaseException:
                self.pool.release(cred)
                raise
            try:
                operation = await cred.client(self.settings).aio.models.generate_videos(
                    model=model, source=source, config=config
                )
            except asyncio.CancelledError:
                self.pool.release(cred)
                raise
            except Exception as exc:
                self.pool.release(cred)
                fault = classify(exc)
                if fault is None or fault.kind == Fault.UNSURE:
                    # The request may have reached Google: the "submitting" mark stays, and
                    # this task fails instead of risking a second, paid submission.
                    reason = fault.message if fault else repr(exc)
                    raise ProviderError(
                        ErrorCode.UPSTREAM_ERROR,
                        f"the request to Google failed midway ({_clip(reason)}); it may have "
                        "been accepted, so reelserve does not send it again. Submit a new "
                        "task to try again.",
                    ) from None
                # Google answered (or the request never left): nothing was accepted.
                await ctx.checkpoint({**base, "phase": "idle"})
                last = fault
                log.warning("task %s: submit on %s: %s", ctx.task_id, cred.id, fault.message)
                if fault.kind == Fault.QUOTA:
                    quota_exhausted.add(cred.id)
                    continue
                if fault.kind == Fault.FATAL:
                    raise ProviderError(
                        ErrorCode.UPSTREAM_ERROR,
                        f"Google rejected the request: {_clip(fault.message)}",
                    ) from None
                attempt += 1
                if attempt > self.settings.retry_attempts:
                    raise ProviderError(
                        ErrorCode.UPSTREAM_ERROR,
                        f"Google kept failing: {_clip(fault.message)}",
                    ) from None
                await self._backoff(run, attempt, fault.retry_after)
                continue
            if not operation.name:
                self.pool.release(cred)
                raise ProviderError(
                    ErrorCode.UPSTREAM_ERROR, "Google returned an operation without a name"
                )
            state: dict[str, Any] = {**base, "phase": "polling", "operation": operation.name}
            state["submitted_at"] = time.time()
            try:
                await ctx.checkpoint(state)
            except BaseException:
                self.pool.release(cred)
                raise
            log.info("task %s: operation %s on %s", ctx.task_id, operation.name, cred.id)
            ctx.report_progress(0.05)
            return cred, state

    def _request(
        self, spec: GenerationSpec, backend: str, images: dict[str, tuple[bytes, str]], task: str
    ) -> tuple[types.GenerateVideosSource, types.GenerateVideosConfig]:
        """The SDK's request for a spec: every seed field under the upstream's name."""
        first = images.get("first")
        last = images.get("last")
        source = types.GenerateVideosSource(
            prompt=spec.prompt,
            image=types.Image(image_bytes=first[0], mime_type=first[1]) if first else None,
        )
        config = types.GenerateVideosConfig(
            number_of_videos=spec.sample_count,
            duration_seconds=spec.duration,
            aspect_ratio=spec.aspect_ratio,
            resolution=RESOLUTION[spec.resolution],
            person_generation=PERSON_GENERATION[spec.person_generation],
            negative_prompt=spec.negative_prompt,
            enhance_prompt=spec.enhance_prompt,
            last_frame=types.Image(image_bytes=last[0], mime_type=last[1]) if last else None,
        )
        if backend == VERTEX:
            # The Gemini API refuses these three (the SDK raises before sending): reelserve
            # fits the image and drops the audio itself there, and sends no seed.
            config.seed = spec.seed
            config.generate_audio = spec.generate_audio
            if first is not None:
                config.resize_mode = RESIZE_MODE[spec.resize_mode]
            if self.settings.output_gcs_uri:
                config.output_gcs_uri = f"{self.settings.output_gcs_uri.rstrip('/')}/{task}/"
        return source, config

    async def _images(
        self, spec: GenerationSpec, ctx: RunContext
    ) -> dict[str, dict[str, tuple[bytes, str]]]:
        """The input images per backend: Vertex AI gets the original bytes (it fits them
        itself, as `resizeMode` says); the Gemini API, which takes no `resizeMode`, gets the
        frame reelserve already padded or cropped to the output size, as PNG."""
        out: dict[str, dict[str, tuple[bytes, str]]] = {GEMINI: {}, VERTEX: {}}
        if spec.first_frame_image is None:
            return out
        need_png = GEMINI in self.pool.backends()
        for name, raw, fitted in (
            ("first", ctx.images.first_bytes, ctx.images.first),
            ("last", ctx.images.last_bytes, ctx.images.last),
        ):
            png = await asyncio.to_thread(_png, fitted) if need_png and fitted is not None else None
            gemini_image = png if png is not None else raw
            vertex_image = raw if raw is not None else png
            if gemini_image is not None:
                out[GEMINI][name] = gemini_image
            if vertex_image is not None:
                out[VERTEX][name] = vertex_image
        return out

    # -- poll + download ---------------------------------------------------------------------

    async def _finish(self, run: _Run, cred: Credential, state: dict[str, Any]) -> list[Clip]:
        operation = await self._poll(run, cred, str(state["operation"]))
        spec = run.spec
        if operation.error:
            error = operation.error
            message = str(error.get("message") or error)
            code = (
                ErrorCode.CONTENT_FILTERED
                if any(w in message.lower() for w in SAFETY_WORDS)
                else ErrorCode.UPSTREAM_ERROR
            )
            raise ProviderError(code, f"Google could not generate the video: {_clip(message)}")
        response = operation.response or operation.result
        videos = [v.video for v in (response.generated_videos or []) if v.video] if response else []
        filtered = (response.rai_media_filtered_count or 0) if response else 0
        reasons = (response.rai_media_filtered_reasons or []) if response else []
        if not videos:
            if filtered or reasons:
                why = "; ".join(reasons) or f"{filtered} video(s) removed"
                raise ProviderError(
                    ErrorCode.CONTENT_FILTERED,
                    f"Google's safety filters removed the video: {_clip(why)}",
                )
            raise ProviderError(ErrorCode.UPSTREAM_ERROR, "Google finished without any video")
        if filtered:
            log.warning(
                "task %s: Google filtered %d of %d videos: %s",
                run.ctx.task_id,
                filtered,
                spec.sample_count,
                "; ".join(reasons),
            )
        clips: list[Clip] = []
        for index, video in enumerate(videos):
            run.ctx.check_cancelled()
            path = run.ctx.workdir / f"sample_{index}.mp4"
            await self._download(run, cred, video, path)
            await asyncio.to_thread(_check_video, path, spec.generate_audio)
            seed = spec.seed if cred.backend == VERTEX else None
            clips.append(Clip(path=path, seed=seed))
            run.ctx.report_progress(0.9 + 0.1 * (index + 1) / len(videos))
        return clips

    async def _poll(self, run: _Run, cred: Credential, name: str) -> types.GenerateVideosOperation:
        """Poll until done, with backoff and jitter; transient failures are retried."""
        client = cred.client(self.settings)
        operation = types.GenerateVideosOperation.model_validate({"name": name})
        interval = self.settings.poll_interval
        started = time.monotonic()
        while True:
            # The deadline is checked after each answer, not before: an operation that finished
            # meanwhile (a resumed attempt after a long outage) is still collected.
            operation = await self._retrying(
                run,
                functools.partial(client.aio.operations.get, operation),
                refused=f"Google refused to report on operation {name}",
                failing="polling Google",
                within_deadline=True,
            )
            if operation.done:
                run.ctx.report_progress(0.9)
                return operation
            elapsed = time.monotonic() - started
            expected = max(1.0, float(run.entry.estimated_time))
            run.ctx.report_progress(0.05 + 0.85 * (1 - math.exp(-elapsed / expected)))
            run.check_deadline()
            jitter = self.settings.poll_jitter
            await self._sleep(run, interval * random.uniform(1 - jitter, 1 + jitter))
            interval = min(self.settings.poll_max_interval, interval * self.settings.poll_backoff)

    async def _download(self, run: _Run, cred: Credential, video: types.Video, path: Path) -> None:
        """One video into `path`, retrying transient failures (downloads are idempotent)."""
        if video.video_bytes:
            await asyncio.to_thread(path.write_bytes, video.video_bytes)
            return
        uri = video.uri or ""

        async def fetch() -> None:
            if uri.startswith("gs://"):
                await self._download_gcs(cred, uri, path)
            elif cred.backend == GEMINI and (file_name := _gemini_file(uri)):
                async with _AsyncFile(path) as sink:
                    await cred.client(self.settings).aio.files.download(
                        file=file_name, destination=sink
                    )
            else:
                raise ProviderError(
                    ErrorCode.UPSTREAM_ERROR,
                    f"Google returned a video without bytes or a usable URI ({uri!r})",
                )

        # No deadline here: the video is made (and paid for) already.
        await self._retrying(
            run,
            fetch,
            refused="downloading the video from Google failed",
            failing="downloading the video",
        )

    async def _download_gcs(self, cred: Credential, uri: str, path: Path) -> None:
        """A `gs://bucket/object` result (Vertex AI with `output_gcs_uri`), through the Cloud
        Storage JSON API with the same credentials."""
        parts = urlsplit(uri)
        bucket, obj = parts.netloc, parts.path.lstrip("/")
        token = await asyncio.to_thread(_access_token, cred.google_credentials)
        base = self.settings.storage_base_url.rstrip("/")
        url = f"{base}/download/storage/v1/b/{quote(bucket, safe='')}/o/{quote(obj, safe='')}"
        timeout = httpx.Timeout(self.settings.request_timeout)
        async with (
            httpx.AsyncClient(timeout=timeout, follow_redirects=True) as http,
            http.stream(
                "GET", url, params={"alt": "media"}, headers={"Authorization": f"Bearer {token}"}
            ) as response,
        ):
            if response.status_code != 200:
                body = (await response.aread())[:2000]
                raise genai_errors.APIError(
                    response.status_code, _json_or_text(body), response=response
                )
            async with _AsyncFile(path) as sink:
                async for chunk in response.aiter_bytes(1024 * 1024):
                    await sink.write(chunk)

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
        many (`failing` ... kept failing) fail the task with Google's reason."""
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
        upstream's Retry-After asks when it says."""
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
        """What Google charges for this task, from `google.prices` (per second of video; the
        Gemini API always generates audio, so it is always charged with audio)."""
        state = state or {}
        model = str(state.get("upstream_model") or "")
        backend = str(state.get("backend") or "")
        price = self.settings.prices.get(model)
        with_audio = backend == GEMINI or spec.generate_audio
        rate = 0.0 if price is None else (price.video_audio if with_audio else price.video)
        return Usage(
            cost=round(rate * spec.duration * videos, 6),
            currency=self.settings.currency,
            credential=str(state.get("credential")) if state.get("credential") else None,
        )


def _gemini_file(uri: str) -> str | None:
    """`files/<id>` of a Gemini API video URI (`.../v1beta/files/<id>:download?alt=media`).

    The SDK derives the same name from `https://` URIs only; taking it here keeps downloads
    working through an `http://` proxy or base URL as well."""
    match = re.search(r"/files/([a-z0-9]+)", uri)
    return f"files/{match.group(1)}" if match else None


def _png(frame: Any) -> tuple[bytes, str]:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue(), "image/png"


def _access_token(credentials: Any) -> str:
    """A valid OAuth token of google-auth credentials, refreshed if needed (blocking)."""
    import google.auth.transport.requests

    if credentials is None:
        raise ProviderError(ErrorCode.UPSTREAM_ERROR, "no Google credentials for Cloud Storage")
    if not credentials.valid:
        credentials.refresh(google.auth.transport.requests.Request())
    return str(credentials.token)


def _json_or_text(body: bytes) -> Any:
    import json

    try:
        return json.loads(body)
    except ValueError:
        return {"error": {"message": body.decode("utf-8", "replace")}}


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


class _AsyncFile(io.IOBase):
    """A file written from the event loop without blocking it: every write goes to a thread."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._file: Any = None

    async def __aenter__(self) -> _AsyncFile:
        self._file = await asyncio.to_thread(self.path.open, "wb")
        return self

    async def write(self, chunk: bytes) -> int:
        return int(await asyncio.to_thread(self._file.write, chunk))

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self._file.close)
