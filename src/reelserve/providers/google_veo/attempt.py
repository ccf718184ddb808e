"""One attempt at one Veo task: what all its upstream operations share.

The checkpoint (`state["ops"]`: one entry per operation, saved whole and durably), the task's
progress (the mean over its samples), cancellation and the task's deadline, and the waiting
between calls (backoff with jitter, or as long as Google asks; each wait is an entry in the
worker's due-time heap that a cancellation ends at once, never past the deadline; `retrying` for
the calls that may simply be sent again). `Done` and `Failed` are what one operation ends with.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from reelserve.domain.models import ModelEntry
from reelserve.domain.spec import GenerationSpec
from reelserve.domain.task import ErrorCode
from reelserve.providers.base import Clip, ProviderError, RunContext
from reelserve.providers.google_veo.client import Fault, GoogleClient, classify, clip
from reelserve.providers.google_veo.credentials import CredentialPool
from reelserve.settings.google import GoogleSettings

log = logging.getLogger("reelserve.google_veo")
R = TypeVar("R")


@dataclass
class Attempt:
    """One attempt at one task: the task, its checkpoint and deadline, and the provider's
    settings, credentials and client that every operation of it uses."""

    spec: GenerationSpec
    ctx: RunContext
    entry: ModelEntry
    state: dict[str, Any]
    deadline_at: float
    settings: GoogleSettings
    pool: CredentialPool
    client: GoogleClient
    fractions: dict[int, float] = field(default_factory=dict)
    images: dict[str, dict[str, tuple[bytes, str]]] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def ops(self) -> list[dict[str, Any]]:
        ops: list[dict[str, Any]] = self.state.setdefault("ops", [])
        return ops

    def nothing_created(self) -> bool:
        """No operation of this task exists or may exist at Google (none created, none whose
        request is in flight): another route could still serve the task without paying
        twice."""
        return not any(op.get("operation") or op.get("phase") == "submitting" for op in self.ops)

    def failover(self) -> bool:
        """A failure now may move the task to the model's next route (`ProviderError.failover`):
        there is one, and nothing of this task exists at Google."""
        return self.ctx.can_fail_over and self.nothing_created()

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

    # -- waiting -----------------------------------------------------------------------------

    async def retrying(
        self,
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
            self.ctx.check_cancelled()
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
                        ErrorCode.UPSTREAM_ERROR, f"{refused}: {clip(fault.message)}"
                    ) from None
                failures += 1
                log.warning("%s failed (%d): %s", failing, failures, fault.message)
                if within_deadline:
                    self.check_deadline()
                if failures > self.settings.retry_attempts:
                    raise ProviderError(
                        ErrorCode.UPSTREAM_ERROR, f"{failing} kept failing: {clip(fault.message)}"
                    ) from None
                await self.backoff(failures, fault.retry_after)

    async def backoff(self, attempt: int, retry_after: float | None) -> None:
        """Wait before retry `attempt` (1-based): exponential with jitter, or as long as the
        upstream asks (Retry-After, RetryInfo) when it says."""
        s = self.settings
        delay = min(s.retry_max_delay, s.retry_initial_delay * 2 ** (attempt - 1))
        delay *= random.uniform(1, 1 + s.poll_jitter)
        if retry_after is not None:
            delay = retry_after
        await self.sleep(delay)

    async def sleep(self, seconds: float, until: asyncio.Future[Any] | None = None) -> None:
        """Wait (`RunContext.sleep`: one entry in the worker's timer heap, ended at once by a
        cancellation), or until `until` is done; never past the task's deadline (the caller
        then decides what the deadline means at its step)."""
        left = max(0.0, self.deadline_at - time.time())
        await self.ctx.sleep(min(max(0.0, seconds), left), until)

    async def wait_in_time(self, seconds: float, until: asyncio.Future[Any] | None = None) -> None:
        """`sleep`, then `check`: a wait (for a slot, a turn) that ends with a `timeout` error
        once the task's deadline has passed, instead of coming back at once, again and again."""
        await self.sleep(seconds, until)
        self.check()


@dataclass
class Done:
    """What one finished operation gave: its videos, and the samples Google withheld."""

    op: dict[str, Any]
    clips: list[Clip]
    filtered: int  # removed by the safety filters
    reasons: list[str]
    missing: int = 0  # neither delivered nor reported filtered


@dataclass
class Failed:
    """One operation that gave nothing, and why."""

    op: dict[str, Any]
    error: ProviderError


def current_state(state: dict[str, Any] | None, spec: GenerationSpec) -> dict[str, Any]:
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
