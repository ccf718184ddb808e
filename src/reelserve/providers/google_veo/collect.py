"""Waiting for one Veo operation and collecting its videos.

Each operation is polled with backoff and jitter until it is done, the task's deadline passes
(`timeout`) or the client cancels; transient failures are retried. Its videos are then
downloaded once each into the attempt's work directory (inline base64, a Gemini API file, or a
`gs://` object), checked to be readable MP4s, and stripped of their audio track where the
client asked for none (the Gemini API always generates one). What Google's safety filters
removed, and what is simply missing, is counted for the task's result.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import random
import time
from pathlib import Path
from typing import Any

from reelserve.domain.task import ErrorCode
from reelserve.media.remux import UnreadableVideo, drop_audio, stream_kinds
from reelserve.media.threads import in_media_thread
from reelserve.providers.base import Clip, ProviderError
from reelserve.providers.google_veo import rules
from reelserve.providers.google_veo.attempt import Attempt, Done
from reelserve.providers.google_veo.client import clip
from reelserve.providers.google_veo.credentials import Credential
from reelserve.providers.google_veo.rules import GEMINI
from reelserve.providers.google_veo.wire import (
    gemini_file,
    operation_error,
    samples,
    upstream_model,
)


async def poll(run: Attempt, op: dict[str, Any], cred: Credential) -> dict[str, Any]:
    """Poll until done, with backoff and jitter; transient failures are retried. Returns the
    operation's `response`, or raises with its `error`."""
    name = str(op["operation"])
    model = str(op.get("upstream_model") or upstream_model(run.entry, cred.backend))
    s = run.settings
    interval = s.poll_interval
    started = time.monotonic()
    while True:
        # The deadline is checked after each answer, not before: an operation that finished
        # meanwhile (a resumed attempt after a long outage) is still collected.
        answer = await run.retrying(
            lambda: run.client.poll(cred, model, name, wait=run.ctx.sleep),
            refused=f"Google refused to report on operation {name}",
            failing="polling Google",
            within_deadline=True,
        )
        if answer.get("done"):
            run.progress(op, 0.9)
            error = answer.get("error")
            if isinstance(error, dict):
                raise operation_error(error)
            response = answer.get("response")
            return response if isinstance(response, dict) else {}
        elapsed = time.monotonic() - started
        expected = max(1.0, float(run.entry.estimated_time))
        run.progress(op, 0.05 + 0.85 * (1 - math.exp(-elapsed / expected)))
        run.check_deadline()
        jitter = s.poll_jitter
        await run.sleep(interval * random.uniform(1 - jitter, 1 + jitter))
        interval = min(s.poll_max_interval, interval * s.poll_backoff)


async def collect(
    run: Attempt, op: dict[str, Any], cred: Credential, response: dict[str, Any]
) -> Done:
    """Download the videos of a finished operation; record what it delivered."""
    videos, filtered, reasons = samples(response)
    spec = run.spec
    clips: list[Clip] = []
    seed = int(op["seed"]) if op.get("seed_sent") else None
    upstream_person = str(op.get("person_generation") or "")
    person = rules.PERSON_CLIENT.get(upstream_person, upstream_person or None)
    for offset, sample in enumerate(videos[: int(op["samples"])]):
        run.ctx.check_cancelled()
        path = run.ctx.workdir / f"sample_{int(op['index']) + offset}.mp4"
        await _download(run, cred, sample, path)
        await in_media_thread(_check_video, path, spec.generate_audio)
        clips.append(Clip(path=path, seed=seed, person_generation=person))
        run.progress(op, 0.9 + 0.1 * (offset + 1) / len(videos))
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
    return Done(op=op, clips=clips, filtered=filtered, reasons=reasons, missing=missing)


async def _download(run: Attempt, cred: Credential, sample: dict[str, Any], path: Path) -> None:
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
            await cred.request_rate.take(run.ctx.sleep)
        if uri.startswith("gs://"):
            await run.client.download_gcs(cred, uri, path)
        elif cred.backend == GEMINI and (file_id := gemini_file(uri)):
            await run.client.download_gemini(cred, file_id, path)
        else:
            raise ProviderError(
                ErrorCode.UPSTREAM_ERROR,
                f"Google returned a video without bytes or a usable URI ({clip(uri)!r})",
            )

    # No deadline here: the video is made (and paid for) already.
    await run.retrying(
        fetch,
        refused="downloading the video from Google failed",
        failing="downloading the video",
    )


def _check_video(path: Path, keep_audio: bool) -> None:
    """The download is a readable MP4; without `generate_audio`, its audio track is dropped
    (the Gemini API always generates one). Blocking: call in a thread."""
    try:
        has_video, has_audio = stream_kinds(path)
    except UnreadableVideo as exc:
        raise ProviderError(
            ErrorCode.UPSTREAM_ERROR, f"Google returned a file that is not a readable video: {exc}"
        ) from None
    if not has_video:
        raise ProviderError(ErrorCode.UPSTREAM_ERROR, "Google returned a file with no video")
    if has_audio and not keep_audio:
        drop_audio(path)
