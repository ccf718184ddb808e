"""`GenerationSpec`: a submit request validated against its model and normalised.

`parse_generation_request` turns the raw JSON body of `POST /v1/videos/generations` into a spec or
raises `InvalidRequest` naming the field, what was expected and what came. The checks follow the
seed and CONTRACT.md: the seed's types are taken literally (`"duration": "8"` is an error, as the
seed warns), unknown fields are ignored, and JSON `null` on an optional field means "not given".
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Mapping, Sequence
from typing import Any, Literal
from urllib.parse import SplitResult, urlsplit

from pydantic import BaseModel, ConfigDict

from reelserve.domain.errors import InvalidRequest, describe
from reelserve.domain.models import ALL_ASPECT_RATIOS, ALL_RESOLUTIONS, ModelEntry, frame_size
from reelserve.domain.text import check_text

MAX_PROMPT_CHARS = 8000
MAX_SEED = 4294967295
MAX_SAMPLES = 4
PERSON_GENERATION = ("allow_adult", "disallow")
RESIZE_MODES = ("pad", "crop")
DATA_URL_RE = re.compile(r"^data:(image/[a-zA-Z0-9.+-]+);base64,(.*)$", re.DOTALL)
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_PORT = 65535
_URL_BAD_CHAR = re.compile(r"[\s\x00-\x1f\x7f]")


class GenerationSpec(BaseModel):
    """A validated, normalised generation request. Stored with the task as JSON."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    mode: Literal["t2v", "i2v", "flf2v"]
    prompt: str
    negative_prompt: str | None = None
    duration: int
    aspect_ratio: Literal["16:9", "9:16"]
    resolution: Literal["720p", "1080p", "4K"]
    width: int
    height: int
    fps: int
    first_frame_image: str | None = None
    last_frame_image: str | None = None
    seed: int
    seed_given: bool
    sample_count: int
    generate_audio: bool
    person_generation: Literal["allow_adult", "disallow"]
    # Whether the client sent `person_generation` (else a provider may apply its own default:
    # the Gemini API's text-to-video takes only `allow_all`). True for tasks stored before.
    person_generation_given: bool = True
    resize_mode: Literal["pad", "crop"]
    enhance_prompt: bool = True
    webhook_url: str | None = None

    @property
    def frame_count(self) -> int:
        return self.duration * self.fps

    def sample_seed(self, index: int) -> int:
        """The seed of sample `index`: consecutive seeds, so every sample is distinct."""
        return (self.seed + index) % (MAX_SEED + 1)


def _expected(choices: Sequence[str]) -> str:
    return ", ".join(f'"{c}"' for c in choices)


