"""A strict local fake of Google's Veo 3.1 endpoints (Gemini API and Vertex AI), on loopback.

It answers as Google documents, and where Google's pages leave a case open it refuses. Every check
it makes on a submitted request is one row of `RULES` (and `PARAMETERS` says which parameters each
backend takes at all); the rows are read top to bottom, the first that refuses answers
`400 INVALID_ARGUMENT` with Google's message shape, and each row carries a `source`: the page or
the recorded live answer it was written from. A source that says "unconfirmed" marks a row whose
behaviour no Google page settled: such rows are strict on purpose, so that a provider which passes
against this fake does not rely on anything Google has not promised. The table is written from
Google's documentation alone; it imports nothing from `reelserve.providers`.

Gemini API (`x-goog-api-key` header)
  POST {base}/v1beta/models/{model}:predictLongRunning   {"instances": [...], "parameters": {...}}
       -> {"name": "models/{model}/operations/{id}"}
  GET  {base}/v1beta/models/{model}/operations/{id}
       -> done: {"response": {"generateVideoResponse": {"generatedSamples": [{"video":
          {"uri": ".../v1beta/files/{file}:download?alt=media"}}   (or, scripted, inline
          {"encodedVideo": base64, "encoding": "video/mp4"}), "raiMediaFilteredCount": n,
          "raiMediaFilteredReasons": [...]}}}   or {"done": true, "error": {"code", "message"}};
          as in Google's JSON, empty lists and zero counts are left out
  GET  {base}/v1beta/files/{file}:download?alt=media      -> 302 to {base}/signed/{token}
  GET  {base}/signed/{token}                              -> the MP4 (needs no key, like a
                                                             signed URL)
Vertex AI (`Authorization: Bearer` from the token endpoint or a configured token)
  POST {base}/v1/projects/{p}/locations/{l}/publishers/google/models/{m}:predictLongRunning
       -> {"name": "projects/{p}/locations/{l}/publishers/google/models/{m}/operations/{id}"}
  POST {base}/v1/projects/{p}/locations/{l}/publishers/google/models/{m}:fetchPredictOperation
       {"operationName": name} -> done: {"response": {"videos": [{"bytesBase64Encoded": ...,
       "mimeType": "video/mp4"} | {"gcsUri": "gs://..."}], "raiMediaFilteredCount": n}}
  GET  {base}/download/storage/v1/b/{bucket}/o/{object}?alt=media   (Cloud Storage JSON API)
  POST {base}/token   (OAuth 2.0 JWT-bearer grant of a service account; RS256 checked)

Errors are Google's JSON shape `{"error": {"code", "message", "status", "details"?}}`. A quota
fault carries a `google.rpc.RetryInfo` detail with `retryDelay` in the body when a test scripts
one, and a `Retry-After` header only when a test asks for that instead. Operations belong to the
key (Gemini API) or project (Vertex AI) that created them: polling or downloading with another
answers 404, as an operation in another Google project would.

The videos are real H.264 MP4s at the size Google delivers (720p 1280x720, 1080p 1920x1080, 4k
3840x2160; 9:16 swaps them), 24 fps, `durationSeconds` long, with an AAC track when audio is
generated (always on the Gemini API; on Vertex AI as `generateAudio` says). They are solid colour
frames encoded at x264's fastest settings and cached by (size, duration, audio, colour), and
rendering starts when the operation is created, so a poll seldom waits for it. A 4k clip of 8 s
still takes several seconds of CPU the first time.

Scripting (attributes of `FakeGoogle`, all cleared by `reset()`):
  submit_faults / poll_faults / download_faults: lists of {"code", "status", "message"} plus
      optional "retry_delay" ("0.2s": a RetryInfo detail in the body) or "retry_after" (seconds:
      a Retry-After header); each is answered once, in order, before anything else is checked.
  exhausted: credentials whose submits answer 429 RESOURCE_EXHAUSTED (with a RetryInfo detail when
      `exhausted_retry_delay` is set).
  done_after / finish: polls answered "not done" before the answer is done / False: never done
      (until `finish_all()` or a test sets `Operation.finish`).
  filter_next = (n, reasons): every operation created while it is set delivers n samples fewer
      than asked, with raiMediaFilteredCount/raiMediaFilteredReasons.
  filter_submits: indexes (0-based, counted since reset) of created operations whose samples are
      all filtered, with `filter_reasons`; for filtering one of several fanned-out operations.
  operation_errors: one entry per created operation, in order: None (normal) or {"code",
      "message"}: that operation ends done with that `error`.
  inline_videos: True: Gemini samples come inline as `encodedVideo` instead of a file uri.
  hold_submits (set: submits wait until cleared) / submit_arrived (set by every submit).
Constructor options: api_keys, vertex_projects ((project, location) pairs), static_tokens (bearer
tokens accepted without the token endpoint), restricted_keys (Gemini keys of a project in the
EU/UK/CH/MENA, where person generation is restricted), vertex_4k (serve resolution "4k" on Vertex
AI, which no Google page here confirms).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import json
import re
import secrets
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import numpy as np
import uvicorn
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from reelserve.media.video import encode_mp4

# -- sources --------------------------------------------------------------------------------------
# Short names for the pages the rows below were written from.
GEMINI_VIDEO = "https://ai.google.dev/gemini-api/docs/video"
GEMINI_SDK = (
    "https://github.com/googleapis/python-genai google/genai/models.py"
    " (_GenerateVideosConfig_to_mldev, _Image_to_mldev, _Video_from_mldev)"
)
DISCUSS_181139 = (
    "https://discuss.ai.google.dev/t/"
    "veo-3-1-image-to-video-rejects-documented-persongeneration-allow-adult/181139"
)
LIVE_REPORTS = "recorded live Gemini API answers (third-party test reports, 2026)"
VERTEX_REFERENCE = (
    "https://cloud.google.com/vertex-ai/generative-ai/docs/model-reference/veo-video-generation"
)
VERTEX_PARAMS = (
    "https://cloud.google.com/vertex-ai/generative-ai/docs/reference/rest/"
    "Shared.Types/VideoGenerationModelParams"
)
VERTEX_INSTANCE = (
    "https://docs.cloud.google.com/vertex-ai/generative-ai/docs/reference/rest/"
    "Shared.Types/VideoGenerationModelInstance"
)
VERTEX_VEO31 = "https://docs.cloud.google.com/vertex-ai/generative-ai/docs/models/veo/3-1-generate"
VERTEX_VEO2 = "https://cloud.google.com/vertex-ai/generative-ai/docs/models/veo/2-0-generate-001"
UNCONFIRMED = "unconfirmed"

GEMINI_MODELS = frozenset({"veo-3.1-generate-preview", "veo-3.1-fast-generate-preview"})
VERTEX_MODELS = frozenset(
    {
        "veo-3.1-generate-001",
        "veo-3.1-fast-generate-001",
        "veo-3.1-generate-preview",
        "veo-3.1-fast-generate-preview",
    }
)
FPS = 24
SIZES = {"720p": (1280, 720), "1080p": (1920, 1080), "4k": (3840, 2160)}
COLOURS = [(200, 40, 40), (40, 160, 60), (40, 60, 200), (200, 180, 40)]
MAX_IMAGE_BYTES = 20_000_000  # "20 MB", read as the smaller (decimal) megabyte: strict
UINT32_MAX = 2**32 - 1
DEFAULT_FILTER_REASONS = (
    "Veo could not generate this video because it may violate the usage guidelines.",
)
IMAGE_MAGIC = {"image/jpeg": (b"\xff\xd8\xff",), "image/png": (b"\x89PNG\r\n\x1a\n",)}


# -- the request as the rules see it --------------------------------------------------------------


@dataclass(frozen=True)
class Ask:
    """One submitted request, after its JSON shape was found sound enough to read."""

    backend: str  # "gemini" | "vertex"
    model: str
    instance: dict[str, Any]
    params: dict[str, Any]
    restricted: bool  # a Gemini key of a project in the EU/UK/CH/MENA
    vertex_4k: bool
    gcs: dict[str, bytes]  # the fake's Cloud Storage objects, for images given as gcsUri

    @property
    def mode(self) -> str:
        """t2v, i2v, flf2v (first and last frame), r2v (reference images) or extend."""
        if "video" in self.instance:
            return "extend"
        if "referenceImages" in self.instance:
            return "r2v"
        if "image" in self.instance:
            return "flf2v" if "lastFrame" in self.instance else "i2v"
        return "t2v"

    def has(self, name: str) -> bool:
        return name in self.params

    def get(self, name: str, default: Any = None) -> Any:
        return self.params.get(name, default)


@dataclass(frozen=True)
class Parameter:
    """A row of `PARAMETERS`: `name` is a parameter `backend` takes at all."""

    backend: str
    name: str
    source: str


@dataclass(frozen=True)
class Rule:
    """A row of `RULES`: on `backend` ("gemini", "vertex" or "both"), a request for which `refuses`
    returns a message is answered 400 INVALID_ARGUMENT with it."""

    backend: str
    what: str
    refuses: Callable[[Ask], str | None]
    source: str


# Every parameter each backend takes. Anything else is answered "`X` isn't supported by this
# model." Parameters Google's pages list but reelserve has no use for (fps, pubsubTopic,
# compressionQuality, labels on Vertex AI) are left out: refused here on purpose.
PARAMETERS: list[Parameter] = [
    Parameter("gemini", "aspectRatio", f"{GEMINI_VIDEO}; {GEMINI_SDK}"),
    Parameter("gemini", "durationSeconds", f"{GEMINI_VIDEO}; {GEMINI_SDK}"),
    Parameter("gemini", "resolution", f"{GEMINI_VIDEO}; {GEMINI_SDK}"),
    Parameter("gemini", "personGeneration", f"{GEMINI_VIDEO}; {DISCUSS_181139}"),
    Parameter("gemini", "negativePrompt", f"{GEMINI_VIDEO}; {GEMINI_SDK}"),
    Parameter("gemini", "sampleCount", f"{GEMINI_SDK} (numberOfVideos -> sampleCount)"),
    Parameter(
        "gemini",
        "seed",
        f"{GEMINI_VIDEO} (listed, per notes); the SDK refuses to send it; {UNCONFIRMED} live",
    ),
    # Not taken on the Gemini API: generateAudio (live answer: "`generateAudio` isn't supported by
    # this model."), resizeMode and storageUri (the SDK refuses both), enhancePrompt (the SDK
    # sends it, the page's table does not list it: unconfirmed, refused).
    Parameter("vertex", "aspectRatio", VERTEX_PARAMS),
    Parameter("vertex", "durationSeconds", f"{VERTEX_PARAMS}; {VERTEX_REFERENCE}"),
    Parameter("vertex", "resolution", VERTEX_PARAMS),
    Parameter("vertex", "personGeneration", VERTEX_PARAMS),
    Parameter("vertex", "negativePrompt", VERTEX_PARAMS),
    Parameter("vertex", "sampleCount", f"{VERTEX_PARAMS}; {VERTEX_VEO31}"),
    Parameter("vertex", "seed", VERTEX_PARAMS),
    Parameter("vertex", "generateAudio", f"{VERTEX_PARAMS}; {VERTEX_REFERENCE}"),
    Parameter("vertex", "enhancePrompt", VERTEX_PARAMS),
    Parameter("vertex", "resizeMode", f"{VERTEX_REFERENCE} ({UNCONFIRMED}: values and case)"),
    Parameter("vertex", "storageUri", VERTEX_PARAMS),
]


def _taken(backend: str) -> frozenset[str]:
    return frozenset(p.name for p in PARAMETERS if p.backend == backend)


def _unsupported(name: str) -> str:
    return f"`{name}` isn't supported by this model."


def _first_unsupported(ask: Ask) -> str | None:
    for name in ask.params:
        if name not in _taken(ask.backend):
            return _unsupported(name)
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _duration_type(ask: Ask) -> str | None:
    if ask.has("durationSeconds") and not _is_int(ask.get("durationSeconds")):
        return (
            f"durationSeconds needs to be a number (got {json.dumps(ask.get('durationSeconds'))})."
        )
    return None


def _duration(ask: Ask) -> int:
    value = ask.get("durationSeconds", 8)
    return value if _is_int(value) else 8


def _resolution(ask: Ask) -> str:
    return str(ask.get("resolution", "720p"))


def _person_generation(ask: Ask) -> str | None:
    """Gemini API: the values each mode takes (and a restricted region's)."""
    if not ask.has("personGeneration"):
        return None
    value = ask.get("personGeneration")
    if ask.restricted:
        allowed = {"allow_adult"}
    elif ask.mode in ("t2v", "extend"):
        allowed = {"allow_all"}
    else:  # i2v, flf2v, r2v
        allowed = {"allow_adult"}
    if value not in allowed:
        return f"{value} for personGeneration is currently not supported."
    return None


def _image_problem(name: str, image: Any, backend: str, gcs: dict[str, bytes]) -> str | None:
    """What is wrong with one image object (instances[0].image, .lastFrame, a reference image)."""
    if not isinstance(image, dict):
        return f"instances[0].{name} must be an object."
    for key in image:
        if key not in ("bytesBase64Encoded", "mimeType") and not (
            backend == "vertex" and key == "gcsUri"
        ):
            return _unsupported(key)
    sources = [k for k in ("bytesBase64Encoded", "gcsUri") if k in image]
    if len(sources) != 1:
        return f"instances[0].{name} needs exactly one of bytesBase64Encoded or gcsUri."
    mime = image.get("mimeType")
    if mime not in IMAGE_MAGIC:
        return (
            f"instances[0].{name}.mimeType {mime!r} is not supported; use image/jpeg or image/png."
        )
    if "gcsUri" in image:
        uri = str(image["gcsUri"])
        data = gcs.get(uri.removeprefix("gs://"))
        if not uri.startswith("gs://") or data is None:
            return f"instances[0].{name}.gcsUri {uri} was not found."
    else:
        encoded = image["bytesBase64Encoded"]
        if not isinstance(encoded, str):
            return f"instances[0].{name}.bytesBase64Encoded must be a string."
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return f"instances[0].{name}.bytesBase64Encoded is not valid base64."
    if len(data) > MAX_IMAGE_BYTES:
        return f"instances[0].{name} is {len(data)} bytes; the limit is 20 MB."
    if not data.startswith(IMAGE_MAGIC[mime]):
        return f"instances[0].{name} is not a {mime} image."
    return None


def _images(ask: Ask) -> str | None:
    for name in ("image", "lastFrame"):
        if name in ask.instance:
            problem = _image_problem(name, ask.instance[name], ask.backend, ask.gcs)
            if problem:
                return problem
    refs = ask.instance.get("referenceImages")
    if refs is not None:
        if not isinstance(refs, list) or not 1 <= len(refs) <= 3:
            return "instances[0].referenceImages takes 1 to 3 asset images."
        for i, ref in enumerate(refs):
            if not isinstance(ref, dict) or ref.get("referenceType") != "asset":
                return f"instances[0].referenceImages[{i}].referenceType must be asset."
            if set(ref) - {"image", "referenceType"}:
                return _unsupported(sorted(set(ref) - {"image", "referenceType"})[0])
            problem = _image_problem(
                f"referenceImages[{i}].image", ref.get("image"), ask.backend, ask.gcs
            )
            if problem:
                return problem
    return None


# The checks on a submitted request, read top to bottom; the first row that refuses answers.
RULES: list[Rule] = [
    Rule(
        "both",
        "a parameter the backend does not take",
        _first_unsupported,
        f"{LIVE_REPORTS} (message shape); {GEMINI_SDK}; {VERTEX_PARAMS}"
        f" (Vertex AI message shape {UNCONFIRMED})",
    ),
    Rule(
        "both",
        "instances[0] fields",
        lambda a: next(
            (
                _unsupported(k)
                for k in a.instance
                if k not in ("prompt", "image", "lastFrame", "referenceImages")
            ),
            None,
        ),
        f"{GEMINI_SDK}; {VERTEX_INSTANCE}; `video` (extension) is not served by this fake",
    ),
    Rule(
        "gemini",
        "a prompt",
        lambda a: (
            None
            if isinstance(a.instance.get("prompt"), str) and a.instance["prompt"].strip()
            else "instances[0].prompt is required."
        ),
        f"{GEMINI_VIDEO} ({UNCONFIRMED} whether an image alone is enough: refused)",
    ),
    Rule(
        "vertex",
        "a prompt for text-to-video (optional with an image)",
        lambda a: (
            None
            if (isinstance(a.instance.get("prompt"), str) and a.instance["prompt"].strip())
            or ("image" in a.instance and "prompt" not in a.instance)
            else "instances[0].prompt is required for text-to-video."
        ),
        VERTEX_REFERENCE,
    ),
    Rule(
        "both",
        "lastFrame needs image",
        lambda a: (
            "instances[0].lastFrame needs instances[0].image as well."
            if "lastFrame" in a.instance and "image" not in a.instance
            else None
        ),
        VERTEX_INSTANCE,
    ),
    Rule(
        "both",
        "referenceImages go without image and lastFrame",
        lambda a: (
            "instances[0].referenceImages cannot be combined with image or lastFrame."
            if "referenceImages" in a.instance
            and ("image" in a.instance or "lastFrame" in a.instance)
            else None
        ),
        VERTEX_INSTANCE,
    ),
    Rule(
        "both",
        "images: {bytesBase64Encoded (or gcsUri on Vertex AI), mimeType}, JPEG or PNG, at most"
        " 20 MB, valid base64, bytes of the type named",
        _images,
        f"{GEMINI_SDK}; {VERTEX_INSTANCE} (image/jpeg, image/png); {VERTEX_VEO2} (20 MB);"
        f" {LIVE_REPORTS} (`inlineData` refused on the Gemini API); the limits on the Gemini API"
        f" and the magic-byte check {UNCONFIRMED}",
    ),
    Rule(
        "vertex",
        "durationSeconds is required",
        lambda a: None if a.has("durationSeconds") else "durationSeconds is required.",
        VERTEX_REFERENCE,
    ),
    Rule(
        "both",
        "durationSeconds is a JSON number",
        _duration_type,
        f"{LIVE_REPORTS} ('needs to be a number')",
    ),
    Rule(
        "both",
        "durationSeconds 4, 6 or 8",
        lambda a: (
            None
            if _duration(a) in (4, 6, 8)
            else f"durationSeconds {_duration(a)} is not supported; use 4, 6 or 8."
        ),
        f"{GEMINI_VIDEO}; {VERTEX_VEO31}",
    ),
    Rule(
        "both",
        "aspectRatio 16:9 or 9:16",
        lambda a: (
            None
            if a.get("aspectRatio", "16:9") in ("16:9", "9:16")
            else f"aspectRatio {a.get('aspectRatio')!r} is not supported; use 16:9 or 9:16."
        ),
        f"{GEMINI_VIDEO}; {VERTEX_PARAMS}",
    ),
    Rule(
        "gemini",
        "resolution 720p, 1080p or 4k (lowercase)",
        lambda a: (
            None
            if _resolution(a) in ("720p", "1080p", "4k")
            else f"resolution {_resolution(a)!r} is not supported; use 720p, 1080p or 4k."
        ),
        f"{GEMINI_VIDEO} ({UNCONFIRMED}: the case of 4k on the wire; other cases refused)",
    ),
    Rule(
        "vertex",
        "resolution 720p or 1080p (4k only with vertex_4k)",
        lambda a: (
            None
            if _resolution(a) in ("720p", "1080p") or (a.vertex_4k and _resolution(a) == "4k")
            else f"resolution {_resolution(a)!r} is not supported; use 720p or 1080p."
        ),
        f"{VERTEX_PARAMS}; 4k {UNCONFIRMED} (later third-party pages only)",
    ),
    Rule(
        "both",
        "1080p and 4k only at 8 s",
        lambda a: (
            None
            if _resolution(a) == "720p" or _duration(a) == 8
            else f"{_resolution(a)} is not supported for a duration of {_duration(a)} seconds."
        ),
        f"{LIVE_REPORTS} (Gemini API message); Vertex AI {UNCONFIRMED}",
    ),
    Rule(
        "both",
        "reference images only at 8 s and 16:9",
        lambda a: (
            None
            if a.mode != "r2v" or (_duration(a) == 8 and a.get("aspectRatio", "16:9") == "16:9")
            else "referenceImages need durationSeconds 8 and aspectRatio 16:9."
        ),
        f"{VERTEX_VEO31}; {LIVE_REPORTS}; 16:9 on Gemini {UNCONFIRMED}",
    ),
    Rule(
        "gemini",
        "first and last frame only at 8 s",
        lambda a: (
            None
            if a.mode != "flf2v" or _duration(a) == 8
            else f"lastFrame is not supported for a duration of {_duration(a)} seconds."
        ),
        f"{GEMINI_VIDEO} ({UNCONFIRMED}: no page settles it; strict)",
    ),
    Rule(
        "gemini",
        "personGeneration: text-to-video allow_all; image, frames, references allow_adult;"
        " EU/UK/CH/MENA keys allow_adult",
        _person_generation,
        f"{GEMINI_VIDEO} (as quoted in {DISCUSS_181139}; message from the same); regions and"
        f" interpolation {UNCONFIRMED}",
    ),
    Rule(
        "vertex",
        "personGeneration allow_adult or dont_allow",
        lambda a: (
            None
            if a.get("personGeneration", "allow_adult") in ("allow_adult", "dont_allow")
            else f"{a.get('personGeneration')} for personGeneration is currently not supported."
        ),
        f"{VERTEX_PARAMS}; allow_all needs an allowlisted project ({UNCONFIRMED}: refused)",
    ),
    Rule(
        "gemini",
        "one video per request",
        lambda a: (
            None
            if not a.has("sampleCount")
            or (_is_int(a.get("sampleCount")) and a.get("sampleCount") == 1)
            else f"sampleCount {a.get('sampleCount')!r} is not supported; this model gives 1 video."
        ),
        f"{GEMINI_VIDEO} (per notes; message {UNCONFIRMED})",
    ),
    Rule(
        "vertex",
        "sampleCount 1 to 4",
        lambda a: (
            None
            if not a.has("sampleCount")
            or (_is_int(a.get("sampleCount")) and 1 <= a.get("sampleCount") <= 4)
            else f"sampleCount {a.get('sampleCount')!r} is not supported; use 1 to 4."
        ),
        VERTEX_VEO31,
    ),
    Rule(
        "both",
        "seed is an unsigned 32-bit integer",
        lambda a: (
            None
            if not a.has("seed") or (_is_int(a.get("seed")) and 0 <= a.get("seed") <= UINT32_MAX)
            else f"seed {a.get('seed')!r} is not supported; use 0 to {UINT32_MAX}."
        ),
        f"{VERTEX_PARAMS} (integer); range {UNCONFIRMED}",
    ),
    Rule(
        "both",
        "negativePrompt is a string",
        lambda a: (
            None
            if not a.has("negativePrompt") or isinstance(a.get("negativePrompt"), str)
            else "negativePrompt must be a string."
        ),
        f"{GEMINI_SDK}; {VERTEX_PARAMS}",
    ),
    Rule(
        "vertex",
        "generateAudio is required (Veo 3 models) and a boolean",
        lambda a: (
            None
            if isinstance(a.get("generateAudio"), bool)
            else "generateAudio is required for this model and must be true or false."
        ),
        VERTEX_REFERENCE,
    ),
    Rule(
        "vertex",
        "enhancePrompt may only be true",
        lambda a: (
            None
            if a.get("enhancePrompt", True) is True
            else "enhancePrompt false is not supported by this model."
        ),
        f"third-party pages ('only true is supported'); {UNCONFIRMED}",
    ),
    Rule(
        "vertex",
        "resizeMode pad or crop (lowercase), only with an image",
        lambda a: (
            None
            if not a.has("resizeMode")
            or (a.get("resizeMode") in ("pad", "crop") and a.mode in ("i2v", "flf2v"))
            else f"resizeMode {a.get('resizeMode')!r} is not supported"
            " (pad or crop, with instances[0].image)."
        ),
        f"{VERTEX_REFERENCE} ({UNCONFIRMED}: the SDK's enum is PAD/CROP; uppercase refused)",
    ),
    Rule(
        "vertex",
        "storageUri is a gs:// URI",
        lambda a: (
            None
            if not a.has("storageUri")
            or (isinstance(a.get("storageUri"), str) and a.get("storageUri").startswith("gs://"))
            else "storageUri must start with gs://."
        ),
        VERTEX_PARAMS,
    ),
]


def _shape_problem(body: Any) -> str | None:
    """The JSON shape every rule relies on."""
    if not isinstance(body, dict):
        return "Invalid JSON payload received."
    for key in body:
        if key not in ("instances", "parameters"):
            return f'Invalid JSON payload received. Unknown name "{key}": Cannot find field.'
    instances = body.get("instances")
    if not isinstance(instances, list) or len(instances) != 1 or not isinstance(instances[0], dict):
        return "instances must hold exactly one instance."
    if not isinstance(body.get("parameters", {}), dict):
        return "parameters must be an object."
    return None


# -- state ----------------------------------------------------------------------------------------


@dataclass
class Recorded:
    """One request the fake received."""

    at: float
    method: str
    path: str
    credential: str  # the API key, or "vertex:<project>/<location>" with the bearer token
    body: Any
    headers: dict[str, str]


@dataclass
class Operation:
    name: str
    backend: str
    owner: str  # the API key or vertex project that may see it
    model: str
    parameters: dict[str, Any]
    instance: dict[str, Any]
    polls: int = 0
    done_after: int = 1  # polls that answer "not done" before the answer is done
    finish: bool = True  # False: never done (until a test sets it)
    filtered: tuple[int, list[str]] | None = None
    error: dict[str, Any] | None = None  # done with this `error` instead of a response
    serial: int = 0  # the order of creation since reset (0-based)
    files: list[str] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)
    render: concurrent.futures.Future[list[bytes]] | None = None
    response: dict[str, Any] | None = None  # the done answer, made once


