"""Google credentials for the Veo provider: one `genai.Client` each, shared fairly.

A credential is one Gemini API key or one Vertex AI project/location with its Google
credentials. `CredentialPool` hands them out round-robin, at most `max_concurrency` tasks on each
at once (counted within this worker process: several worker processes each apply the limit on
their own), skipping the ones a caller excludes (quota exhausted) or whose backend cannot serve
the request. A task keeps the credential it submitted with until it ends, so that polling and
downloading use the same key or project (an operation is only visible to its own project).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google import genai
from google.genai import types

from reelserve.settings_google import GeminiKey, GoogleSettings, VertexCredential

GEMINI = "gemini"
VERTEX = "vertex"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


class CredentialError(Exception):
    """A credential cannot be used (unreadable service-account file, no default credentials)."""


@dataclass
class Credential:
    """One way of calling Veo, and the tasks using it right now."""

    id: str
    backend: str  # GEMINI | VERTEX
    max_concurrency: int
    api_key: str | None = None
    project: str | None = None
    location: str | None = None
    google_credentials: Any = None  # google.auth.credentials.Credentials (Vertex)
    in_flight: int = 0
    _client: genai.Client | None = field(default=None, repr=False)

    def describe(self) -> str:
        if self.backend == VERTEX:
            return f"Vertex AI project {self.project} ({self.location}), credential {self.id}"
        return f"Gemini API key {self.id}"

    def client(self, settings: GoogleSettings) -> genai.Client:
        """The SDK client of this credential, made on first use and kept."""
        if self._client is None:
            timeout_ms = int(settings.request_timeout * 1000)
            if self.backend == GEMINI:
                options = types.HttpOptions(
                    base_url=settings.base_url,
                    api_version=settings.gemini_api_version,
                    timeout=timeout_ms,
                )
                self._client = genai.Client(
                    vertexai=False, api_key=self.api_key, http_options=options
                )
            else:
                options = types.HttpOptions(
                    base_url=settings.vertex_base_url,
                    api_version=settings.vertex_api_version,
                    timeout=timeout_ms,
                )
                self._client = genai.Client(
                    vertexai=True,
                    project=self.project,
                    location=self.location,
                    credentials=self.google_credentials,
                    http_options=options,
                )
        return self._client


def _gemini_id(entry: GeminiKey) -> str:
    if entry.id:
        return entry.id
    digest = hashlib.sha256(entry.key.get_secret_value().encode()).hexdigest()[:10]
    return f"gemini:{digest}"


def _vertex_google_credentials(entry: VertexCredential) -> Any:
    """google-auth credentials for a Vertex entry: a fixed access token, a service-account key
    file, or (neither given) Application Default Credentials."""
    import google.auth
    import google.auth.exceptions
    import google.oauth2.credentials
    import google.oauth2.service_account

    if entry.access_token is not None:
        return google.oauth2.credentials.Credentials(  # type: ignore[no-untyped-call]
            token=entry.access_token.get_secret_value()
        )
    if entry.service_account_file is not None:
        path = entry.service_account_file.expanduser()
        try:
            sa = google.oauth2.service_account.Credentials
            return sa.from_service_account_file(  # type: ignore[no-untyped-call]
                str(path), scopes=[CLOUD_PLATFORM_SCOPE]
            )
        except (OSError, ValueError) as exc:
            raise CredentialError(
                f"google: cannot use the service-account file {path} for Vertex project "
                f"{entry.project}: {exc}"
            ) from None
    try:
        creds, _project = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
    except google.auth.exceptions.DefaultCredentialsError as exc:
        raise CredentialError(
            f"google: no credentials for Vertex project {entry.project}: set "
            f"service_account_file or access_token, or configure Application Default "
            f"Credentials ({exc})"
        ) from None
    return creds


def build_credentials(settings: GoogleSettings) -> list[Credential]:
    """Every configured credential, Gemini API keys first. Raises `CredentialError` for one
    that cannot be used, so a misconfigured server says so when it starts."""
    creds: list[Credential] = []
    for key in settings.gemini_keys():
        creds.append(
            Credential(
                id=_gemini_id(key),
                backend=GEMINI,
                max_concurrency=key.max_concurrency or settings.max_concurrency,
                api_key=key.key.get_secret_value(),
            )
        )
    for entry in settings.vertex_credentials():
        creds.append(
            Credential(
                id=entry.id or f"vertex:{entry.project}/{entry.location}",
                backend=VERTEX,
                max_concurrency=entry.max_concurrency or settings.max_concurrency,
                project=entry.project,
                location=entry.location,
                google_credentials=_vertex_google_credentials(entry),
            )
        )
    seen: set[str] = set()
    for cred in creds:
        if cred.id in seen:
            raise CredentialError(
                f"google: two credentials are named {cred.id!r}; give them distinct ids"
            )
        seen.add(cred.id)
    return creds


class CredentialPool:
    """Round-robin over credentials with a per-credential concurrency limit."""

    WAIT_SLICE = 0.25  # seconds between checks of cancellation while every slot is busy

    def __init__(self, credentials: list[Credential]) -> None:
        self.credentials = credentials
        self.by_id = {c.id: c for c in credentials}
        self._turn = 0
        self._freed: asyncio.Event | None = None

    def _event(self) -> asyncio.Event:
        if self._freed is None:
            self._freed = asyncio.Event()
        return self._freed

    def backends(self) -> set[str]:
        return {c.backend for c in self.credentials}

    def candidates(
        self, usable: Callable[[Credential], bool], exclude: set[str]
    ) -> list[Credential]:
        return [c for c in self.credentials if usable(c) and c.id not in exclude]

    async def acquire(
        self,
        usable: Callable[[Credential], bool],
        exclude: set[str],
        check: Callable[[], None],
    ) -> Credential | None:
        """The next usable credential not in `exclude` with a free slot, waiting for one while
        all are busy (calling `check()` meanwhile, which raises to stop waiting). None when no
        credential is usable at all."""
        freed = self._event()
        while True:
            check()
            choices = self.candidates(usable, exclude)
            if not choices:
                return None
            freed.clear()
            count = len(self.credentials)
            for step in range(count):
                index = (self._turn + step) % count
                cred = self.credentials[index]
                if cred in choices and cred.in_flight < cred.max_concurrency:
                    cred.in_flight += 1
                    self._turn = (index + 1) % count
                    return cred
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(freed.wait(), self.WAIT_SLICE)

    async def acquire_pinned(self, cred: Credential, check: Callable[[], None]) -> None:
        """A slot on this very credential (a resumed task polls with the one it used)."""
        freed = self._event()
        while True:
            check()
            freed.clear()
            if cred.in_flight < cred.max_concurrency:
                cred.in_flight += 1
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(freed.wait(), self.WAIT_SLICE)

    def release(self, cred: Credential) -> None:
        cred.in_flight = max(0, cred.in_flight - 1)
        self._event().set()