def _get_string(body: Mapping[str, Any], name: str, *, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise InvalidRequest(f"{name} is required", param=name)
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be a string (got {describe(value)})", param=name)
    return check_text(value, name)


def _get_int(body: Mapping[str, Any], name: str, unit: str = "") -> int | None:
    value = body.get(name)
    if value is None:
        return None
    # bool is a subclass of int in Python but not an integer in JSON.
    if isinstance(value, bool) or not isinstance(value, int):
        what = f"an integer{unit}"
        raise InvalidRequest(f"{name} must be {what} (got {describe(value)})", param=name)
    return value


def _get_bool(body: Mapping[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise InvalidRequest(f"{name} must be a boolean (got {describe(value)})", param=name)
    return value


def _choice(body: Mapping[str, Any], name: str, choices: tuple[str, ...], default: str) -> str:
    value = _get_string(body, name)
    if value is None:
        return default
    if value not in choices:
        raise InvalidRequest(
            f"{name} must be one of {_expected(choices)} (got {describe(value)})", param=name
        )
    return value


def check_image_source(value: str, name: str) -> None:
    """Syntactic check of an image input: an http(s) URL or a base64 `data:image/...` URL.

    Whether the address may be fetched (SSRF rules) and whether the bytes are an image is decided
    by the media layer, which does the fetching.
    """
    if value.startswith("data:"):
        match = DATA_URL_RE.match(value)
        if match is None:
            raise InvalidRequest(
                f"{name} must be an http(s) URL or a data:image/...;base64, URL "
                "(got a malformed data URL)",
                param=name,
            )
        payload = match.group(2)
        if len(payload) > (MAX_IMAGE_BYTES * 4) // 3 + 4:
            raise InvalidRequest(
                f"{name} must be at most {MAX_IMAGE_BYTES // (1024 * 1024)} MB", param=name
            )
        try:
            base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest(
                f"{name} must be a data URL with valid base64 (got invalid base64)", param=name
            ) from None
        return
    parts = _split(value, name)
    if parts.scheme.lower() not in ("http", "https"):
        scheme = parts.scheme or "none"
        raise InvalidRequest(
            f"{name} must be an http(s) URL or a data:image/...;base64, URL (got scheme {scheme})",
            param=name,
        )
    if not parts.hostname:
        raise InvalidRequest(f"{name} must be an absolute URL with a host", param=name)
    _check_url_syntax(value, name)


def _check_url_syntax(value: str, name: str) -> None:
    """What a URL's parsers disagree on or let through is refused here, at submit: spaces and
    control characters (a URL carries them percent-encoded), and a port outside 1-65535 (`:0`
    would otherwise be read as the scheme's default port, `:99999` fail only when used)."""
    bad = _URL_BAD_CHAR.search(value)
    if bad is not None:
        raise InvalidRequest(
            f"{name} must be a URL without spaces or control characters (got {bad.group()!r} "
            f"at position {bad.start()}; percent-encode it)",
            param=name,
        )
    parts = _split(value, name)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= MAX_PORT:
        shown = parts.netloc.rpartition(":")[2][:20]
        raise InvalidRequest(
            f"{name} must have a port between 1 and {MAX_PORT} (got {shown!r})", param=name
        )


def _split(value: str, name: str) -> SplitResult:
    try:
        return urlsplit(value)
    except ValueError:  # "Invalid IPv6 URL": an unbalanced [ or ]
        raise InvalidRequest(
            f"{name} must be a well-formed URL (got {describe(value)}: unbalanced brackets)",
            param=name,
        ) from None


def check_webhook_url(value: str, *, allow_http: bool) -> None:
    parts = _split(value, "webhook_url")
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme.lower() not in schemes or not parts.hostname:
        expected = "an http(s) URL" if allow_http else "an https URL"
        raise InvalidRequest(
            f"webhook_url must be {expected} (got {describe(value)})", param="webhook_url"
        )
    _check_url_syntax(value, "webhook_url")


def parse_generation_request(
    body: object,
    models: Mapping[str, ModelEntry],
    *,
    allow_http_webhooks: bool = False,
) -> GenerationSpec:
    """Validate a submit body against the contract and the model's capabilities."""
    if not isinstance(body, dict):
        raise InvalidRequest(f"the request body must be a JSON object (got {describe(body)})")

    model_id = _get_string(body, "model", required=True)
    assert model_id is not None
    entry = models.get(model_id)
    if entry is None:
        available = ", ".join(sorted(models))
        raise InvalidRequest(
            f'model "{model_id}" is not available; available models: {available}', param="model"
        )

    prompt = _get_string(body, "prompt", required=True)
    assert prompt is not None
    if not prompt.strip():
        raise InvalidRequest("prompt must not be empty", param="prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequest(
            f"prompt must be at most {MAX_PROMPT_CHARS} characters (got {len(prompt)})",
            param="prompt",
        )
    negative = _get_string(body, "negative_prompt")
    if negative is not None and len(negative) > MAX_PROMPT_CHARS:
        raise InvalidRequest(
            f"negative_prompt must be at most {MAX_PROMPT_CHARS} characters (got {len(negative)})",
            param="negative_prompt",
        )
    if negative is not None and not negative.strip():
        negative = None

    duration = _get_int(body, "duration", " number of seconds")
    if duration is None:
        duration = entry.default_duration
    if duration not in entry.durations:
        raise InvalidRequest(
            f"duration must be one of {', '.join(map(str, entry.durations))} seconds for model "
            f'"{entry.id}" (got {duration})',
            param="duration",
        )

    aspect_ratio = _choice(body, "aspect_ratio", ALL_ASPECT_RATIOS, "16:9")
    if aspect_ratio not in entry.aspect_ratios:
        raise InvalidRequest(
            f'aspect_ratio must be one of {_expected(entry.aspect_ratios)} for model "{entry.id}" '
            f'(got "{aspect_ratio}")',
            param="aspect_ratio",
        )

    raw_resolution = _get_string(body, "resolution")
    resolution = "720p"
    if raw_resolution is not None:
        by_lower = {r.lower(): r for r in ALL_RESOLUTIONS}
        found = by_lower.get(raw_resolution.strip().lower())
        if found is None:
            raise InvalidRequest(
                f"resolution must be one of {_expected(ALL_RESOLUTIONS)} "
                f"(got {describe(raw_resolution)})",
                param="resolution",
            )
        resolution = found
    if resolution not in entry.resolutions:
        raise InvalidRequest(
            f'resolution must be one of {_expected(entry.resolutions)} for model "{entry.id}" '
            f'(got "{resolution}")',
            param="resolution",
        )
    allowed = entry.resolution_durations.get(resolution)
    if allowed is not None and duration not in allowed:
        raise InvalidRequest(
            f'resolution "{resolution}" on model "{entry.id}" needs a duration of '
            f"{' or '.join(map(str, allowed))} seconds (got {duration})",
            param="resolution",
        )

    first = _get_string(body, "first_frame_image")
    last = _get_string(body, "last_frame_image")
    if first is not None and not first.strip():
        first = None
    if last is not None and not last.strip():
        last = None
    if last is not None and first is None:
        raise InvalidRequest(
            "last_frame_image is only accepted together with first_frame_image",
            param="last_frame_image",
        )
    if first is not None:
        check_image_source(first, "first_frame_image")
    if last is not None:
        check_image_source(last, "last_frame_image")
    mode: Literal["t2v", "i2v", "flf2v"] = (
        "t2v" if first is None else ("flf2v" if last is not None else "i2v")
    )
    if mode not in entry.modes:
        names = {"t2v": "text-to-video", "i2v": "image-to-video", "flf2v": "first+last frame"}
        can = ", ".join(names[m] for m in entry.modes)
        raise InvalidRequest(
            f'model "{entry.id}" cannot do {names[mode]}; it can do: {can}',
            param="last_frame_image" if mode == "flf2v" else "first_frame_image",
        )

    seed = _get_int(body, "seed")
    seed_given = seed is not None
    if seed is None:
        seed = secrets.randbelow(MAX_SEED + 1)
    elif not 0 <= seed <= MAX_SEED:
        raise InvalidRequest(f"seed must be between 0 and {MAX_SEED} (got {seed})", param="seed")

    sample_count = _get_int(body, "sample_count")
    if sample_count is None:
        sample_count = 1
    limit = min(MAX_SAMPLES, entry.max_sample_count)
    if not 1 <= sample_count <= limit:
        raise InvalidRequest(
            f"sample_count must be between 1 and {limit} (got {sample_count})",
            param="sample_count",
        )

    generate_audio = _get_bool(body, "generate_audio")
    if generate_audio is None:
        generate_audio = False
    if generate_audio and not entry.audio:
        raise InvalidRequest(
            f'model "{entry.id}" cannot generate audio; send generate_audio false or omit it',
            param="generate_audio",
        )

    person_generation_given = body.get("person_generation") is not None
    person_generation = _choice(body, "person_generation", PERSON_GENERATION, "allow_adult")
    resize_mode = _choice(body, "resize_mode", RESIZE_MODES, "pad")

    enhance_prompt = _get_bool(body, "enhance_prompt")
    if enhance_prompt is False:
        raise InvalidRequest(
            "enhance_prompt can only be true; omit it or send true (got boolean false)",
            param="enhance_prompt",
        )

    webhook_url = _get_string(body, "webhook_url")
    if webhook_url is not None:
        check_webhook_url(webhook_url, allow_http=allow_http_webhooks)

    width, height = frame_size(resolution, aspect_ratio)
    return GenerationSpec(
        model=entry.id,
        mode=mode,
        prompt=prompt,
        negative_prompt=negative,
        duration=duration,
        aspect_ratio=aspect_ratio,
        resolution=resolution,
        width=width,
        height=height,
        fps=entry.fps,
        first_frame_image=first,
        last_frame_image=last,
        seed=seed,
        seed_given=seed_given,
        sample_count=sample_count,
        generate_audio=generate_audio,
        person_generation=person_generation,
        person_generation_given=person_generation_given,
        resize_mode=resize_mode,
        enhance_prompt=True,
        webhook_url=webhook_url,
    )
