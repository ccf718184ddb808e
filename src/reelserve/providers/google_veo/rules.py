"""Veo 3.1 as Google serves it: what each backend takes, one row per rule, with its source.

Google serves Veo 3.1 (and 3.1 Fast) on two backends that accept different requests:

- the **Gemini API** (API keys from Google AI Studio), and
- **Vertex AI** (Google Cloud projects).

A request is accepted at submit only if some configured credential's backend can serve it
exactly as asked (`refusal` below is the submit check; the worker uses `serves` to pick a
credential). Omitted fields take the backend's own default; a value the client sent is either
honoured or refused, never widened. The tables are read top to bottom; each row names the page
it comes from. Rows marked *unconfirmed* are the strict reading of pages that do not settle the
question: reelserve refuses rather than risk a paid request Google may reject.

Nothing here does I/O. The local fake Google in `tests/fakes/google_veo.py` keeps its own copy of
these rules, written from the same pages and never imported from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from reelserve.domain.spec import GenerationSpec

GEMINI = "gemini"
VERTEX = "vertex"
BACKEND_NAMES = {GEMINI: "a Gemini API key", VERTEX: "a Vertex AI credential"}
BACKEND_PLURALS = {GEMINI: "Gemini API keys", VERTEX: "Vertex AI credentials"}

GEMINI_DOC = "ai.google.dev/gemini-api/docs/video"
GEMINI_LIMITS = f"{GEMINI_DOC} (Limitations)"
VERTEX_DOC = "cloud.google.com/vertex-ai/generative-ai/docs/model-reference/veo-video-generation"

MODE_NAMES = {"t2v": "text-to-video", "i2v": "image-to-video", "flf2v": "first+last frame"}
ALL_MODES = ("t2v", "i2v", "flf2v")

# The seed's `person_generation` values, in Google's words.
PERSON_UPSTREAM = {"allow_adult": "allow_adult", "disallow": "dont_allow"}
PERSON_CLIENT = {v: k for k, v in PERSON_UPSTREAM.items()}
# The seed's resolutions, in Google's words (`resolution` parameter).
RESOLUTION_UPSTREAM = {"720p": "720p", "1080p": "1080p", "4K": "4k"}
# Image inputs: the largest decoded image Google takes, and the types it takes.
MAX_IMAGE_BYTES = 20 * 1024 * 1024
IMAGE_TYPES = ("image/jpeg", "image/png")


@dataclass(frozen=True)
class Backend:
    """What one credential can ask for: its backend and what its account is allowed."""

    kind: str  # GEMINI | VERTEX
    # A Gemini API key used from the EU, the UK, Switzerland or the Middle East and North
    # Africa: Google allows only `allow_adult` there.
    restricted_region: bool = False
    # Vertex AI only: 4K is served (`google.vertex_4k`, off until confirmed).
    four_k: bool = False


# -- the tables ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PersonRule:
    """The `personGeneration` values a backend takes in some modes, and its default."""

    backend: str
    restricted_region: bool | None  # None: either
    modes: tuple[str, ...]
    allowed: tuple[str, ...]
    default: str
    source: str


PERSON_GENERATION: tuple[PersonRule, ...] = (
    PersonRule(GEMINI, True, ALL_MODES, ("allow_adult",), "allow_adult", GEMINI_LIMITS),
    PersonRule(GEMINI, False, ("t2v",), ("allow_all",), "allow_all", GEMINI_DOC),
    PersonRule(GEMINI, False, ("i2v", "flf2v"), ("allow_adult",), "allow_adult", GEMINI_DOC),
    PersonRule(VERTEX, None, ALL_MODES, ("allow_adult", "dont_allow"), "allow_adult", VERTEX_DOC),
)


@dataclass(frozen=True)
class ResolutionRule:
    """A resolution a backend serves, at which durations."""

    backend: str
    resolution: str
    durations: tuple[int, ...]
    source: str
    needs_four_k: bool = False  # Vertex: only with `google.vertex_4k`


RESOLUTIONS: tuple[ResolutionRule, ...] = (
    ResolutionRule(GEMINI, "720p", (4, 6, 8), GEMINI_DOC),
    ResolutionRule(GEMINI, "1080p", (8,), GEMINI_DOC),
    ResolutionRule(GEMINI, "4K", (8,), GEMINI_DOC),
    ResolutionRule(VERTEX, "720p", (4, 6, 8), VERTEX_DOC),
    # Vertex's page does not say whether 1080p needs 8 s: unconfirmed, the Gemini API's rule.
    ResolutionRule(VERTEX, "1080p", (8,), f"{VERTEX_DOC} (8 s only: unconfirmed)"),
    # Listed by later third-party pages only: unconfirmed, off unless `google.vertex_4k`.
    ResolutionRule(VERTEX, "4K", (8,), f"{VERTEX_DOC} (unconfirmed)", needs_four_k=True),
)


@dataclass(frozen=True)
class ModeRule:
    """A mode a backend serves only at some durations."""

    backend: str
    mode: str
    durations: tuple[int, ...]
    source: str


MODE_DURATIONS: tuple[ModeRule, ...] = (
    # Reports agree that reference images and extension need 8 s; whether first+last frame
    # (interpolation) does is not settled: unconfirmed, the strict reading.
    ModeRule(GEMINI, "flf2v", (8,), f"{GEMINI_DOC} (8 s only: unconfirmed)"),
)


@dataclass(frozen=True)
class BackendRule:
    """What else a backend takes: videos per request and the optional parameters."""

    backend: str
    samples_per_request: int
    seed: bool  # takes `seed`
    generate_audio: bool  # takes `generateAudio` (else: audio is always generated)
    resize_mode: bool  # takes `resizeMode` (else: reelserve fits the image itself)
    storage_uri: bool  # takes `storageUri`
    source: str


BACKENDS: tuple[BackendRule, ...] = (
    BackendRule(GEMINI, 1, True, False, False, False, GEMINI_DOC),
    BackendRule(VERTEX, 4, True, True, True, True, VERTEX_DOC),
)

# Google's docs give no other rule on the seed's fields: aspect ratios 16:9 and 9:16, durations
# 4, 6 and 8 s, negative prompts and first (+ last) frames are served by both backends
# (GEMINI_DOC, VERTEX_DOC). `enhancePrompt` is never sent: the seed allows only `true`, Google's
# default, and the Gemini API does not list the parameter.


# -- lookups ---------------------------------------------------------------------------------


def backend_rule(kind: str) -> BackendRule:
    for row in BACKENDS:
        if row.backend == kind:
            return row
    raise KeyError(kind)


def person_rule(backend: Backend, mode: str) -> PersonRule:
    for row in PERSON_GENERATION:
        region_ok = row.restricted_region in (None, backend.restricted_region)
        if row.backend == backend.kind and region_ok and mode in row.modes:
            return row
    raise KeyError((backend, mode))


def resolution_rule(backend: Backend, resolution: str) -> ResolutionRule | None:
    for row in RESOLUTIONS:
        if row.backend == backend.kind and row.resolution == resolution:
            if row.needs_four_k and not backend.four_k:
                return None
            return row
    return None


@dataclass(frozen=True)
class Refusal:
    """Why one backend cannot serve a request: the field, and what the backend takes."""

    param: str
    reason: str  # e.g. 'person_generation "allow_adult" for text-to-video'
    takes: str  # e.g. "only allow_all"


def check(spec: GenerationSpec, backend: Backend) -> Refusal | None:
    """The first field of `spec` that `backend` cannot serve exactly as asked, or None."""
    mode = MODE_NAMES[spec.mode]
    resolution = resolution_rule(backend, spec.resolution)
    if resolution is None:
        served = [
            r.resolution
            for r in RESOLUTIONS
            if r.backend == backend.kind and resolution_rule(backend, r.resolution)
        ]
        return Refusal("resolution", f'resolution "{spec.resolution}"', "only " + ", ".join(served))
    if spec.duration not in resolution.durations:
        return Refusal(
            "duration",
            f'resolution "{spec.resolution}" at {spec.duration} s',
            f"{spec.resolution} only at " + " or ".join(f"{d} s" for d in resolution.durations),
        )
    for row in MODE_DURATIONS:
        if (row.backend, row.mode) == (backend.kind, spec.mode) and (
            spec.duration not in row.durations
        ):
            return Refusal(
                "duration",
                f"{mode} at {spec.duration} s",
                f"{mode} only at " + " or ".join(f"{d} s" for d in row.durations),
            )
    person = person_rule(backend, spec.mode)
    if spec.person_generation_given:
        wanted = PERSON_UPSTREAM[spec.person_generation]
        if wanted not in person.allowed:
            takes = " or ".join(PERSON_CLIENT.get(a, a) for a in person.allowed)
            return Refusal(
                "person_generation",
                f'person_generation "{spec.person_generation}" for {mode}',
                f"only {takes} there",
            )
    return None


def serves(spec: GenerationSpec, backend: Backend) -> bool:
    return check(spec, backend) is None


def refusal(spec: GenerationSpec, backends: Sequence[Backend]) -> tuple[str, str] | None:
    """None if some backend serves `spec`; else (param, message) for a 400 that says what
    would serve it, e.g. 'person_generation "disallow" for text-to-video needs a Vertex AI
    credential; this server has only Gemini API keys'."""
    if not backends:
        return None
    refusals = [(b, check(spec, b)) for b in backends]
    if any(r is None for _, r in refusals):
        return None
    first = refusals[0][1]
    assert first is not None
    # What would serve it: each backend kind at its most capable.
    capable = [
        kind
        for kind in (GEMINI, VERTEX)
        if serves(spec, Backend(kind, restricted_region=False, four_k=True))
    ]
    needs = " or ".join(BACKEND_NAMES[k] for k in capable)
    if VERTEX in capable and not serves(spec, Backend(VERTEX)):
        needs += " with google.vertex_4k enabled"
    have = sorted({b.kind for b in backends})
    if capable and not set(capable) & set(have):
        has = " and ".join(BACKEND_PLURALS[k] for k in have)
        return first.param, f"{first.reason} needs {needs}; this server has only {has}"
    parts = []
    seen: set[tuple[str, str]] = set()
    for backend, why in refusals:
        assert why is not None
        label = BACKEND_PLURALS[backend.kind]
        if backend.restricted_region:
            label += " of restricted regions"
        if (label, why.reason) in seen:
            continue
        seen.add((label, why.reason))
        parts.append(f"{label} refuse {why.reason} (they take {why.takes})")
    message = "no Google credential on this server can serve this request: " + "; ".join(parts)
    if capable:
        message += f"; {needs} would"
    return first.param, message