class FakeGoogle:
    """The fake's state, readable and scriptable from tests (thread-safe)."""

    def __init__(
        self,
        *,
        api_keys: tuple[str, ...] = (),
        vertex_projects: tuple[tuple[str, str], ...] = (),
        static_tokens: tuple[str, ...] = (),
        restricted_keys: tuple[str, ...] = (),
        vertex_4k: bool = False,
    ) -> None:
        self.api_keys = set(api_keys)
        self.vertex_projects = set(vertex_projects)
        self.restricted_keys = set(restricted_keys)
        self.vertex_4k = vertex_4k
        self.tokens: dict[str, str] = dict.fromkeys(static_tokens, "static")
        self.public_keys: dict[str, rsa.RSAPublicKey] = {}  # service-account email -> key
        self.lock = threading.Lock()
        self.requests: list[Recorded] = []
        self.operations: dict[str, Operation] = {}
        self.files: dict[str, tuple[str, bytes]] = {}  # id -> (owner, bytes)
        self.signed: dict[str, bytes] = {}  # token of a signed download location -> bytes
        self.gcs: dict[str, bytes] = {}  # "bucket/object" -> bytes
        # Scripting (see the module docstring)
        self.submit_faults: list[dict[str, Any]] = []
        self.poll_faults: list[dict[str, Any]] = []
        self.download_faults: list[dict[str, Any]] = []
        self.exhausted: set[str] = set()
        self.exhausted_retry_delay: str | None = None
        self.done_after = 1
        self.finish = True
        self.filter_next: tuple[int, list[str]] | None = None
        self.filter_submits: set[int] = set()
        self.filter_reasons: list[str] = list(DEFAULT_FILTER_REASONS)
        self.operation_errors: list[dict[str, Any] | None] = []
        self.inline_videos = False
        self.hold_submits = threading.Event()  # set: submits wait until it is cleared
        self.submit_arrived = threading.Event()
        self._created = 0
        self._videos: dict[tuple[int, int, int, bool, int], bytes] = {}
        self._rendering: dict[tuple[int, int, int, bool, int], threading.Lock] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="fake-veo")
        self.url = ""

    # -- test helpers ----------------------------------------------------------------------------

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.submit_faults.clear()
            self.poll_faults.clear()
            self.download_faults.clear()
            self.exhausted.clear()
            self.exhausted_retry_delay = None
            self.done_after = 1
            self.finish = True
            self.filter_next = None
            self.filter_submits = set()
            self.filter_reasons = list(DEFAULT_FILTER_REASONS)
            self.operation_errors.clear()
            self.inline_videos = False
            self._created = 0
            for op in self.operations.values():
                if op.render is not None:
                    op.render.cancel()  # a render nobody will poll for: drop it if not started
            self.operations.clear()
        self.hold_submits.clear()
        self.submit_arrived.clear()

    def submits(self) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.path.endswith(":predictLongRunning")]

    def requests_for(self, operation: str) -> list[Recorded]:
        """Polls of an operation and downloads of its files (not the signed second hop)."""
        with self.lock:
            op = self.operations[operation]
            out = []
            for r in self.requests:
                if (
                    r.path.endswith(operation)
                    or (isinstance(r.body, dict) and r.body.get("operationName") == operation)
                    or any(f in r.path for f in op.files)
                ):
                    out.append(r)
            return out

    def finish_all(self) -> None:
        with self.lock:
            self.finish = True
            for op in self.operations.values():
                op.finish = True

    def add_service_account(self, email: str, key: rsa.RSAPublicKey) -> None:
        self.public_keys[email] = key

    def _wait_released(self) -> None:
        deadline = time.monotonic() + 60
        while self.hold_submits.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)

    # -- videos ----------------------------------------------------------------------------------

    def video(
        self, duration: int, aspect: str, audio: bool, index: int, resolution: str = "720p"
    ) -> bytes:
        """A real MP4 of Google's output size for `resolution` and `aspect`. The encoded video is
        cached per size, duration and audio (a 4K encode takes seconds); `index` makes the bytes
        distinct by a trailing MP4 `free` box, which every reader skips."""
        width, height = SIZES[resolution]
        if aspect == "9:16":
            width, height = height, width
        return self._encoded(width, height, duration, audio) + _free_box(index)

    def _encoded(self, width: int, height: int, duration: int, audio: bool) -> bytes:
        key = (width, height, duration, audio, 0)
        with self.lock:
            if key in self._videos:
                return self._videos[key]
            gate = self._rendering.setdefault(key, threading.Lock())
        with gate:  # one encode per key, however many operations want it at once
            with self.lock:
                if key in self._videos:
                    return self._videos[key]
            data = _encode(width, height, duration, audio, COLOURS[(width + duration) % 4])
            with self.lock:
                self._videos[key] = data
        return data

    def _samples(self, op: Operation) -> list[bytes]:
        """The videos `op` delivers: its sampleCount, less any filtered."""
        params = op.parameters
        count = int(params.get("sampleCount", 1))
        filtered = op.filtered[0] if op.filtered else 0
        audio = op.backend == "gemini" or bool(params.get("generateAudio"))
        return [
            self.video(
                int(params.get("durationSeconds", 8)),
                str(params.get("aspectRatio", "16:9")),
                audio,
                op.serial + i,  # fanned-out operations get distinct videos
                str(params.get("resolution", "720p")),
            )
            for i in range(max(0, count - filtered))
        ]

    # -- the ASGI app ----------------------------------------------------------------------------

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        request = Request(scope, receive)
        response = await self.handle(request)
        await response(scope, receive, send)

    async def handle(self, request: Request) -> Response:
        path = request.url.path
        raw = await request.body()
        body: Any = None
        if raw and request.headers.get("content-type", "").startswith("application/json"):
            try:
                body = json.loads(raw)
            except ValueError:
                return _error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        elif raw:
            body = raw.decode("utf-8", "replace")
        if path == "/token" and request.method == "POST":
            return self._token(body if isinstance(body, str) else "")
        credential = self._credential(request)
        with self.lock:
            self.requests.append(
                Recorded(
                    at=time.time(),
                    method=request.method,
                    path=path + (f"?{request.url.query}" if request.url.query else ""),
                    credential=credential or "",
                    body=body,
                    headers=dict(request.headers),
                )
            )
        m = re.fullmatch(r"/signed/(\w+)", path)
        if m and request.method == "GET":  # a signed location: the token is the credential
            with self.lock:
                data = self.signed.get(m.group(1))
            if data is None:
                return _error(404, "NOT_FOUND", "The signed URL is not valid.")
            return Response(data, media_type="video/mp4")
        if credential is None:
            return _error(401, "UNAUTHENTICATED", "Request is missing valid credentials.")
        m = re.fullmatch(r"/v1beta/models/([\w.-]+):predictLongRunning", path)
        if m and request.method == "POST":
            return await self._submit("gemini", credential, m.group(1), body)
        m = re.fullmatch(r"/v1beta/(models/[\w.-]+/operations/\w+)", path)
        if m and request.method == "GET":
            return await self._poll("gemini", credential, m.group(1))
        m = re.fullmatch(r"/v1beta/files/(\w+):download", path)
        if m and request.method == "GET":
            return self._download(credential, m.group(1), request.query_params.get("alt"))
        vertex = r"/v1/(projects/([\w-]+)/locations/([\w-]+)/publishers/google/models/([\w.-]+))"
        m = re.fullmatch(vertex + ":predictLongRunning", path)
        if m and request.method == "POST":
            if credential != f"vertex:{m.group(2)}/{m.group(3)}":
                return _error(403, "PERMISSION_DENIED", "Permission denied on the project.")
            return await self._submit("vertex", credential, m.group(4), body)
        m = re.fullmatch(vertex + ":fetchPredictOperation", path)
        if m and request.method == "POST":
            name = body.get("operationName") if isinstance(body, dict) else None
            if not isinstance(name, str) or not name.startswith(m.group(1) + "/operations/"):
                return _error(400, "INVALID_ARGUMENT", "operationName does not match the model.")
            return await self._poll("vertex", credential, name)
        m = re.fullmatch(r"/download/storage/v1/b/([\w.-]+)/o/(.+)", path)
        if m and request.method == "GET":
            return self._gcs(f"{m.group(1)}/{m.group(2)}")
        return _error(404, "NOT_FOUND", f"no such method: {request.method} {path}")

    def _credential(self, request: Request) -> str | None:
        key = request.headers.get("x-goog-api-key")
        if key is not None:
            return key if key in self.api_keys else None
        auth = request.headers.get("authorization", "")
        if auth.startswith("Bearer "):
            token = auth.removeprefix("Bearer ")
            if token in self.tokens:
                match = re.search(r"/projects/([\w-]+)/locations/([\w-]+)/", request.url.path)
                if match:
                    return f"vertex:{match.group(1)}/{match.group(2)}"
                return "vertex:storage"
        return None

    def _fault(self, faults: list[dict[str, Any]]) -> Response | None:
        with self.lock:
            fault = faults.pop(0) if faults else None
        if fault is None:
            return None
        headers = {"Retry-After": str(fault["retry_after"])} if "retry_after" in fault else None
        details = list(fault.get("details", []))
        if "retry_delay" in fault:
            details.append(_retry_info(str(fault["retry_delay"])))
        return _error(
            fault["code"], fault["status"], fault["message"], headers=headers, details=details
        )

    async def _submit(self, backend: str, credential: str, model: str, body: Any) -> Response:
        self.submit_arrived.set()
        # Held by a test (threading.Event: set from the test's thread): answer only later.
        await asyncio.to_thread(self._wait_released)
        if credential in self.exhausted:
            details: list[dict[str, Any]] = [_QUOTA_FAILURE]
            if self.exhausted_retry_delay is not None:
                details.append(_retry_info(self.exhausted_retry_delay))
            return _error(429, "RESOURCE_EXHAUSTED", _QUOTA_MESSAGE[backend], details=details)
        fault = self._fault(self.submit_faults)
        if fault is not None:
            return fault
        models = GEMINI_MODELS if backend == "gemini" else VERTEX_MODELS
        if model not in models:
            return _error(404, "NOT_FOUND", f"models/{model} is not found for predictLongRunning.")
        problem = self._check(backend, credential, model, body)
        if problem is not None:
            return _error(400, "INVALID_ARGUMENT", problem)
        op_id = secrets.token_hex(8)
        if backend == "gemini":
            name = f"models/{model}/operations/{op_id}"
        else:
            p, loc = credential.removeprefix("vertex:").split("/")
            name = (
                f"projects/{p}/locations/{loc}/publishers/google/models/{model}/operations/{op_id}"
            )
        with self.lock:
            serial = self._created
            self._created += 1
            filtered = self.filter_next
            if serial in self.filter_submits:
                count = int((body.get("parameters") or {}).get("sampleCount", 1))
                filtered = (count, list(self.filter_reasons))
            op = Operation(
                name=name,
                backend=backend,
                owner=credential,
                model=model,
                parameters=dict(body.get("parameters") or {}),
                instance=dict(body["instances"][0]),
                done_after=self.done_after,
                finish=self.finish,
                filtered=filtered,
                error=self.operation_errors.pop(0) if self.operation_errors else None,
                serial=serial,
            )
            self.operations[name] = op
        if op.error is None and op.finish:
            self._start_render(op)  # usually ready by the time the operation is done
        return JSONResponse({"name": name})

    def _start_render(self, op: Operation) -> concurrent.futures.Future[list[bytes]]:
        with self.lock:
            if op.render is None:
                op.render = self._pool.submit(self._samples, op)
            return op.render

    def _check(self, backend: str, credential: str, model: str, body: Any) -> str | None:
        """The first problem Google would answer 400 to: the JSON shape, then `RULES`."""
        problem = _shape_problem(body)
        if problem is not None:
            return problem
        with self.lock:
            gcs = dict(self.gcs)
        ask = Ask(
            backend=backend,
            model=model,
            instance=body["instances"][0],
            params=body.get("parameters") or {},
            restricted=credential in self.restricted_keys,
            vertex_4k=self.vertex_4k,
            gcs=gcs,
        )
        for rule in RULES:
            if rule.backend in ("both", backend):
                problem = rule.refuses(ask)
                if problem is not None:
                    return problem
        return None

    async def _poll(self, backend: str, credential: str, name: str) -> Response:
        with self.lock:
            op = self.operations.get(name)
            visible = op is not None and op.owner == credential and op.backend == backend
        if op is None or not visible:
            return _error(404, "NOT_FOUND", f"Operation {name} not found.")
        fault = self._fault(self.poll_faults)
        if fault is not None:
            return fault
        with self.lock:
            op.polls += 1
            done = op.finish and op.polls > op.done_after
        if not done:
            return JSONResponse({"name": name, "metadata": {"progress": op.polls}})
        if op.error is not None:
            return JSONResponse({"name": name, "done": True, "error": dict(op.error)})
        samples = await asyncio.wrap_future(self._start_render(op))
        if op.response is None:
            made = self._response(op, samples)  # takes the lock itself
            with self.lock:
                op.response = op.response or made
        response = op.response
        return JSONResponse({"name": name, "done": True, "response": response})

    def _response(self, op: Operation, samples: list[bytes]) -> dict[str, Any]:
        filtered_count, reasons = op.filtered or (0, [])
        if op.backend == "gemini":
            out = []
            for data in samples:
                if self.inline_videos:
                    video = {
                        "encodedVideo": base64.b64encode(data).decode(),
                        "encoding": "video/mp4",
                    }
                else:
                    file_id = secrets.token_hex(6)
                    with self.lock:
                        self.files[file_id] = (op.owner, data)
                        if file_id not in op.files:
                            op.files.append(file_id)
                    video = {"uri": f"{self.url}/v1beta/files/{file_id}:download?alt=media"}
                out.append({"video": video})
            # Google's JSON leaves out empty lists and zero counts (proto3 JSON mapping).
            inner: dict[str, Any] = {"generatedSamples": out} if out else {}
            if filtered_count:
                inner["raiMediaFilteredCount"] = filtered_count
                inner["raiMediaFilteredReasons"] = reasons
            return {
                "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta."
                "PredictLongRunningResponse",
                "generateVideoResponse": inner,
            }
        videos = []
        storage = op.parameters.get("storageUri")
        for index, data in enumerate(samples):
            if storage:
                obj = f"{storage.removeprefix('gs://').rstrip('/')}/sample_{index}.mp4"
                with self.lock:
                    self.gcs[obj] = data
                    if obj.split("/", 1)[1] not in op.files:
                        op.files.append(obj.split("/", 1)[1])
                videos.append({"gcsUri": f"gs://{obj}", "mimeType": "video/mp4"})
            else:
                encoded = base64.b64encode(data).decode()
                videos.append({"bytesBase64Encoded": encoded, "mimeType": "video/mp4"})
        result: dict[str, Any] = {
            "@type": "type.googleapis.com/cloud.ai.large_models.vision.GenerateVideoResponse",
            "raiMediaFilteredCount": filtered_count,
        }
        if videos:
            result["videos"] = videos
        if reasons:
            result["raiMediaFilteredReasons"] = reasons
        return result

    def _download(self, credential: str, file_id: str, alt: str | None) -> Response:
        with self.lock:
            entry = self.files.get(file_id)
        if entry is None or entry[0] != credential:
            return _error(404, "NOT_FOUND", f"File {file_id} not found.")
        fault = self._fault(self.download_faults)
        if fault is not None:
            return fault
        if alt != "media":
            return _error(400, "INVALID_ARGUMENT", "Downloading a file needs alt=media.")
        token = secrets.token_hex(12)
        with self.lock:
            self.signed[token] = entry[1]
        # Google answers with a redirect to a signed location that needs no API key.
        return RedirectResponse(f"{self.url}/signed/{token}", status_code=302)

    def _gcs(self, obj: str) -> Response:
        with self.lock:
            data = self.gcs.get(unquote(obj))
        if data is None:
            return _error(404, "NOT_FOUND", f"No such object: {unquote(obj)}")
        return Response(data, media_type="video/mp4")

    def _token(self, form: str) -> Response:
        fields = {k: v[0] for k, v in parse_qs(form).items()}
        if fields.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        assertion = fields.get("assertion", "")
        try:
            head, payload, signature = assertion.split(".")
            claims = json.loads(_unb64(payload))
            key = self.public_keys[claims["iss"]]
            key.verify(
                _unb64(signature),
                f"{head}.{payload}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except Exception:
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        if "cloud-platform" not in str(claims.get("scope", "")) or claims["exp"] < time.time():
            return JSONResponse({"error": "invalid_scope"}, status_code=400)
        token = "ya29.fake-" + secrets.token_hex(8)
        with self.lock:
            self.tokens[token] = str(claims["iss"])
        return JSONResponse({"access_token": token, "expires_in": 3600, "token_type": "Bearer"})


_QUOTA_MESSAGE = {
    "gemini": "You exceeded your current quota, please check your plan and billing details.",
    "vertex": "Quota exceeded for aiplatform.googleapis.com/online_prediction_requests.",
}
_QUOTA_FAILURE: dict[str, Any] = {
    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
    "violations": [{"quotaMetric": "predict_long_running_requests", "quotaId": "PerMinute"}],
}


def _retry_info(delay: str) -> dict[str, str]:
    return {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}


def _free_box(index: int) -> bytes:
    """An ISO BMFF `free` box (size, type, payload) holding `index`: skipped by MP4 readers."""
    payload = f"fake-google-sample-{index}".encode()
    return (8 + len(payload)).to_bytes(4, "big") + b"free" + payload


def _encode(
    width: int, height: int, duration: int, audio: bool, colour: tuple[int, int, int]
) -> bytes:
    """Solid colour frames (and a quiet tone) at x264's cheapest settings."""
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[:] = colour
    sound = None
    if audio:
        t = np.arange(duration * 48000, dtype=np.float32) / 48000
        tone = (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        sound = np.stack([tone, tone])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v.mp4"
        encode_mp4(
            path,
            (frame for _ in range(duration * FPS)),
            width=width,
            height=height,
            fps=FPS,
            audio=sound,
            crf=51,
            preset="ultrafast",
            reproducible=False,
        )
        return path.read_bytes()


def _error(
    code: int,
    status: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    details: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return JSONResponse({"error": error}, status_code=code, headers=headers)


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@contextlib.contextmanager
def serve(fake: FakeGoogle) -> Iterator[FakeGoogle]:
    """Serve `fake` with uvicorn on 127.0.0.1 in a background thread."""
    # IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say TCP, and without it each
    # keep-alive answer waits out the client's 40 ms delayed ACK (Nagle's algorithm).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    fake.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(fake, log_level="warning", access_log=False))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the fake Google server did not start")
        time.sleep(0.02)
    try:
        yield fake
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def service_account(fake: FakeGoogle, directory: Path, email: str) -> Path:
    """A service-account key file whose token endpoint is the fake (a real RSA key pair)."""
    from cryptography.hazmat.primitives import serialization

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    fake.add_service_account(email, private.public_key())
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    info = {
        "type": "service_account",
        "project_id": email.split("@")[1].split(".")[0],
        "private_key_id": secrets.token_hex(8),
        "private_key": pem,
        "client_email": email,
        "client_id": "1234567890",
        "token_uri": f"{fake.url}/token",
    }
    path = directory / f"{email.split('@')[0]}.json"
    path.write_text(json.dumps(info))
    return path
