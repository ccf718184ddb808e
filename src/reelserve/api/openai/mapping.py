"""OpenAI's Videos API onto reelserve tasks: the pure mapping behind `/v1/videos`.

A client of OpenAI's `POST /v1/videos` sends `prompt`, `model`, `seconds` (a string: "4", "8",
"12"), `size` ("1280x720", "720x1280", ...) and maybe `input_reference` (an image the video
starts from). This module turns such a request into a reelserve submit body (`seconds` ->
`duration`, `size` -> `resolution` + `aspect_ratio`, the reference -> `first_frame_image`, OpenAI's
model names -> configured models) and a task back into OpenAI's `video` object. It does no I/O:
the route reads the request, the service runs it.

A video's id is its task's id: one task, visible through both APIs.
"""

from __future__ import annotations

import base64
import copy
import re
from collections.abc import Mapping
from typing import Any

from reelserve.domain.errors import InvalidRequest, NotFound, ReelserveError, clip, describe
from reelserve.domain.models import ModelEntry, frame_size
from reelserve.domain.spec import check_image_source
from reelserve.domain.text import check_text

# OpenAI's video states; a cancelled task is a failed video with error code "cancelled".
STATUS = {
    "pending": "queued",
    "processing": "in_progress",
    "completed": "completed",
    "failed": "failed",
    "cancelled": "failed",
}
DEFAULT_SECONDS = 4  # OpenAI's default, when the model has it
VARIANTS = ("video", "thumbnail")
MAX_LIST_LIMIT = 100

# reelserve field -> the OpenAI parameter a client sent it as.
OPENAI_PARAMS = {
    "duration": "seconds",
    "resolution": "size",
    "aspect_ratio": "size",
    "first_frame_image": "input_reference",
    "task_id": "video_id",
}
# reelserve extensions a /v1/videos request may carry too (as form fields or JSON members).
PASSTHROUGH = ("negative_prompt", "seed", "generate_audio", "webhook_url", "resize_mode")
REFERENCE = "input_reference"
_SIZE_RE = re.compile(r"^\s*([0-9]{1,5})\s*[xX]\s*([0-9]{1,5})\s*$")
_DIGITS = re.compile(r"[0-9]{1,12}")


def resolve_model(
    requested: object,
    models: Mapping[str, ModelEntry],
    aliases: Mapping[str, str],
    default: str,
) -> ModelEntry:
    """An OpenAI model name (through `aliases`, e.g. sora-2 -> a Veo model) or a reelserve
    model id; `default` when none is given."""
    defaulted = requested is None or requested == ""
    if defaulted:
        requested = default
    if not isinstance(requested, str):
        raise InvalidRequest(f"model must be a string (got {describe(requested)})", param="model")
    entry = models.get(aliases.get(requested, requested))
    if entry is None:
        names = ", ".join(sorted({*(a for a, m in aliases.items() if m in models), *models}))
        if defaulted:
            raise InvalidRequest(
                f'model is required here (the default "{requested}" is not configured); '
                f"available models: {names}",
                param="model",
            )
        raise InvalidRequest(
            f'model "{requested}" is not available; available models: {names}', param="model"
        )
    return entry


def parse_seconds(value: object, entry: ModelEntry) -> int:
    """`seconds` is a string in OpenAI's API ("4"); a JSON integer is accepted too."""
    allowed = ", ".join(f'"{d}"' for d in entry.durations)
    if value is None or value == "":
        if DEFAULT_SECONDS in entry.durations:
            return DEFAULT_SECONDS
        return entry.default_duration
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidRequest(
            f'seconds must be a string such as "4" (got {describe(value)})', param="seconds"
        )
    text = str(value).strip()
    if not _DIGITS.fullmatch(text) or int(text) not in entry.durations:
        raise InvalidRequest(
            f'seconds must be one of {allowed} for model "{entry.id}" (got {describe(value)})',
            param="seconds",
        )
    return int(text)


