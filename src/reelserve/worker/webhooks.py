"""Webhook delivery: a lane of every worker's claim loop (`worker/loop.py`), beside its tasks.

It claims due deliveries from the store (`store/webhooks.py`) with a lease, POSTs the task's final
view to the target, signed the Standard Webhooks way, and records every attempt:

* Signature: `webhook-signature: v1,<base64 HMAC-SHA256>` of `{id}.{timestamp}.{body}` with the
  API key's `whsec_` secret; `webhook-id` is the delivery's id, the same on every retry;
  `webhook-timestamp` is the Unix time of this attempt.
* Body: exactly what `GET /v1/tasks/{id}` answers for the finished task, frozen at the first
  attempt so every retry sends the same bytes.
* Addresses: checked again at every attempt with the SSRF guard the image fetcher uses too
  (`net.guard`): resolved by us, every address public unless the operator allowed it, and the
  connection made to the checked address (no DNS rebinding), no proxies, no redirects followed. A
  refused address is recorded and never retried; a failed lookup is retried like any failure.
* Retries: a non-2xx answer, a timeout or a connection failure is retried after each delay of
  `webhook_retry_schedule` in turn (randomised by +-20%), then the delivery is given up (`failed`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import logging
import random
import secrets
import time
from dataclasses import dataclass

import httpx

from reelserve import __version__
from reelserve.domain import wire
from reelserve.net.guard import (
    AddressRefused,
    FetchPolicy,
    OutboundError,
    Target,
    check_url,
    parse_http_url,
)
from reelserve.net.transport import pinned_request
from reelserve.store.webhooks import (
    AttemptOutcome,
    Delivery,
    DeliveryState,
    SecretUnavailable,
    secret_bytes,
)
from reelserve.worker.loop import Claimed, Lane
from reelserve.worker.parts import WorkerParts

log = logging.getLogger("reelserve.webhooks")

JITTER = 0.2
USER_AGENT = f"reelserve/{__version__} (webhooks)"
MAX_ERROR_CHARS = 500


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks `webhook-signature` value for one attempt."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    mac = hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def retry_delay(schedule: list[float], failures: int) -> float | None:
    """Seconds before the next attempt after `failures` failed ones; None once the schedule is
    spent. Randomised by +-JITTER, so receivers coming back up are not hit all at once."""
    if failures > len(schedule):
        return None
    return schedule[failures - 1] * random.uniform(1 - JITTER, 1 + JITTER)


@dataclass(frozen=True)
class AttemptResult:
    outcome: AttemptOutcome
    status_code: int | None = None
    error: str | None = None


class WebhookDeliverer:
    """Claims due deliveries (the `webhooks` lane of the worker's claim loop) and makes one
    attempt at each."""

    LANE = "webhooks"

    def __init__(self, parts: WorkerParts, *, name: str) -> None:
        self.parts = parts
        self.settings = parts.settings
        self.name = name

    @property
    def lease_seconds(self) -> float:
        """Long enough for one whole attempt (DNS, connect, send, answer) and its bookkeeping."""
        return self.settings.webhook_timeout + self.settings.lease_seconds

    def lane(self) -> Lane:
        """`webhook_concurrency` attempts at once. On stop, attempts in flight may finish (each
        is bounded by the timeout); a cancelled one hands its lease back, so another worker
        retries it at once."""
        return Lane(
            self.LANE,
            bound=self.settings.webhook_concurrency,
            claim=self.claim,
            grace=self.settings.webhook_timeout + 1,
            cancel_wait=5,
        )

    async def claim(self, room: int) -> Claimed:
        """One due delivery, leased to this worker, and the attempt to run; none if none is
        due (a cheap read first, so an idle worker writes nothing)."""
        store = self.parts.webhooks
        if room < 1 or not await store.has_due():
            return []
        token = f"{self.name}:{secrets.token_hex(4)}"
        delivery = await store.claim(token, lease_seconds=self.lease_seconds)
        if delivery is None:
            return []
        return [(token, self._deliver(delivery, token))]

    async def _deliver(self, delivery: Delivery, token: str) -> None:
        store = self.parts.webhooks
        try:
            if delivery.payload is None:
                prepared = await self._prepare(delivery, token)
                if prepared is None:
                    return
                delivery = prepared
            assert delivery.payload is not None
            started = time.time()
            clock = time.monotonic()
            result = await self.attempt(delivery, delivery.payload.encode())
            duration = time.monotonic() - clock
            state, next_at = self._next_state(delivery, result)
            recorded = await store.record_attempt(
                delivery,
                token,
                started_at=started,
                duration=duration,
                status_code=result.status_code,
                error=result.error,
                outcome=result.outcome,
                state=state,
                next_attempt_at=next_at,
            )
            log.info(
                "webhook %s for %s attempt %d: %s%s",
                delivery.id,
                delivery.task_id,
                delivery.attempts + 1,
                result.status_code or result.error,
                "" if recorded else " (lease lost; not recorded)",
            )
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(store.release(delivery.id, token))
            raise
        except Exception:
            log.exception("webhook %s: delivery failed with an internal error", delivery.id)
            with contextlib.suppress(Exception):
                await store.release(delivery.id, token)

    async def _prepare(self, delivery: Delivery, token: str) -> Delivery | None:
        """Build the body from the finished task (first attempt) and freeze it."""
        task = await self.parts.queue.get(delivery.task_id)
        if task is None:  # deleted by its owner before the first attempt
            await self.parts.webhooks.drop(delivery.id, token)
            return None
        view = await self.parts.render_task(task, delivery.base_url)
        payload = wire.envelope(view).decode()  # the bytes GET /v1/tasks/{id} answers
        event = f"task.{task.status.value}"
        if not await self.parts.webhooks.save_payload(delivery.id, token, event, payload):
            return None  # the lease was lost meanwhile
        return dataclasses.replace(
            delivery, payload=payload, event=event, state=DeliveryState.PENDING
        )

    def _next_state(
        self, delivery: Delivery, result: AttemptResult
    ) -> tuple[DeliveryState, float | None]:
        if result.outcome is AttemptOutcome.DELIVERED:
            return DeliveryState.DELIVERED, None
        if result.outcome is AttemptOutcome.REFUSED:
            return DeliveryState.REFUSED, None
        delay = retry_delay(self.settings.webhook_retry_schedule, delivery.attempts + 1)
        if delay is None:
            return DeliveryState.FAILED, None
        return DeliveryState.PENDING, time.time() + delay

    async def attempt(self, delivery: Delivery, body: bytes) -> AttemptResult:
        """One signed POST of `body`, under `webhook_timeout` in all (DNS included)."""
        try:
            secret = await self.parts.webhooks.secret(delivery.api_key_id)
        except SecretUnavailable as exc:
            return AttemptResult(AttemptOutcome.FAILED, error=str(exc))
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": delivery.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, delivery.id, timestamp, body),
        }
        policy = self.parts.webhook_policy
        timeout = self.settings.webhook_timeout
        try:
            async with asyncio.timeout(timeout):
                url = parse_http_url(delivery.url, "webhook_url", policy, redirect=False)
                target = await check_url(url, "webhook_url", policy, hop=0)
                status = await _post(target, body, headers, policy)
        except TimeoutError:
            return AttemptResult(AttemptOutcome.FAILED, error=f"timed out after {timeout:g} s")
        except AddressRefused as exc:
            return AttemptResult(AttemptOutcome.REFUSED, error=exc.message)
        except OutboundError as exc:
            return AttemptResult(AttemptOutcome.FAILED, error=exc.message)
        except httpx.HTTPError as exc:
            return AttemptResult(AttemptOutcome.FAILED, error=_describe(exc))
        if 200 <= status < 300:
            return AttemptResult(AttemptOutcome.DELIVERED, status_code=status)
        return AttemptResult(AttemptOutcome.FAILED, status_code=status)


async def _post(target: Target, body: bytes, headers: dict[str, str], policy: FetchPolicy) -> int:
    """POST to the target's checked addresses in turn (the first that accepts a connection);
    the answer's status code. Redirects are answers like any other: not followed."""
    failure: httpx.HTTPError | None = None
    for address in target.addresses:
        try:
            async with pinned_request(
                "POST", target, address, policy, headers=headers, content=body
            ) as response:
                return response.status_code
        except httpx.ConnectError as exc:
            failure = exc
            continue
    raise failure or httpx.ConnectError("no address to connect to")


def _describe(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    text = str(exc).strip()
    if isinstance(exc, httpx.ConnectError):
        if "certificate" in text.lower():
            return "could not connect: the TLS certificate could not be verified"
        return "could not connect"
    detail = f": {text}" if text else ""
    return f"{type(exc).__name__}{detail}"[:MAX_ERROR_CHARS]
