"""The `google` settings section: credentials, polling, retries and prices of the Veo provider.

Kept in its own module so `settings/server.py` stays a readable list of top-level options; the
object is nested there as `Settings.google` (environment: `REELSERVE_GOOGLE__<NAME>`, lists and maps
as JSON). docs/providers/google-veo.md explains every field with examples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator


class GeminiKey(BaseModel):
    """One Gemini API key (Google AI Studio)."""

    model_config = ConfigDict(extra="forbid")

    key: SecretStr
    id: str | None = Field(
        None, description="name in usage records and logs; default: gemini: + a key fingerprint"
    )
    max_concurrency: int | None = Field(
        None, ge=1, description="tasks using this key at once; default: google.max_concurrency"
    )
    submits_per_minute: float | None = Field(
        None, gt=0, description="this key's submit rate; default: google.submits_per_minute"
    )
    requests_per_minute: float | None = Field(
        None, gt=0, description="all its requests; default: google.requests_per_minute"
    )
    restricted_region: bool = Field(
        False,
        description="the key is used from the EU, UK, Switzerland or MENA, where the Gemini API "
        "allows only person_generation allow_adult",
    )


class VertexCredential(BaseModel):
    """One Vertex AI project/location and the Google credentials that call it."""

    model_config = ConfigDict(extra="forbid")

    project: str = Field(min_length=1)
    location: str = Field("us-central1", min_length=1)
    id: str | None = Field(None, description="default: vertex:<project>/<location>")
    service_account_file: Path | None = Field(
        None, description="a service-account JSON key; default: Application Default Credentials"
    )
    access_token: SecretStr | None = Field(
        None, description="a fixed OAuth access token (short-lived; for proxies and tests)"
    )
    max_concurrency: int | None = Field(None, ge=1)
    submits_per_minute: float | None = Field(None, gt=0)
    requests_per_minute: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_source(self) -> VertexCredential:
        if self.service_account_file is not None and self.access_token is not None:
            raise ValueError("give service_account_file or access_token, not both")
        return self


class VeoPrice(BaseModel):
    """What one second of generated video costs at one resolution."""

    model_config = ConfigDict(extra="forbid")

    video: float | None = Field(
        None, ge=0, description="per second, video only (Vertex AI with generate_audio false)"
    )
    video_audio: float = Field(ge=0, description="per second, video with audio")


Prices = dict[str, dict[str, dict[str, VeoPrice]]]  # backend -> upstream model -> resolution


def default_prices() -> Prices:
    """Google's list prices for Veo 3.1 in USD per second of video, by backend, upstream model
    and resolution (docs/providers/google-veo.md gives the pages and their dates).

    Prices change and differ by contract: check them against your bill and set `google.prices`
    from your own price sheet. The Gemini API always generates audio, so its tasks are charged
    at `video_audio`; Vertex AI charges `video` when `generate_audio` is false.
    """

    def tier(
        p720: tuple[float | None, float],
        p1080: tuple[float | None, float],
        p4k: tuple[float | None, float],
    ) -> dict[str, VeoPrice]:
        return {
            res: VeoPrice(video=video, video_audio=audio)
            for res, (video, audio) in (("720p", p720), ("1080p", p1080), ("4K", p4k))
        }

    quality_gemini = tier((None, 0.40), (None, 0.40), (None, 0.60))
    fast_gemini = tier((None, 0.10), (None, 0.12), (None, 0.30))
    quality_vertex = tier((0.20, 0.40), (0.20, 0.40), (0.40, 0.60))
    fast_vertex = tier((0.08, 0.10), (0.10, 0.12), (0.25, 0.30))
    return {
        "gemini": {
            "veo-3.1-generate-preview": quality_gemini,
            "veo-3.1-fast-generate-preview": fast_gemini,
        },
        "vertex": {
            "veo-3.1-generate-001": quality_vertex,
            "veo-3.1-fast-generate-001": fast_vertex,
            "veo-3.1-generate-preview": quality_vertex,
            "veo-3.1-fast-generate-preview": fast_vertex,
        },
    }


def _both_backends() -> list[Literal["gemini", "vertex"]]:
    return ["gemini", "vertex"]


class GoogleSettings(BaseModel):
    """Google Veo through the Gemini API (API keys) and/or Vertex AI (projects)."""

    model_config = ConfigDict(extra="forbid")

    # Gemini API credentials: `api_key` is the one-key shorthand, `api_keys` the list.
    api_key: SecretStr | None = None
    api_keys: list[GeminiKey] = Field(default_factory=list)
    # Vertex AI credentials: `project` (+ location and credentials) is the one-project
    # shorthand, `vertex` the list.
    project: str | None = None
    location: str = "us-central1"
    service_account_file: Path | None = None
    access_token: SecretStr | None = None
    vertex: list[VertexCredential] = Field(default_factory=list)

    max_concurrency: int = Field(
        1000,
        ge=1,
        description="upstream operations one credential runs at once, per worker process "
        "(Google limits requests per minute, not operations in flight: keep it high)",
    )
    submits_per_minute: float | None = Field(
        None,
        gt=0,
        description="submits per credential per minute (a token bucket); beyond it, submits "
        "wait their turn. Google answers 429 past its own per-minute quota, which reelserve "
        "absorbs as waiting too; default: no local limit",
    )
    requests_per_minute: float | None = Field(
        None,
        gt=0,
        description="all requests (submits, polls, downloads) per credential per minute, so "
        "that one key's polling cannot exhaust its own quota; default: no local limit",
    )
    vertex_4k: bool = Field(
        False,
        description="Vertex AI serves 4K for Veo 3.1 (unconfirmed in Google's reference: off "
        "until you have seen it work on your project)",
    )
    remote_backends: list[Literal["gemini", "vertex"]] = Field(
        default_factory=_both_backends,
        description="on an API host without Google credentials that queues google_veo for "
        "workers elsewhere (remote_providers): the backends those workers hold, for the "
        "submit checks",
    )

    # Polling an upstream operation.
    poll_interval: float = Field(10.0, gt=0, description="seconds before the first poll")
    poll_max_interval: float = Field(30.0, gt=0, description="the longest wait between polls")
    poll_backoff: float = Field(1.5, ge=1, description="each wait is the previous times this")
    poll_jitter: float = Field(0.1, ge=0, le=1, description="+- this fraction of randomness")
    deadline: float = Field(
        1200.0, gt=0, description="seconds from the submit until the task fails with timeout"
    )

    # Retries of 429 / 5xx / network failures (Retry-After is honoured when given).
    retry_attempts: int = Field(5, ge=0, description="retries of one call before failing")
    retry_initial_delay: float = Field(2.0, gt=0)
    retry_max_delay: float = Field(60.0, gt=0)
    request_timeout: float = Field(120.0, gt=0, description="seconds one HTTP call may take")

    # Endpoints (for proxies and tests): default Google's.
    base_url: str = Field(
        "https://generativelanguage.googleapis.com", description="Gemini API base URL"
    )
    vertex_base_url: str | None = Field(
        None, description="Vertex AI base URL; default: https://LOCATION-aiplatform.googleapis.com"
    )
    storage_base_url: str = Field(
        "https://storage.googleapis.com", description="Cloud Storage, for gs:// results"
    )
    gemini_api_version: str = "v1beta"
    vertex_api_version: str = "v1"
    output_gcs_uri: str | None = Field(
        None, description="Vertex only: gs:// prefix Veo writes results to (default: inline)"
    )

    # Usage accounting.
    currency: str = Field("USD", min_length=1, max_length=8)
    prices: Prices = Field(
        default_factory=default_prices,
        description="backend (gemini | vertex) -> upstream model id -> resolution -> price",
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _plain_keys(cls, value: object) -> object:
        """Accept plain strings in the list: `["key-1", "key-2"]`."""
        if isinstance(value, list):
            return [{"key": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("output_gcs_uri", mode="after")
    @classmethod
    def _gcs(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("gs://"):
            raise ValueError(f"output_gcs_uri must start with gs:// (got {value!r})")
        return value

    @model_validator(mode="after")
    def _intervals(self) -> GoogleSettings:
        if self.poll_max_interval < self.poll_interval:
            raise ValueError("poll_max_interval must be at least poll_interval")
        if self.service_account_file is not None and self.access_token is not None:
            raise ValueError("give service_account_file or access_token, not both")
        return self

    def gemini_keys(self) -> list[GeminiKey]:
        keys = list(self.api_keys)
        if self.api_key is not None and self.api_key.get_secret_value():
            keys.insert(0, GeminiKey(key=self.api_key))
        return keys

    def vertex_credentials(self) -> list[VertexCredential]:
        creds = list(self.vertex)
        if self.project:
            creds.insert(
                0,
                VertexCredential(
                    project=self.project,
                    location=self.location,
                    service_account_file=self.service_account_file,
                    access_token=self.access_token,
                ),
            )
        return creds

    @property
    def configured(self) -> bool:
        """Any credential at all: the google_veo provider is available."""
        return bool(self.gemini_keys() or self.vertex_credentials())
