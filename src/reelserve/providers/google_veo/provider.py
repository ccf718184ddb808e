"""Google Veo 3.1 over Google's documented REST API, on the Gemini API and on Vertex AI.

The REST client is `client.py` and every byte sent to Google is built in `wire.py`; what each
backend accepts is `rules.py`. The submit check refuses a request no configured credential can
serve; here, a credential is only ever chosen among those whose backend serves the request
exactly as asked.

One task is one or more upstream operations. A backend gives at most `samples_per_request`
videos per request (the Gemini API one), so `sample_count` fans out into as many operations as
needed, each checkpointed on its own (`attempt.py`):

1. **Submit** (`submit.py`): each request is sent once, failing over between credentials on
   429 and retrying what certainly did not reach Google.
2. **Poll** each operation with backoff and jitter until it is done, the task's deadline passes
   (`timeout`) or the client cancels (`collect.py`). A resumed attempt (another worker, after a
   crash) polls the checkpointed operations with their own credentials and never submits them
   again. An entry found in `phase: submitting` cannot be known to have reached Google, so it
   is not sent again either: that sample is reported missing rather than risk paying twice.
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
import copy
import logging
import time
from typing import Any

from reelserve.domain.models import ModelEntry
from reelserve.domain.spec import GenerationSpec
from reelserve.domain.task import ErrorCode
from reelserve.providers.base import (
    Clip,
    ProviderBase,
    ProviderError,
    RunContext,
    Usage,
    Withheld,
)
from reelserve.providers.google_veo import rules
from reelserve.providers.google_veo.attempt import Attempt, Done, Failed, current_state
from reelserve.providers.google_veo.capabilities import admit, fit_model
from reelserve.providers.google_veo.client import GoogleClient, clip
from reelserve.providers.google_veo.collect import collect, poll
from reelserve.providers.google_veo.credentials import (
    Credential,
    CredentialError,
    CredentialPool,
    build_credentials,
)
from reelserve.providers.google_veo.rules import GEMINI
from reelserve.providers.google_veo.submit import acquire, submit
from reelserve.settings.google import GoogleSettings

log = logging.getLogger("reelserve.google_veo")


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
        self.client = GoogleClient(settings)

    def view(
        self, name: str, selectors: list[str] | None, models: dict[str, ModelEntry]
    ) -> GoogleVeoProvider:
        """This provider as one route sees it (docs/routing.md): named `name`, over the
        credentials `selectors` names (ids, or gemini / vertex for all of a backend's; None:
        all), and the models as that route declares them. Slots, rate limits and the HTTP
        client stay this provider's: a credential shared by two routes keeps its limits
        across both."""
        pool = self.pool
        if selectors is not None:
            try:
                pool = self.pool.subset(selectors)
            except CredentialError as exc:
                raise ValueError(f"route {name!r}: options.credentials: {exc}") from None
        routed = copy.copy(self)
        routed.name = name
        routed.pool = pool
        routed.models = {**self.models, **models}
        return routed

    # -- capabilities ------------------------------------------------------------------------

    def admit(self, spec: GenerationSpec) -> None:
        """The submit check: a 400 unless some configured credential serves `spec` as asked."""
        admit(spec, self.pool.profiles())

    def fit_model(self, entry: ModelEntry) -> ModelEntry:
        """The model's capability table as the configured backends can serve it."""
        return fit_model(entry, self.pool.profiles())

    # -- run ---------------------------------------------------------------------------------

    async def run(self, spec: GenerationSpec, ctx: RunContext) -> list[Clip]:
        entry = self.models.get(spec.model)
        if entry is None:
            raise ProviderError(
                ErrorCode.PROVIDER_NOT_CONFIGURED, f'model "{spec.model}" is not configured'
            )
        state = current_state(ctx.resume_state, spec)
        deadline_at = float(state.get("deadline_at") or time.time() + self.settings.deadline)
        state["deadline_at"] = deadline_at
        run = Attempt(
            spec=spec,
            ctx=ctx,
            entry=entry,
            state=state,
            deadline_at=deadline_at,
            settings=self.settings,
            pool=self.pool,
            client=self.client,
        )
        jobs: list[asyncio.Task[Done | Failed]] = []
        try:
            for op in run.ops:
                jobs.append(asyncio.create_task(self._operation(run, op, None)))
            remaining = spec.sample_count - sum(int(op["samples"]) for op in run.ops)
            while remaining > 0:
                cred = await acquire(run, 1)
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

    def _outcome(self, run: Attempt, outcomes: list[Done | Failed | BaseException]) -> list[Clip]:
        """The task's clips in sample order, and what Google withheld; raises when none."""
        clips: list[Clip] = []
        withheld: list[Withheld] = []
        errors: list[ProviderError] = []
        filtered = ErrorCode.CONTENT_FILTERED.value
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome  # cancelled, shutting down, lease lost, or a bug
            if isinstance(outcome, Failed):
                errors.append(outcome.error)
                count = int(outcome.op["samples"])
                withheld.append(Withheld(outcome.error.code, count, outcome.error.message))
                continue
            clips.extend(outcome.clips)
            if outcome.filtered:
                why = f": {clip('; '.join(outcome.reasons))}" if outcome.reasons else ""
                message = f"Google's safety filters removed {outcome.filtered} video(s){why}"
                withheld.append(
                    Withheld(filtered, outcome.filtered, message, tuple(outcome.reasons))
                )
            if outcome.missing:
                message = f"Google returned {outcome.missing} video(s) fewer than asked"
                withheld.append(Withheld(ErrorCode.UPSTREAM_ERROR.value, outcome.missing, message))
        if not clips:
            if errors:
                first = errors[0]
                if first.failover and not run.nothing_created():
                    # Another operation of this task exists at Google: it stays on this route.
                    raise ProviderError(first.code, first.message) from None
                raise first
            if withheld and all(w.code == filtered for w in withheld):
                reasons = [r for w in withheld for r in w.reasons]
                why = "; ".join(reasons) or f"{sum(w.count for w in withheld)} video(s) removed"
                raise ProviderError(
                    ErrorCode.CONTENT_FILTERED,
                    f"Google's safety filters removed the video: {clip(why)}",
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

    async def _operation(
        self, run: Attempt, op: dict[str, Any], cred: Credential | None
    ) -> Done | Failed:
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
                run.check()
                await self.pool.acquire_pinned(cred, run.wait_in_time)
                log.info("task %s: resuming operation %s", run.ctx.task_id, op["operation"])
            elif op.get("phase") == "submitting":
                raise ProviderError(
                    ErrorCode.UPSTREAM_ERROR,
                    "an earlier attempt stopped while the request for this sample was in flight "
                    f"({op.get('credential')}); Google may have accepted and billed it, so "
                    "reelserve did not send it again. Submit a new task to try again.",
                )
            else:
                cred = await submit(run, op, cred)
            try:
                response = await poll(run, op, cred)
                return await collect(run, op, cred, response)
            finally:
                self.pool.release(cred)
        except ProviderError as exc:
            return Failed(op, exc)

    # -- usage -------------------------------------------------------------------------------

    def usage(self, spec: GenerationSpec, state: dict[str, Any] | None, videos: int) -> Usage:
        """What Google charges for this task: each operation's delivered videos at its
        backend's price for the model, resolution and audio (`google.prices`, per second)."""
        ops = current_state(state, spec).get("ops") or []
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