def sizes(entry: ModelEntry) -> list[str]:
    """The `size` values a model can produce, as OpenAI writes them (width x height)."""
    return [
        "{}x{}".format(*entry.render_size(resolution, ratio))
        for resolution in entry.resolutions
        for ratio in entry.aspect_ratios
    ]


def parse_size(value: object, entry: ModelEntry) -> tuple[str, str]:
    """`size` ("1280x720") -> (resolution, aspect_ratio): the size the model renders, or the
    resolution's standard size (a model may render 720p smaller, e.g. 832x480)."""
    if value is None or value == "":  # OpenAI's default, 720x1280: portrait 720p
        if "720p" in entry.resolutions and "9:16" in entry.aspect_ratios:
            return "720p", "9:16"
        return entry.resolutions[0], entry.aspect_ratios[0]
    if not isinstance(value, str):
        raise InvalidRequest(
            f'size must be a string such as "1280x720" (got {describe(value)})', param="size"
        )
    match = _SIZE_RE.match(value)
    if match is not None:
        wanted = (int(match.group(1)), int(match.group(2)))
        for resolution in entry.resolutions:
            for ratio in entry.aspect_ratios:
                if wanted in (entry.render_size(resolution, ratio), frame_size(resolution, ratio)):
                    return resolution, ratio
    allowed = ", ".join(f'"{s}"' for s in sizes(entry))
    raise InvalidRequest(
        f'size must be one of {allowed} for model "{entry.id}" (got {describe(value)})',
        param="size",
    )


def image_data_url(data: bytes, content_type: str | None) -> str:
    """An uploaded `input_reference` file as a data URL (the media layer sniffs the real type
    from the bytes; the declared one only labels the URL)."""
    mime = content_type if content_type and re.fullmatch(r"image/[\w.+-]+", content_type) else None
    return f"data:{mime or 'image/unknown'};base64,{base64.b64encode(data).decode()}"


def reference_source(value: object) -> str | None:
    """`input_reference` given as a URL string or as OpenAI's `{"image_url": ...}` object."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return _checked_reference(value)
    if isinstance(value, Mapping):
        if value.get("file_id") is not None:
            raise InvalidRequest(
                "input_reference.file_id is not supported: upload the image as a file, or "
                "send input_reference.image_url (an http(s) or data: URL)",
                param="input_reference",
            )
        url = value.get("image_url")
        if isinstance(url, str) and url:
            return _checked_reference(url)
    raise InvalidRequest(
        'input_reference must be an image file, an image URL or {"image_url": URL} '
        f"(got {describe(value)})",
        param="input_reference",
    )


def _checked_reference(url: str) -> str | None:
    """A reference URL the client sent, checked here under its own name (the native checks of
    the same form would name `first_frame_image`); blank is none, as on the native route."""
    check_text(url, REFERENCE)
    if not url.strip():
        return None
    check_image_source(url, REFERENCE)
    return url


def _check_size_seconds(
    entry: ModelEntry, resolution: str, aspect_ratio: str, seconds: int
) -> None:
    """A size the model renders only at some durations (Veo: 1080p and 4K at 8 seconds)."""
    allowed = entry.resolution_durations.get(resolution)
    if allowed is not None and seconds not in allowed:
        size = "{}x{}".format(*entry.render_size(resolution, aspect_ratio))
        needs = " or ".join(f'"{d}"' for d in allowed)
        raise InvalidRequest(
            f'size "{size}" on model "{entry.id}" needs seconds {needs} (got "{seconds}")',
            param="size",
        )


def _form_value(name: str, value: object) -> object:
    """Form fields arrive as strings; give the typed reelserve fields their JSON type back."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if name == "seed" and _DIGITS.fullmatch(text):
        return int(text)
    if name == "generate_audio" and text.lower() in ("true", "false"):
        return text.lower() == "true"
    return value


