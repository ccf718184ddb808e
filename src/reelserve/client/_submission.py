"""What a submit sends: its fields (spelled once, for both clients), checked, and the JSON body
made of them, images turned into data URLs. `image_value` reads a local image file; it is the
only file this module touches (`AsyncClient` builds a submission in a thread for that)."""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeAlias, TypedDict

ImageInput: TypeAlias = "str | bytes | os.PathLike[str]"
IMAGE_FIELDS = ("first_frame_image", "last_frame_image")


class SubmitFields(TypedDict, total=False):
    """The keyword arguments of `submit`: the request's fields, each left to the server's
    default when absent or None, then `extra` (more JSON fields) and `idempotency_key`."""

    negative_prompt: str | None
    duration: int | None
    aspect_ratio: str | None
    resolution: str | None
    first_frame_image: ImageInput | None
    last_frame_image: ImageInput | None
    seed: int | None
    sample_count: int | None
    generate_audio: bool | None
    person_generation: str | None
    resize_mode: str | None
    enhance_prompt: bool | None
    webhook_url: str | None
    extra: Mapping[str, Any] | None
    idempotency_key: str | None


FIELD_NAMES = tuple(SubmitFields.__annotations__)  # in order, so equal calls send equal bodies
BODY_FIELDS = tuple(name for name in FIELD_NAMES if name not in ("extra", "idempotency_key"))


def sniff_image(data: bytes) -> str | None:
    """The MIME type of JPEG, PNG or WebP bytes (what the server accepts), else None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def image_data_url(data: bytes, *, name: str = "image") -> str:
    """`data:image/...;base64,...` for image bytes, the type detected from the content."""
    mime = sniff_image(data)
    if mime is None:
        raise ValueError(f"{name} must be a JPEG, PNG or WebP image (its content is not one)")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def image_value(value: ImageInput, name: str) -> str:
    """A request's image field: an http(s) or data URL as given; a local file path
    (`pathlib.Path` or `os.PathLike`) or raw bytes as a data URL."""
    if isinstance(value, bytes):
        return image_data_url(value, name=name)
    if isinstance(value, str):
        return value
    path = Path(os.fspath(value))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{name}: cannot read {path}: {exc.strerror or exc}") from None
    return image_data_url(data, name=f"{name} ({path})")


def check_fields(fields: Mapping[str, Any], method: str) -> None:
    """A `TypeError` for a keyword `submit` does not take, worded as Python words it for an
    explicit signature (`**fields` would otherwise accept anything at run time)."""
    for name in fields:
        if name not in FIELD_NAMES:
            raise TypeError(f"{method}() got an unexpected keyword argument {name!r}")


def submission(model: str, prompt: str, fields: SubmitFields) -> dict[str, Any]:
    """The JSON body of a submit: `extra`, then the given values only (the server applies its
    defaults to the others), always in the same order."""
    given: Mapping[str, Any] = fields
    body: dict[str, Any] = dict(given.get("extra") or {})
    body["model"] = model
    body["prompt"] = prompt
    for name in BODY_FIELDS:
        value = given.get(name)
        if value is None:
            continue
        if name in IMAGE_FIELDS:
            value = image_value(value, name)
        body[name] = value
    return body
