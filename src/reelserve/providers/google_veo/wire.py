"""What goes to Google and what comes back, as data: the body of a `predictLongRunning`
request (every byte sent to Google is built here) and the parts of Google's answers reelserve
reads (a finished operation's videos and safety filtering, its error, a file id). No I/O.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from reelserve.domain.models import ModelEntry
from reelserve.domain.spec import GenerationSpec
from reelserve.domain.task import ErrorCode
from reelserve.providers.base import ProviderError
from reelserve.providers.google_veo import rules
from reelserve.providers.google_veo.client import clip
from reelserve.providers.google_veo.rules import VERTEX, Backend

# Messages of failed operations that mean Google's safety filters refused the request.
SAFETY_WORDS = ("usage guidelines", "responsible ai", "safety filter", "rai ")


def upstream_model(entry: ModelEntry, backend: str) -> str:
    """Google's name of the model on `backend` (`upstream_model`, `vertex_model` options)."""
    gemini = str(entry.options.get("upstream_model") or "")
    if backend == VERTEX:
        return str(entry.options.get("vertex_model") or gemini)
    return gemini


def request_body(
    spec: GenerationSpec,
    backend: Backend,
    op: dict[str, Any],
    images: dict[str, tuple[bytes, str]],
    *,
    storage_uri: str | None,
) -> dict[str, Any]:
    """The JSON body of one `predictLongRunning` request: every seed field under Google's name,
    as far as the backend takes it (rules.py says which)."""
    applied = rules.applied(spec, backend)
    instance: dict[str, Any] = {"prompt": spec.prompt}
    for name, key in (("first", "image"), ("last", "lastFrame")):
        if name in images:
            data, mime = images[name]
            instance[key] = {
                "bytesBase64Encoded": base64.b64encode(data).decode(),
                "mimeType": mime,
            }
    params: dict[str, Any] = {
        "aspectRatio": spec.aspect_ratio,
        "resolution": rules.RESOLUTION_UPSTREAM[spec.resolution],
        "durationSeconds": spec.duration,
    }
    if spec.person_generation_given:
        # Omitted, Google applies its own default (`applied.person_generation`, which the
        # result reports); users report live answers that differ from the documented values.
        params["personGeneration"] = applied.person_generation
    if spec.negative_prompt:
        params["negativePrompt"] = spec.negative_prompt
    if applied.seed:
        params["seed"] = int(op["seed"])
    if applied.samples_per_request > 1:
        params["sampleCount"] = int(op["samples"])
    if applied.generate_audio:
        params["generateAudio"] = spec.generate_audio
    if applied.resize_mode and "first" in images:
        params["resizeMode"] = spec.resize_mode
    if applied.storage_uri and storage_uri:
        params["storageUri"] = storage_uri
    return {"instances": [instance], "parameters": params}


def operation_error(error: dict[str, Any]) -> ProviderError:
    """The task error of an operation that ended with `error`: `content_filtered` when its
    message says the safety filters refused, else `upstream_error`."""
    message = str(error.get("message") or error)
    code = (
        ErrorCode.CONTENT_FILTERED
        if any(w in message.lower() for w in SAFETY_WORDS)
        else ErrorCode.UPSTREAM_ERROR
    )
    return ProviderError(
        code, f"Google could not generate the video (error {error.get('code')}): {clip(message)}"
    )


def samples(response: dict[str, Any]) -> tuple[list[dict[str, Any]], int, list[str]]:
    """The videos of a finished operation, and how many safety filters removed (and why), in
    either backend's shape: the Gemini API's `generateVideoResponse.generatedSamples[].video`
    or Vertex AI's `videos[]`."""
    inner = response.get("generateVideoResponse")
    source = inner if isinstance(inner, dict) else response
    videos: list[dict[str, Any]] = []
    for item in source.get("generatedSamples") or []:
        if isinstance(item, dict) and isinstance(item.get("video"), dict):
            videos.append(item["video"])
    for item in source.get("videos") or []:
        if isinstance(item, dict):
            videos.append(item)
    try:
        filtered = int(source.get("raiMediaFilteredCount") or 0)
    except (TypeError, ValueError):
        filtered = 0
    reasons = [str(r) for r in source.get("raiMediaFilteredReasons") or [] if r]
    return videos, filtered, reasons


def gemini_file(uri: str) -> str | None:
    """The file id of a Gemini API video URI (`.../v1beta/files/<id>:download?alt=media`)."""
    match = re.search(r"/files/([A-Za-z0-9_-]+)", uri)
    return match.group(1) if match else None