def generation_body(
    fields: Mapping[str, object],
    *,
    reference: str | None,
    models: Mapping[str, ModelEntry],
    aliases: Mapping[str, str],
    default_model: str,
) -> dict[str, Any]:
    """The reelserve submit body for an OpenAI create-video request."""
    entry = resolve_model(fields.get("model"), models, aliases, default_model)
    prompt = fields.get("prompt")
    if prompt is None:
        raise InvalidRequest("prompt is required", param="prompt")
    resolution, aspect_ratio = parse_size(fields.get("size"), entry)
    seconds = parse_seconds(fields.get("seconds"), entry)
    _check_size_seconds(entry, resolution, aspect_ratio, seconds)
    body: dict[str, Any] = {
        "model": entry.id,
        "prompt": prompt,
        "duration": seconds,
        "resolution": resolution,
        "aspect_ratio": aspect_ratio,
    }
    if reference is not None:
        body["first_frame_image"] = reference
    for name in PASSTHROUGH:
        if fields.get(name) is not None:
            body[name] = _form_value(name, fields[name])
    return body


def openai_error(error: ReelserveError, video_id: str | None = None) -> ReelserveError:
    """An error of the shared service as the facade answers it, chosen by its class (so its
    status and type) and its `param`, never by its text: a task that is not found is a video
    that is not found (the message made here, from the id the client sent); any other error
    keeps its status, type and message, its `param` named as the OpenAI client calls the field
    (`task_id` -> `video_id`, `first_frame_image` -> `input_reference`, ...)."""
    if error.param is None or error.param not in OPENAI_PARAMS:
        return error
    param = OPENAI_PARAMS[error.param]
    if isinstance(error, NotFound) and param == "video_id" and video_id is not None:
        return NotFound(f'no video "{clip(video_id)}" found', param=param)
    renamed = copy.copy(error)  # the same class, status, message and headers (Retry-After)
    renamed.param = param
    return renamed


def video_object(
    *,
    task_id: str,
    status: str,
    progress: int,
    model: str,
    spec: Mapping[str, Any],
    created_at: float,
    finished_at: float | None,
    error_code: str | None,
    error_message: str | None,
    expires_at: int | None,
    rendered: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """OpenAI's `video` object for one task; `size` is the rendered video's once there is one."""
    error: dict[str, Any] | None = None
    if status == "failed":
        error = {"code": error_code or "internal_error", "message": error_message or ""}
    elif status == "cancelled":
        error = {"code": "cancelled", "message": "the video was cancelled before it finished"}
    return {
        "id": task_id,
        "object": "video",
        "model": model,
        "status": STATUS[status],
        "progress": progress,
        "created_at": int(created_at),
        "completed_at": int(finished_at) if finished_at is not None else None,
        "expires_at": expires_at,
        "prompt": spec.get("prompt"),
        "seconds": str(spec.get("duration")),
        "size": "{}x{}".format(*(rendered or (spec.get("width"), spec.get("height")))),
        "remixed_from_video_id": None,
        "error": error,
    }


def list_object(videos: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": videos,
        "first_id": videos[0]["id"] if videos else None,
        "last_id": videos[-1]["id"] if videos else None,
        "has_more": has_more,
    }


def check_list_query(limit: int, order: str | None) -> None:
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidRequest(
            f"limit must be between 1 and {MAX_LIST_LIMIT} (got {limit})", param="limit"
        )
    if order not in (None, "desc"):
        raise InvalidRequest(
            f'order must be "desc" (newest first; got {describe(order)}); '
            "reelserve lists videos newest first only",
            param="order",
        )


def check_variant(variant: str | None) -> str:
    if variant is None or variant == "":
        return "video"
    if variant not in VARIANTS:
        raise InvalidRequest(
            f'variant must be "video" or "thumbnail" (got {describe(variant)})', param="variant"
        )
    return variant
