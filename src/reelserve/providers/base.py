"""The provider interface.

A provider turns a validated `GenerationSpec` into MP4 files. The worker owns everything around
it (leases, progress persistence, storage, retries); a provider only renders or calls upstream,
reporting progress and checkpointing what it needs to resume without paying twice.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from reelserve.domain.models import ModelEntry
from reelserve.domain.result import Withheld as Withheld  # re-exported for providers
from reelserve.domain.spec import GenerationSpec
from reelserve.domain.task import ErrorCode

Frame = NDArray[np.uint8]

# "compute": the provider works here, on this host's CPU or GPU (the worker's compute slots);
# "remote": it waits on another service (Veo, relays) and holds one of the remote slots.
ProviderKind = Literal["compute", "remote"]


@dataclass(frozen=True)
class Clip:
    """One finished sample: an H.264 MP4 on local disk (in the attempt's work directory).

    `seed` is the seed that produced this sample, or None where the provider could not apply
    one (the Gemini API takes no seed): the task result then says `"seed": null` rather than
    a number that would not reproduce the video."""

    path: Path
    seed: int | None
    # The person_generation policy the upstream applied, in the seed's words where it has
    # one ("allow_adult", "disallow"; the Gemini API's text-to-video applies "allow_all"), or
    # None where the provider has no such policy.
    person_generation: str | None = None


@dataclass(frozen=True)
class InputImages:
    """The request's images, already fetched, decoded and fitted to the output size (RGB)."""

    first: Frame | None = None
    last: Frame | None = None
    # The fetched, unmodified bytes and their MIME type, for providers that upload them.
    first_bytes: tuple[bytes, str] | None = None
    last_bytes: tuple[bytes, str] | None = None


class TaskCancelled(Exception):
    """Raised inside a provider when the client cancelled the task; the worker records it."""


@dataclass(frozen=True)
class Usage:
    """What a finished task cost upstream, for usage accounting (`GET /v1/usage`).

    A provider that pays an upstream overrides `Provider.usage`; the default
    (`ProviderBase`) costs 0.
    """

    cost: float = 0.0
    currency: str = "USD"
    credential: str | None = None


class ProviderError(Exception):
    """A failure with a stable error code. `retryable` failures are tried again by the worker.

    `failover`: nothing was created or paid upstream for this task (a quota answered 429 at
    submit, the upstream is down, or it refused the request as one it cannot serve), so the
    model's next route may serve it (docs/routing.md). A provider sets it only where
    `ctx.can_fail_over` is true and no upstream operation of the task exists; elsewhere the
    task fails with this error as any other."""

    def __init__(
        self,
        code: ErrorCode | str,
        message: str,
        *,
        retryable: bool = False,
        failover: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = str(code)
        self.message = message
        self.retryable = retryable
        self.failover = failover


class RunContext(Protocol):
    """What the worker offers a running provider."""

    task_id: str
    workdir: Path
    resume_state: dict[str, Any] | None
    images: InputImages
    # The model has a route after this task's (docs/routing.md): a failure before anything was
    # created upstream may raise `ProviderError(..., failover=True)` instead of waiting (a
    # quota) or failing, and the task moves on to that route.
    can_fail_over: bool

    def report_progress(self, fraction: float) -> None:
        """Progress in [0, 1]. Thread-safe and cheap: the worker persists it in batches."""

    def check_cancelled(self) -> None:
        """Raise `TaskCancelled` if the client asked to cancel. Thread-safe."""

    def report_withheld(self, withheld: list[Withheld]) -> None:
        """Samples the upstream did not deliver (the result says so); the rest complete."""

    @property
    def cancel_requested(self) -> bool: ...

    async def sleep(self, seconds: float, until: asyncio.Future[Any] | None = None) -> None:
        """Wait `seconds`, or until `until` is done (a slot handed over, say), holding nothing:
        remote providers between polls. Cheap with thousands waiting: the worker keeps one
        timer for all of them. A stop (cancel, shutdown, lease lost) ends the wait at once,
        raising as `check_cancelled` does."""

    async def checkpoint(self, state: dict[str, Any]) -> None:
        """Persist provider state durably before returning (e.g. an upstream operation id)."""


class Capabilities(Protocol):
    """What the API asks of a provider at submit and for `/v1/models`: the submit check and the
    model as its configured backends can serve it. Every provider has both (`ProviderBase`:
    admit all, show the model as declared); remote providers such as Veo narrow them, and an
    API host that runs no Veo poller has `VeoCapabilities` alone."""

    def admit(self, spec: GenerationSpec) -> None:
        """Raise `InvalidRequest` (a 400 naming the field) unless `spec` can be served."""

    def fit_model(self, entry: ModelEntry) -> ModelEntry:
        """`entry` narrowed to what the configured backends serve, as `/v1/models` shows it."""
        ...


class Provider(Capabilities, Protocol):
    """What the worker and the API see of a provider. `ProviderBase` gives the defaults of
    all but `name` and `run`."""

    name: str

    @property
    def kind(self) -> ProviderKind:
        """Which of the worker's bounds its tasks count against."""
        ...

    async def run(self, spec: GenerationSpec, ctx: RunContext) -> list[Clip]:
        """Produce `spec.sample_count` clips, or raise `ProviderError` / `TaskCancelled`."""
        ...

    def usage(self, spec: GenerationSpec, state: dict[str, Any] | None, videos: int) -> Usage:
        """What the finished task cost upstream; `state` is the provider's last checkpoint."""
        ...


class ProviderBase:
    """The defaults of a provider: it computes here, costs nothing, admits every request its
    model entry allows and shows that entry as declared. A provider inherits this and
    overrides what differs."""

    kind: ProviderKind = "compute"

    def usage(self, spec: GenerationSpec, state: dict[str, Any] | None, videos: int) -> Usage:
        return Usage()

    def admit(self, spec: GenerationSpec) -> None:
        return None

    def fit_model(self, entry: ModelEntry) -> ModelEntry:
        return entry
