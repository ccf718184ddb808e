"""The Veo capability table (`providers/google_veo/rules.py`) and the request bodies built from it.

These are pure checks, with no server: every (backend, mode, person_generation) combination,
the resolution and duration rules, and what the 400 says would serve a refused request. The
same behaviour is checked over real HTTP against the fake Google in tests/test_veo_backends.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from reelserve.domain.errors import InvalidRequest
from reelserve.domain.models import default_models
from reelserve.domain.spec import GenerationSpec, parse_generation_request
from reelserve.providers.google_veo import rules
from reelserve.providers.google_veo.capabilities import admit, fit_model
from reelserve.providers.google_veo.rules import GEMINI, VERTEX, Backend
from reelserve.providers.google_veo.wire import request_body

MODELS = {m.id: m for m in default_models()}
GEMINI_KEY = Backend(GEMINI)
GEMINI_EU = Backend(GEMINI, restricted_region=True)
VERTEX_PROJECT = Backend(VERTEX)
VERTEX_4K = Backend(VERTEX, four_k=True)
IMAGE = "data:image/png;base64,iVBORw0KGgo="


def spec(**fields: Any) -> GenerationSpec:
    body = {"model": "veo3.1-fast-official", "prompt": "a fox", **fields}
    return parse_generation_request(body, MODELS)


def mode_fields(mode: str) -> dict[str, Any]:
    if mode == "t2v":
        return {}
    if mode == "i2v":
        return {"first_frame_image": IMAGE}
    return {"first_frame_image": IMAGE, "last_frame_image": IMAGE}


# What Google documents, written out here on its own (not read from veo_rules): the
# personGeneration value each backend applies for (mode, what the client sent), or None where
# it refuses. Gemini API: t2v allow_all only, i2v and first+last allow_adult only; restricted
# regions allow_adult only; Vertex AI: allow_adult (default) and dont_allow.
EXPECTED_PERSON = {
    "gemini": {
        ("t2v", None): "allow_all",
        ("t2v", "allow_adult"): None,
        ("t2v", "disallow"): None,
        ("i2v", None): "allow_adult",
        ("i2v", "allow_adult"): "allow_adult",
        ("i2v", "disallow"): None,
        ("flf2v", None): "allow_adult",
        ("flf2v", "allow_adult"): "allow_adult",
        ("flf2v", "disallow"): None,
    },
    "gemini-eu": {
        (mode, sent): (None if sent == "disallow" else "allow_adult")
        for mode in ("t2v", "i2v", "flf2v")
        for sent in (None, "allow_adult", "disallow")
    },
    "vertex": {
        (mode, sent): ("dont_allow" if sent == "disallow" else "allow_adult")
        for mode in ("t2v", "i2v", "flf2v")
        for sent in (None, "allow_adult", "disallow")
    },
}
BACKENDS = {"gemini": GEMINI_KEY, "gemini-eu": GEMINI_EU, "vertex": VERTEX_PROJECT}


@pytest.mark.parametrize("backend", sorted(EXPECTED_PERSON))
@pytest.mark.parametrize("mode", ["t2v", "i2v", "flf2v"])
@pytest.mark.parametrize("sent", [None, "allow_adult", "disallow"])
def test_person_generation_per_backend_and_mode(backend: str, mode: str, sent: str | None) -> None:
    fields = mode_fields(mode)
    if sent is not None:
        fields["person_generation"] = sent
    s = spec(**fields)
    assert s.person_generation_given is (sent is not None)
    expected = EXPECTED_PERSON[backend][(mode, sent)]
    refusal = rules.check(s, BACKENDS[backend])
    if expected is None:
        assert refusal is not None and refusal.param == "person_generation"
    else:
        assert refusal is None, refusal
        assert rules.applied(s, BACKENDS[backend]).person_generation == expected


def test_seed_scenario_one_is_served_by_a_gemini_key() -> None:
    # Every field at its default: no personGeneration is sent, and the Gemini API applies its
    # own default, allow_all.
    s = spec()
    assert rules.applied(s, GEMINI_KEY).person_generation == "allow_all"
    admit(s, [GEMINI_KEY])
    body = request_body(s, GEMINI_KEY, {"seed": 7, "samples": 1}, {}, storage_uri=None)
    assert body == {
        "instances": [{"prompt": "a fox"}],
        "parameters": {
            "aspectRatio": "16:9",
            "resolution": "720p",
            "durationSeconds": 8,
            "seed": 7,
        },
    }


def test_explicit_allow_adult_text_to_video_needs_vertex() -> None:
    s = spec(person_generation="allow_adult")
    with pytest.raises(InvalidRequest) as refused:
        admit(s, [GEMINI_KEY])
    assert refused.value.param == "person_generation"
    assert refused.value.message == (
        'person_generation "allow_adult" for text-to-video needs a Vertex AI credential; '
        "this server has only Gemini API keys"
    )
    admit(s, [GEMINI_KEY, VERTEX_PROJECT])  # a mixed server serves it (on Vertex)
    assert not rules.serves(s, GEMINI_KEY) and rules.serves(s, VERTEX_PROJECT)


def test_disallow_needs_vertex_in_every_mode() -> None:
    for mode in ("t2v", "i2v", "flf2v"):
        with pytest.raises(InvalidRequest, match="needs a Vertex AI credential"):
            admit(spec(person_generation="disallow", **mode_fields(mode)), [GEMINI_KEY, GEMINI_EU])


def test_4k_needs_gemini_or_vertex_4k() -> None:
    s = spec(resolution="4K")
    with pytest.raises(InvalidRequest) as refused:
        admit(s, [VERTEX_PROJECT])
    assert refused.value.param == "resolution"
    assert refused.value.message == (
        "no Google credential on this server can serve this request: Vertex AI credentials "
        'refuse resolution "4K" (they take only 720p, 1080p); a Gemini API key or a Vertex AI '
        "credential with google.vertex_4k enabled would"
    )
    admit(s, [VERTEX_4K])
    admit(s, [GEMINI_KEY])


def test_high_resolutions_need_eight_seconds_everywhere() -> None:
    for resolution in ("1080p", "4K"):
        with pytest.raises(InvalidRequest) as refused:
            parse_generation_request(
                {
                    "model": "veo3.1-fast-official",
                    "prompt": "x",
                    "resolution": resolution,
                    "duration": 4,
                },
                MODELS,
            )
        assert refused.value.param == "resolution"
        s = spec(resolution=resolution, duration=8)
        admit(s, [GEMINI_KEY])


def test_first_and_last_frame_on_gemini_only_at_eight_seconds() -> None:
    s = spec(duration=6, **mode_fields("flf2v"))
    with pytest.raises(InvalidRequest) as refused:
        admit(s, [GEMINI_KEY])
    assert refused.value.param == "duration"
    admit(s, [VERTEX_PROJECT])


def test_refusal_lists_every_backend_when_none_would_serve() -> None:
    # allow_adult text-to-video: Gemini refuses it; 4K: this Vertex project refuses it.
    s = spec(person_generation="allow_adult", resolution="4K")
    with pytest.raises(InvalidRequest) as refused:
        admit(s, [GEMINI_KEY, VERTEX_PROJECT])
    message = refused.value.message
    assert message.startswith("no Google credential on this server can serve this request")
    assert 'Gemini API keys refuse person_generation "allow_adult" for text-to-video' in message
    assert 'Vertex AI credentials refuse resolution "4K"' in message


def test_samples_per_request_and_backend_only_parameters() -> None:
    image = (b"\x89PNG", "image/png")
    s = spec(
        sample_count=3,
        generate_audio=True,
        resize_mode="crop",
        negative_prompt="text",
        seed=99,
        **mode_fields("i2v"),
    )
    op = {"seed": 99, "samples": 3}
    vertex = request_body(s, VERTEX_PROJECT, op, {"first": image}, storage_uri="gs://b/p/")
    assert vertex["parameters"] == {
        "aspectRatio": "16:9",
        "resolution": "720p",
        "durationSeconds": 8,
        "negativePrompt": "text",
        "seed": 99,
        "sampleCount": 3,
        "generateAudio": True,
        "resizeMode": "crop",
        "storageUri": "gs://b/p/",
    }
    assert vertex["instances"][0]["image"] == {
        "bytesBase64Encoded": "iVBORw==",
        "mimeType": "image/png",
    }
    gemini = request_body(
        s, GEMINI_KEY, {"seed": 99, "samples": 1}, {"first": image}, storage_uri="gs://b/p/"
    )
    # One video per request, always audio, no resize mode (reelserve fits the image), no GCS.
    assert set(gemini["parameters"]) == {
        "aspectRatio",
        "resolution",
        "durationSeconds",
        "negativePrompt",
        "seed",
    }
    assert rules.applied(s, GEMINI_KEY).samples_per_request == 1
    assert rules.applied(s, VERTEX_PROJECT).samples_per_request == 4


def test_models_listing_shows_each_backend() -> None:
    entry = MODELS["veo3.1-quality-official"]
    vertex_only = fit_model(entry, [VERTEX_PROJECT])
    assert vertex_only.resolutions == ["720p", "1080p"]
    both = fit_model(entry, [GEMINI_KEY, VERTEX_PROJECT]).public()
    assert both["resolutions"] == ["720p", "1080p", "4K"]
    assert set(both["backends"]) == {"gemini", "vertex"}
    assert both["backends"]["gemini"]["person_generation"]["t2v"] == []
    assert both["backends"]["gemini"]["person_generation_default"]["t2v"] == "allow_all"
    assert both["backends"]["vertex"]["person_generation"]["i2v"] == ["allow_adult", "disallow"]
    assert both["backends"]["vertex"]["samples_per_request"] == 4
    assert both["backends"]["gemini"]["samples_per_request"] == 1
    assert "4K" in fit_model(entry, [VERTEX_4K]).resolutions


def test_google_genai_is_not_a_dependency() -> None:
    """reelserve speaks Veo's REST API itself: it neither requires nor imports google-genai,
    so it installs beside any version of it (3.x refuses Veo on the Gemini API)."""
    import subprocess
    import sys
    from importlib.metadata import requires

    assert not [r for r in requires("reelserve") or [] if r.startswith("google-genai")]
    probe = (
        "import sys, reelserve.providers.google_veo.provider, "
        "reelserve.providers.google_veo.credentials; "
        "print('google.genai' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
