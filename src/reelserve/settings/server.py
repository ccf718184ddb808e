"""One settings object, from `REELSERVE_*` environment variables and an optional TOML file.

Defaults make `reelserve serve` work on a fresh machine: an SQLite file and a media directory
under the data directory, an in-process worker, the sandbox provider, and the seed's Veo models
listed (answering live keys with a clear error until Google credentials are configured).
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from reelserve.domain.models import ModelEntry, default_models
from reelserve.settings.google import GoogleSettings


def default_data_dir() -> Path:
    """`$REELSERVE_DATA_DIR`, else `$XDG_DATA_HOME/reelserve`, else `~/.local/share/reelserve`."""
    env = os.environ.get("REELSERVE_DATA_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "reelserve"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="REELSERVE_",
        env_nested_delimiter="__",
        extra="ignore",
        toml_file=os.environ.get("REELSERVE_CONFIG") or None,
    )

    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = Field(
        None, description="SQLAlchemy async URL; default: SQLite file in the data directory"
    )
    media_dir: Path | None = Field(None, description="default: <data_dir>/media")
    storage: Literal["local", "s3"] = Field("local", description="where result files live")
    s3_bucket: str | None = None
    s3_prefix: str = ""
    s3_endpoint_url: str | None = Field(None, description="for MinIO, R2, ...; default: AWS")
    s3_region: str | None = None
    s3_access_key_id: str | None = Field(None, description="default: boto3's credential chain")
    s3_secret_access_key: str | None = None
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    s3_presign: bool = Field(
        False,
        description="file links redirect to presigned S3 URLs instead of streaming through "
        "reelserve",
    )
    public_url: str | None = Field(
        None, description="base URL of file links in task results; default: the request's own"
    )
    secret_key: str | None = Field(
        None, description="signs file URLs; default: generated once into <data_dir>/secret.key"
    )
    result_ttl: int = Field(
        86400,
        ge=1,
        description="seconds a finished task's files stay available: its links expire then, "
        "and the sweeper deletes the files (inputs included)",
    )
    sweep_interval: float = Field(60.0, gt=0, description="seconds between retention sweeps")

    # Worker
    in_process_worker: bool = True
    remote_providers: list[str] = Field(
        default_factory=list,
        description="providers whose tasks this API process queues for live keys although it "
        "cannot run them itself: their workers run on other hosts (e.g. diffusers on GPU hosts, "
        "google_veo where only the pollers hold the Google credentials)",
    )
    worker_concurrency: int = Field(
        2,
        ge=1,
        description="tasks a worker runs at once on providers that compute here (sandbox, "
        "diffusers: bounded by CPU/GPU)",
    )
    worker_remote_concurrency: int = Field(
        1000,
        ge=1,
        description="tasks a worker holds at once on providers that wait on a remote service "
        "(google_veo): each costs a poll now and then, not a CPU or GPU",
    )
    worker_media_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="niceness a worker's media threads (probing, thumbnails, encoding clips) run "
        "at above its event loop's, so that status reads and submits on the same cores do not "
        "wait behind them (Linux, where niceness is per thread); 0: the same priority",
    )
    lease_seconds: float = Field(30.0, gt=0)
    poll_interval: float = Field(0.5, gt=0)
    progress_flush_interval: float = Field(0.5, gt=0)
    max_attempts: int = Field(3, ge=1, description="claims of one task before it is failed")
    stop_timeout: float = Field(
        30.0,
        gt=0,
        description="seconds a running provider has to stop after its task is cancelled; past "
        "them the task fails (timeout) and the provider's work is abandoned",
    )
    shutdown_grace: float = Field(
        10.0,
        gt=0,
        description="seconds a stopping worker waits for its providers to stop; then it hands "
        "their tasks back and exits, even if a provider's thread is still running",
    )
    device: str | None = Field(
        None,
        pattern=r"^(cpu|cuda(:\d+)?|mps|xpu(:\d+)?)$",
        description="torch device local models run on (cuda:N, cpu...); default: cuda if any",
    )

    # HTTP
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    events_poll_interval: float = Field(
        0.25, gt=0, description="seconds between the store reads that feed task event streams"
    )
    events_keepalive: float = Field(
        15.0, gt=0, description="seconds of silence after which an event stream sends a comment"
    )
    allow_http_webhooks: bool = False

    # Webhooks (docs/webhooks.md)
    webhook_allow_hosts: list[str] = Field(default_factory=list)
    webhook_allow_networks: list[str] = Field(default_factory=list)
    webhook_timeout: float = Field(10.0, gt=0, description="seconds one delivery attempt may take")
    webhook_retry_schedule: list[float] = Field(
        default_factory=lambda: [5.0, 30.0, 120.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0],
        description="seconds before each retry of a failed delivery (each randomised by +-20%)",
    )
    webhook_concurrency: int = Field(4, ge=1, description="deliveries one worker makes at once")

    # OpenAI-compatible facade (docs/openai-compat.md)
    openai_models: dict[str, str] = Field(
        default_factory=lambda: {
            "sora-2": "veo3.1-fast-official",
            "sora-2-pro": "veo3.1-quality-official",
        },
        description="OpenAI model names -> reelserve model ids on /v1/videos",
    )
    openai_default_model: str = "sora-2"

    # Image inputs
    image_allow_hosts: list[str] = Field(default_factory=list)
    image_allow_networks: list[str] = Field(default_factory=list)
    image_resolve_overrides: dict[str, str] = Field(default_factory=dict)

    models: list[ModelEntry] = Field(default_factory=default_models)

    # Google Veo (docs/providers/google-veo.md): credentials, polling, retries, prices.
    google: GoogleSettings = Field(default_factory=GoogleSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls),
            file_secret_settings,
        )

    @field_validator("data_dir", "media_dir", mode="after")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser().resolve() if value is not None else None

    @field_validator("webhook_retry_schedule", mode="after")
    @classmethod
    def _positive_delays(cls, value: list[float]) -> list[float]:
        if any(delay <= 0 for delay in value):
            raise ValueError("every retry delay must be a positive number of seconds")
        return value

    # The outbound policies (image fetching, webhook delivery) are checked here, so a bad value
    # stops the server at startup with a message naming the setting, not the first submit.

    @field_validator("image_allow_networks", "webhook_allow_networks", mode="after")
    @classmethod
    def _networks(cls, value: list[str], info: ValidationInfo) -> list[str]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as exc:
                raise ValueError(
                    f'{info.field_name}: expected IP networks in CIDR form, such as "10.0.0.0/8" '
                    f'or "fd00::/8"; got {network!r} ({exc})'
                ) from None
        return value

    @field_validator("image_allow_hosts", "webhook_allow_hosts", mode="after")
    @classmethod
    def _hosts(cls, value: list[str], info: ValidationInfo) -> list[str]:
        networks = str(info.field_name).replace("_hosts", "_networks")
        for host in value:
            problem = _host_problem(host)
            if problem is not None:
                raise ValueError(
                    f'{info.field_name}: expected host names, such as "images.internal" or '
                    f'"*.example.com" (addresses go in {networks}); got {host!r}: {problem}'
                )
        return value

    @field_validator("image_resolve_overrides", mode="after")
    @classmethod
    def _overrides(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        for host, address in value.items():
            problem = _host_problem(host)
            if problem is None and _ip_address(address) is None:
                problem = f"{address!r} is not an IP address"
            if problem is not None:
                raise ValueError(
                    f"{info.field_name}: expected host names pinned to IP addresses, such as "
                    f'{{"images.test": "127.0.0.1"}}; got {host!r}: {address!r}: {problem}'
                )
        return value

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'reelserve.db'}"

    @property
    def resolved_media_dir(self) -> Path:
        return self.media_dir or self.data_dir / "media"

    def model_map(self) -> dict[str, ModelEntry]:
        return {m.id: m for m in self.models}

    def ensure_dirs(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.resolved_media_dir.mkdir(parents=True, exist_ok=True)

    def signing_key(self) -> bytes:
        """The key that signs file URLs: configured, or generated once and kept in the data dir."""
        if self.secret_key:
            return self.secret_key.encode()
        self.ensure_dirs()
        path = self.data_dir / "secret.key"
        try:
            return path.read_bytes().strip()
        except FileNotFoundError:
            pass
        # Write a private temp file, then link it into place: atomic, and two processes starting
        # at once agree on whichever key was linked first.
        tmp = path.with_name(f".secret.key.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_urlsafe(48).encode())
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        return path.read_bytes().strip()


# A configured host name: labels of letters, digits, "-" and "_" (after IDNA), "*." in front
# for every subdomain.
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_NAME = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*\.?")
_NUMBER = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)")


def _ip_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


def _host_problem(host: str) -> str | None:
    """What is wrong with a configured host name, or None."""
    name = host.strip().lower()
    if _ip_address(name) is not None:
        return "an IP address, which host names never match"
    wildcard = name.startswith("*.")
    try:
        ascii_name = ("*." if wildcard else "") + name[2 if wildcard else 0 :].encode(
            "idna"
        ).decode("ascii")
    except UnicodeError:
        return "not a valid international domain name"
    if not _HOST_NAME.fullmatch(ascii_name):
        return 'not a host name (no scheme, port, path or "*" but a leading "*.")'
    if _NUMBER.fullmatch(ascii_name.rstrip(".").rsplit(".", 1)[-1]):
        return "ends in a number, so it is read as an IPv4 address"
    return None
