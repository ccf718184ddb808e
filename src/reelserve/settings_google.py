"""The `google` settings section: credentials, polling, retries and prices of the Veo provider.

Kept in its own module so `settings.py` stays a readable list of top-level options; the object
is nested there as `Settings.google` (environment: `REELSERVE_GOOGLE__<NAME>`, lists and maps
as JSON). docs/providers/google-veo.md explains every field with examples.
"""

from __future__ import annotations

from pathlib import Path

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

    @model_validator(mode="after")
    def _one_source(self) -> VertexCredential:
        if self.service_account_file is not None and self.access_token is not None:
            raise ValueError("give service_account_file or access_token, not both")
        return self


class VeoPrice(BaseModel):
    """What one second of generated video costs, without and with generated audio."""

    model_config = ConfigDict(extra="forbid")

    video: float = Field(ge=0, description="per second, video only")
    video_audio: float = Field(ge=0, description="per second, video with audio")


def default_prices() -> dict[str, VeoPrice]:
    """Google's list prices for Veo 3.1 at 720p/1080p when this was written (USD per second).

    Prices change and differ by contract and resolution (4K costs more): operators should set
    `google.prices` from their own price sheet. The Gemini API always generates audio, so its
    tasks are charged at `video_audio`.
    """
    return {
        "veo-3.1-generate-preview": VeoPrice(video=0.20, video_audio=0.40),
        "veo-3.1-fast-generate-preview": VeoPrice(video=0.10, video_audio=0.15),
        "veo-3.1-generate-001": VeoPrice(video=0.20, video_audio=0.40),
        "veo-3.1-fast-generate-001": VeoPrice(video=0.10, video_audio=0.15),
    }


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

    max_concurrency: int = Field(4, ge=1, description="default tasks per credential at once")

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
    base_url: str | None = Field(None, description="Gemini API base URL")
    vertex_base_url: str | None = Field(None, description="Vertex AI base URL")
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
    prices: dict[str, VeoPrice] = Field(
        default_factory=default_prices, description="upstream model id -> price per second"
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
