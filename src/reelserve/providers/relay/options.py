"""The typed `options` of a relay route (`provider = "relay"`), parsed with pydantic.

An operator (or their tooling) writes them in the TOML file or in `REELSERVE_MODELS`; a bad one
stops the server at startup with a message naming the model, the option, what was expected and
what came (`models[veo-b].options.base_url: expected ...; got ...`). The API key is a
`SecretStr`: it is never shown in a message, a log line or `GET /v1/models`.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
)

from reelserve.domain.models import ModelEntry

Api = Literal["seed", "openai"]
# A constant value sent with every create (`extra_fields`): what TOML and JSON can hold.
FieldValue = StrictBool | StrictInt | StrictFloat | str


class RelayOptions(BaseModel):
    """The `options` of a relay route: where the upstream is, how to authenticate, which of its
    models to ask for, and how patiently to wait on it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    api: Api = Field(
        description="seed: the seed's API (POST /v1/videos/generations, GET /v1/tasks/{id}), "
        "as the hosted service and reelserve serve it; openai: OpenAI's /v1/videos"
    )
    base_url: str = Field(description="the upstream's root, e.g. http://gpu-box:8091")
    api_key: SecretStr | None = Field(None, description="sent as Authorization: Bearer")
    model: str = Field(min_length=1, max_length=200, description="the upstream's model id")
    idempotent: bool | None = Field(
        None,
        description="the upstream honours Idempotency-Key (a retried submit returns the first "
        "task); default: true for api = seed, false for api = openai",
    )
    deadline: float = Field(
        3600.0, gt=0, description="seconds from the task's first attempt to its timeout"
    )
    request_timeout: float = Field(60.0, gt=0, description="seconds for one HTTP request")
    poll_interval: float = Field(2.0, gt=0, description="seconds before the first poll")
    poll_max_interval: float = Field(15.0, gt=0, description="longest wait between polls")
    poll_backoff: float = Field(1.5, ge=1, description="each wait is this times the last")
    retries: int = Field(
        3,
        ge=0,
        le=100,
        description="retries of a submit that failed before reaching the upstream (or, when "
        "idempotent, of unknown outcome), and of a download, before the task fails",
    )
    retry_delay: float = Field(1.0, gt=0, description="first backoff; doubles, to poll_max")
    rate_limit_retries: int = Field(
        2, ge=0, le=100, description="submits sent again after a 429, each after Retry-After"
    )
    max_retry_after: float = Field(
        60.0,
        ge=0,
        description="a 429 asking to wait longer than this fails (or fails over) at once",
    )
    extra_fields: dict[str, FieldValue] = Field(
        default_factory=dict,
        description="constant fields added to every create (e.g. num_inference_steps)",
    )
    audio_field: str | None = Field(
        "generate_audio",
        min_length=1,
        description="api = openai: the form field that asks for audio (vLLM-Omni: "
        "generate_sound); none: never sent",
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        """An absolute http(s) URL without query or fragment; a trailing `/v1` (as OpenAI
        clients write base URLs) is dropped, since every path here starts with it."""
        try:
            parts = urlsplit(value.strip())
        except ValueError:
            parts = None
        if (
            parts is None
            or parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.query
            or parts.fragment
        ):
            raise ValueError("an http(s) URL such as http://gpu-box:8091")
        root = value.strip().rstrip("/")
        if root.endswith("/v1"):
            root = root[: -len("/v1")]
        return root

    @property
    def honours_idempotency(self) -> bool:
        if self.idempotent is not None:
            return self.idempotent
        return self.api == "seed"

    def secret(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key is not None else None


_SECRET_FIELDS = frozenset({"api_key"})


def parse_options(entry: ModelEntry) -> RelayOptions:
    """The relay options of `entry`, or a `ValueError` naming each bad one."""
    try:
        return RelayOptions.model_validate(entry.options)
    except ValidationError as exc:
        problems = [_problem(entry.id, error) for error in exc.errors()]
        raise ValueError("; ".join(problems)) from None


def _problem(model_id: str, error: Any) -> str:
    """One pydantic error as `models[ID].options.FIELD: expected ...; got ...`."""
    loc = [str(part) for part in error.get("loc", ())]
    where = ".".join(loc) or "options"
    kind = str(error.get("type", ""))
    message = str(error.get("msg", ""))
    given = error.get("input")
    if kind == "missing":
        expected, got = "a value (it is required)", "nothing"
    elif kind == "extra_forbidden":
        known = ", ".join(RelayOptions.model_fields)
        expected, got = f"one of the relay options ({known})", "an unknown option"
    else:
        for prefix in ("Value error, ", "Input should be "):
            if message.startswith(prefix):
                message = message[len(prefix) :]
        expected = message
        got = "a value that is not shown" if loc and loc[0] in _SECRET_FIELDS else repr(given)
    return f"models[{model_id}].options.{where}: expected {expected}; got {got}"