@dataclass(frozen=True)
class Applied:
    """What a backend is asked for a spec: the parameters whose value depends on it."""

    person_generation: str  # Google's value
    samples_per_request: int
    seed: bool
    generate_audio: bool
    resize_mode: bool
    storage_uri: bool


def applied(spec: GenerationSpec, backend: Backend) -> Applied:
    """The backend's own values for `spec` (which it must serve: see `check`)."""
    person = person_rule(backend, spec.mode)
    value = PERSON_UPSTREAM[spec.person_generation] if spec.person_generation_given else None
    row = backend_rule(backend.kind)
    return Applied(
        person_generation=value or person.default,
        samples_per_request=row.samples_per_request,
        seed=row.seed,
        generate_audio=row.generate_audio,
        resize_mode=row.resize_mode,
        storage_uri=row.storage_uri,
    )


def describe(backend: Backend) -> dict[str, Any]:
    """What a backend can do, as `GET /v1/models` shows it per configured backend."""
    resolutions = [r for r in RESOLUTIONS if resolution_rule(backend, r.resolution) is not None]
    row = backend_rule(backend.kind)
    person: dict[str, list[str]] = {}
    for mode in ALL_MODES:
        rule = person_rule(backend, mode)
        person[mode] = [PERSON_CLIENT[a] for a in rule.allowed if a in PERSON_CLIENT]
    return {
        "resolutions": [r.resolution for r in resolutions],
        "resolution_durations": {
            r.resolution: list(r.durations) for r in resolutions if r.durations != (4, 6, 8)
        },
        "mode_durations": {
            r.mode: list(r.durations) for r in MODE_DURATIONS if r.backend == backend.kind
        },
        "samples_per_request": row.samples_per_request,
        "person_generation": person,
        "person_generation_default": {m: person_rule(backend, m).default for m in ALL_MODES},
        "seed": row.seed,
        "audio_optional": row.generate_audio,
        "resize_mode": "upstream" if row.resize_mode else "reelserve",
    }
