"""Sending one operation's request to Google, exactly once.

Before a request leaves, its checkpoint entry says `phase: submitting` with the credential; as
soon as Google answers with the operation's name, it says `phase: polling`. A 429 fails over to
the next credential (waiting as Google's `RetryInfo` or `Retry-After` says once all are
exhausted, until the task's deadline: a quota is a queue, not a failure); 5xx and network
failures that certainly did not reach Google are retried with backoff; any other 4xx fails that
operation with Google's reason. A failure after the request may have reached Google leaves the
`submitting` mark, and the sample fails rather than risk paying twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from reelserve.domain.spec import GenerationSpec
from reelserve.domain.task import ErrorCode
from reelserve.media.images import ImageInputError, upload_image
from reelserve.providers.base import ProviderError
from reelserve.providers.google_veo import rules
from reelserve.providers.google_veo.attempt import Attempt
from reelserve.providers.google_veo.client import Fault, classify, clip
from reelserve.providers.google_veo.credentials import Credential
from reelserve.providers.google_veo.rules import Backend
from reelserve.providers.google_veo.wire import request_body, upstream_model

log = logging.getLogger("reelserve.google_veo")


def usable(spec: GenerationSpec, samples: int) -> Callable[[Credential], bool]:
    """Whether a credential serves `spec` and gives `samples` videos in one request."""

    def serves(cred: Credential) -> bool:
        profile = cred.profile
        return (
            rules.serves(spec, profile)
            and rules.applied(spec, profile).samples_per_request >= samples
        )

    return serves


async def acquire(run: Attempt, samples: int, exclude: set[str] | None = None) -> Credential:
    """A slot on a credential that serves the spec and gives `samples` per request (none once
    the task is cancelled or past its deadline)."""
    run.check()
    cred = await run.pool.acquire(usable(run.spec, samples), exclude or set(), run.wait_in_time)
    if cred is None:
        refused = rules.refusal(run.spec, run.pool.profiles())
        why = refused[1] if refused else "no configured credential serves it"
        raise ProviderError(ErrorCode.UPSTREAM_ERROR, f"cannot send this task to Google: {why}")
    return cred


async def submit(run: Attempt, op: dict[str, Any], first: Credential | None) -> Credential:
    """Send one operation's request (failing over and retrying as the module docstring says)
    and checkpoint its name. Returns with a pool slot held on the credential used."""
    spec, ctx, pool = run.spec, run.ctx, run.pool
    samples = int(op["samples"])
    exhausted: set[str] = set()
    attempt = 0
    last: Fault | None = None
    quota_waits = 0
    cred = first
    while True:
        if cred is None:
            if exhausted and not pool.candidates(usable(spec, samples), exhausted):
                # Every credential answered 429: Google's per-minute quota. Where the model
                # has a next route, the task moves on to it (nothing was paid); else that is
                # a queue, not a failure: wait as told (RetryInfo), then go round again,
                # until the task's deadline.
                if run.failover():
                    why = clip(last.message if last else "429")
                    raise ProviderError(
                        ErrorCode.UPSTREAM_ERROR,
                        f"Google's quota is exhausted on every credential of this route ({why})",
                        failover=True,
                    )
                quota_waits += 1
                await run.backoff(quota_waits, last.retry_after if last else None)
                if time.time() >= run.deadline_at:
                    why = clip(last.message if last else "429")
                    raise ProviderError(
                        ErrorCode.TIMEOUT,
                        "Google's quota stayed exhausted on every configured credential "
                        f"until this task's deadline ({why})",
                    )
                exhausted.clear()
            cred = await acquire(run, samples, exhausted)
        model = upstream_model(run.entry, cred.backend)
        try:
            if cred.submit_rate is not None:
                await cred.submit_rate.take(run.wait_in_time)
            body = request_body(
                spec,
                cred.profile,
                op,
                await _images(run, cred.backend),
                storage_uri=_storage_uri(run, op),
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
            # From here until the operation name is checkpointed, a crash leaves this mark,
            # and the next attempt does not send this request again.
            await run.save()
            answer = await run.client.submit(cred, model, body, wait=ctx.sleep)
        except asyncio.CancelledError:
            pool.release(cred)
            raise
        except Exception as exc:
            pool.release(cred)
            fault = classify(exc)
            if fault is None and isinstance(exc, ProviderError | ImageInputError):
                raise
            if fault is None or fault.kind == Fault.UNSURE:
                # The request may have reached Google: the "submitting" mark stays, and this
                # sample fails instead of risking a second, paid submission.
                reason = fault.message if fault else repr(exc)
                raise ProviderError(
                    ErrorCode.UPSTREAM_ERROR,
                    f"the request to Google failed midway ({clip(reason)}); it may have "
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
                    f"Google rejected the request: {clip(fault.message)}",
                    failover=run.failover(),
                ) from None
            attempt += 1
            if attempt > run.settings.retry_attempts:
                raise ProviderError(
                    ErrorCode.UPSTREAM_ERROR,
                    f"Google kept failing: {clip(fault.message)}",
                    failover=run.failover(),
                ) from None
            await run.backoff(attempt, fault.retry_after)
            continue
        name = answer.get("name")
        if not isinstance(name, str) or not name:
            pool.release(cred)
            raise ProviderError(
                ErrorCode.UPSTREAM_ERROR, "Google returned an operation without a name"
            )
        op.update(phase="polling", operation=name, submitted_at=time.time())
        try:
            await run.save()
        except BaseException:
            pool.release(cred)
            raise
        log.info("task %s: operation %s on %s", ctx.task_id, name, cred.id)
        run.progress(op, 0.05)
        return cred


def _storage_uri(run: Attempt, op: dict[str, Any]) -> str | None:
    if not run.settings.output_gcs_uri:
        return None
    return f"{run.settings.output_gcs_uri.rstrip('/')}/{run.ctx.task_id}/{op['index']}/"


async def _images(run: Attempt, backend: str) -> dict[str, tuple[bytes, str]]:
    """The input images as this backend takes them, made once per attempt: never larger than
    the output, at most 20 MB, JPEG or PNG. The Gemini API, which takes no `resizeMode`, gets
    them already padded or cropped to the output's aspect ratio; Vertex AI gets them whole and
    fits them itself, as `resizeMode` says."""
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
