"""Every kind of Veo request against a Gemini-only, a Vertex-only and a mixed server.

Each case is submitted over real HTTP to reelserve, which talks to the local fake Google
(`tests/fakes/google_veo.py`, which enforces Google's documented rules on its own). A case
either completes with videos whose probed size, duration and audio match the request, or is
refused at submit with a 400 naming the field: never an upstream 400 that a table lookup could
have prevented. What each backend accepts is restated below, from Google's pages, as this test's
own oracle (it imports nothing of the provider's table).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.fakes.google_veo import FakeGoogle, serve
from tests.support import LiveServer, make_settings, static_server, submit, wait_task

GEMINI_KEY = "AIzaMatrixKey0001"
VERTEX_TOKEN = "ya29.matrix-token"
PROJECT = ("proj-matrix", "us-central1")
FAST = "veo3.1-fast-official"
QUALITY = "veo3.1-quality-official"
QUICK = {
    "poll_interval": 0.05,
    "poll_max_interval": 0.1,
    "retry_initial_delay": 0.05,
    "retry_max_delay": 0.5,
    "retry_attempts": 3,
    "request_timeout": 30,
    "deadline": 120,
}
SIZES = {"720p": (1280, 720), "1080p": (1920, 1080), "4K": (3840, 2160)}
SERVERS = ("gemini", "vertex", "mixed")

# -- the oracle: what Google documents (see docs/providers/google-veo.md for the pages) ---------


def mode_of(body: dict[str, Any]) -> str:
    if "last_frame_image" in body:
        return "flf2v"
    return "i2v" if "first_frame_image" in body else "t2v"


def gemini_refuses(body: dict[str, Any]) -> str | None:
    """Gemini API: 1080p and 4k only at 8 s; first+last frame only at 8 s (strict reading);
    personGeneration: text-to-video takes only allow_all (which the seed cannot send), image
    modes only allow_adult."""
    resolution, duration = body.get("resolution", "720p"), body.get("duration", 8)
    if resolution in ("1080p", "4K") and duration != 8:
        return "resolution"
    if mode_of(body) == "flf2v" and duration != 8:
        return "duration"
    person = body.get("person_generation")
    if person is not None and (mode_of(body) == "t2v" or person == "disallow"):
        return "person_generation"
    return None


def vertex_refuses(body: dict[str, Any]) -> str | None:
    """Vertex AI: 720p and 1080p (1080p at 8 s, strict); 4K not confirmed, so not enabled;
    personGeneration allow_adult or dont_allow in every mode."""
    resolution, duration = body.get("resolution", "720p"), body.get("duration", 8)
    if resolution == "4K":
        return "resolution"
    if resolution == "1080p" and duration != 8:
        return "resolution"
    return None


def expected_refusal(server: str, body: dict[str, Any]) -> str | None:
    checks = {"gemini": [gemini_refuses], "vertex": [vertex_refuses]}
    checks["mixed"] = [gemini_refuses, vertex_refuses]
    found = [check(body) for check in checks[server]]
    return None if None in found else found[0]


def applied_person(backend: str, body: dict[str, Any]) -> str:
    if backend == "gemini":
        return "allow_all" if mode_of(body) == "t2v" else "allow_adult"
    return str(body.get("person_generation") or "allow_adult")


# -- servers ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def google() -> Iterator[FakeGoogle]:
    fake = FakeGoogle(
        api_keys=(GEMINI_KEY,), vertex_projects=(PROJECT,), static_tokens=(VERTEX_TOKEN,)
    )
    with serve(fake) as running:
        yield running


def google_settings(fake: FakeGoogle, server: str) -> dict[str, Any]:
    settings: dict[str, Any] = {"base_url": fake.url, "vertex_base_url": fake.url, **QUICK}
    if server in ("gemini", "mixed"):
        settings["api_keys"] = [{"key": GEMINI_KEY, "id": "gemini-key"}]
    if server in ("vertex", "mixed"):
        project, location = PROJECT
        settings["vertex"] = [
            {"project": project, "location": location, "access_token": VERTEX_TOKEN}
        ]
    return settings


@pytest.fixture(scope="module")
def servers(
    google: FakeGoogle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, tuple[LiveServer, str]]]:
    running: dict[str, tuple[LiveServer, str]] = {}
    try:
        for server in SERVERS:
            data = tmp_path_factory.mktemp(f"veo-{server}") / "data"
            live = LiveServer(make_settings(data, google=google_settings(google, server)))
            live.start()
            running[server] = (live, live.mint("live", server))
        yield running
    finally:
        for live, _ in running.values():
            live.stop()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    root = tmp_path_factory.mktemp("veo-images")
    Image.new("RGB", (640, 360), (200, 60, 40)).save(root / "first.jpg", quality=95)
    Image.new("RGB", (480, 480), (40, 60, 200)).save(root / "last.png")
    with static_server(root) as base:
        yield {"first_frame_image": f"{base}/first.jpg", "last_frame_image": f"{base}/last.png"}


@pytest.fixture()
def fake(google: FakeGoogle) -> FakeGoogle:
    google.reset()
    return google


def client_for(servers: dict[str, tuple[LiveServer, str]], server: str) -> httpx.Client:
    live, key = servers[server]
    return live.client(key)


def with_images(body: dict[str, Any], mode: str, images: dict[str, str]) -> dict[str, Any]:
    if mode in ("i2v", "flf2v"):
        body = {**body, "first_frame_image": images["first_frame_image"]}
    if mode == "flf2v":
        body = {**body, "last_frame_image": images["last_frame_image"]}
    return body


def check_case(client: httpx.Client, fake: FakeGoogle, server: str, body: dict[str, Any]) -> None:
    """Submit `body`: refused at submit exactly where the oracle says, else completed with
    videos that match it."""
    refusal = expected_refusal(server, body)
    response = client.post("/v1/videos/generations", json=body)
    if refusal is not None:
        assert response.status_code == 400, (server, body, response.text)
        error = response.json()["error"]
        assert error["param"] == refusal, (server, body, error)
        assert fake.submits() == [], "a refused request reached Google"
        return
    assert response.status_code == 200, (server, body, response.text)
    task_id = response.json()["data"][0]["task_id"]
    final = wait_task(client, task_id, timeout=120)
    assert final["status"] == "completed", (server, body, final.get("error"))
    videos = final["result"]["videos"]
    assert len(videos) == body.get("sample_count", 1)
    width, height = SIZES[body.get("resolution", "720p")]
    if body.get("aspect_ratio") == "9:16":
        width, height = height, width
    backends = {op.backend for op in fake.operations.values()}
    if server != "mixed":
        assert backends == {server}
    for video in videos:
        assert (video["width"], video["height"]) == (width, height), video
        assert video["duration"] == body.get("duration", 8)
        assert video["has_audio"] is bool(body.get("generate_audio", False))
        assert isinstance(video["seed"], int)
        assert video["person_generation"] in {applied_person(b, body) for b in backends}
        if "seed" in body and body.get("sample_count", 1) == 1:
            assert video["seed"] == body["seed"]
    # Each operation was polled and read with the credential that made it.
    for name, op in fake.operations.items():
        assert {r.credential for r in fake.requests_for(name)} == {op.owner}


# -- the cases --------------------------------------------------------------------------------

SCENARIOS = {
    "1-text-basic": {"model": FAST, "prompt": "a golden retriever running on the beach"},
    "2-text-full": {
        "model": QUALITY,
        "prompt": "a ragdoll cat walking through a sunlit living room",
        "negative_prompt": "blurry, low quality, watermark, text",
        "duration": 8,
        "aspect_ratio": "16:9",
        "resolution": "1080p",
        "seed": 12345,
        "generate_audio": True,
        "person_generation": "disallow",
        "enhance_prompt": True,
    },
    "3-first-frame": {
        "model": FAST,
        "prompt": "the cat slowly walks forward",
        "first_frame_image": "first",
        "duration": 8,
        "resolution": "720p",
    },
    "4-first-last": {
        "model": QUALITY,
        "prompt": "smooth cinematic transition",
        "first_frame_image": "first",
        "last_frame_image": "last",
        "duration": 8,
        "resolution": "1080p",
    },
    "5-audio": {
        "model": QUALITY,
        "prompt": "a busy coffee shop",
        "duration": 8,
        "generate_audio": True,
        "aspect_ratio": "16:9",
    },
    "portrait": {"model": FAST, "prompt": "a tall tower", "duration": 4, "aspect_ratio": "9:16"},
}


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_seed_scenarios_and_portrait(
    servers: dict[str, tuple[LiveServer, str]],
    fake: FakeGoogle,
    images: dict[str, str],
    server: str,
    scenario: str,
) -> None:
    body = {k: images[k] if k.endswith("_image") else v for k, v in SCENARIOS[scenario].items()}
    with client_for(servers, server) as client:
        check_case(client, fake, server, body)


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("mode", ["t2v", "i2v", "flf2v"])
@pytest.mark.parametrize("person", [None, "allow_adult", "disallow"])
def test_person_generation_by_mode(
    servers: dict[str, tuple[LiveServer, str]],
    fake: FakeGoogle,
    images: dict[str, str],
    server: str,
    mode: str,
    person: str | None,
) -> None:
    body = with_images({"model": FAST, "prompt": "people in a park", "duration": 8}, mode, images)
    if person is not None:
        body["person_generation"] = person
    with client_for(servers, server) as client:
        check_case(client, fake, server, body)


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("samples", [1, 2, 3, 4])
def test_sample_count(
    servers: dict[str, tuple[LiveServer, str]], fake: FakeGoogle, server: str, samples: int
) -> None:
    body = {"model": FAST, "prompt": "takes", "duration": 4, "sample_count": samples, "seed": 5}
    with client_for(servers, server) as client:
        check_case(client, fake, server, body)
    submits = len(fake.submits())
    if server == "gemini":
        assert submits == samples  # one video per request: one operation per sample
    elif server == "vertex":
        assert submits == 1


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("audio", [True, False])
def test_generate_audio(
    servers: dict[str, tuple[LiveServer, str]], fake: FakeGoogle, server: str, audio: bool
) -> None:
    body = {"model": QUALITY, "prompt": "rain", "duration": 4, "generate_audio": audio}
    with client_for(servers, server) as client:
        check_case(client, fake, server, body)


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("resolution", ["1080p", pytest.param("4K", marks=pytest.mark.slow)])
@pytest.mark.parametrize("duration", [4, 8])
def test_high_resolutions(
    servers: dict[str, tuple[LiveServer, str]],
    fake: FakeGoogle,
    server: str,
    resolution: str,
    duration: int,
) -> None:
    body = {"model": FAST, "prompt": "detail", "duration": duration, "resolution": resolution}
    with client_for(servers, server) as client:
        check_case(client, fake, server, body)


@pytest.mark.slow
@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("mode", ["i2v", "flf2v"])
def test_frames_at_4k(
    servers: dict[str, tuple[LiveServer, str]],
    fake: FakeGoogle,
    images: dict[str, str],
    server: str,
    mode: str,
) -> None:
    body = with_images(
        {"model": QUALITY, "prompt": "frames", "duration": 8, "resolution": "4K"}, mode, images
    )
    with client_for(servers, server) as client:
        check_case(client, fake, server, body)
    if fake.operations:
        (op,) = fake.operations.values()
        # Images smaller than the output go as they are: never upscaled to 4K.
        assert op.instance["image"]["mimeType"] == "image/jpeg"


@pytest.mark.parametrize("server", SERVERS)
def test_429_with_retry_info_is_waited_out(
    servers: dict[str, tuple[LiveServer, str]], fake: FakeGoogle, server: str
) -> None:
    fake.submit_faults.append(
        {
            "code": 429,
            "status": "RESOURCE_EXHAUSTED",
            "message": "Quota exceeded.",
            "retry_delay": "0.3s",
        }
    )
    body = {"model": FAST, "prompt": "busy", "duration": 4}
    with client_for(servers, server) as client:
        check_case(client, fake, server, body)
    first, second = fake.submits()
    if server == "mixed":
        assert first.credential != second.credential  # failed over to the other backend
    else:
        assert second.at - first.at >= 0.28  # waited as RetryInfo said


@pytest.mark.parametrize("server", SERVERS)
def test_partial_safety_filtering(
    servers: dict[str, tuple[LiveServer, str]], fake: FakeGoogle, server: str
) -> None:
    reason = "The video was filtered for safety."
    body: dict[str, Any] = {"model": FAST, "prompt": "crowd", "duration": 4, "sample_count": 2}
    if server == "gemini":
        fake.filter_submits = {0}  # the first of two operations
        fake.filter_reasons = [reason]
    else:
        fake.filter_next = (1, [reason])  # one of the request's two samples
        if server == "mixed":
            body["person_generation"] = "allow_adult"  # text-to-video: Vertex AI only
    with client_for(servers, server) as client:
        task_id = submit(client, body)
        final = wait_task(client, task_id, timeout=60)
    assert final["status"] == "completed", final.get("error")
    assert len(final["result"]["videos"]) == 1
    (withheld,) = final["result"]["withheld"]
    assert (withheld["code"], withheld["count"]) == ("content_filtered", 1)
    assert reason in withheld["message"]


@pytest.mark.parametrize("server", SERVERS)
def test_total_safety_filtering_fails_content_filtered(
    servers: dict[str, tuple[LiveServer, str]], fake: FakeGoogle, server: str
) -> None:
    fake.filter_next = (4, ["58061214: the prompt names a public figure"])
    with client_for(servers, server) as client:
        task_id = submit(
            client, {"model": FAST, "prompt": "a famous person", "duration": 4, "sample_count": 2}
        )
        final = wait_task(client, task_id, timeout=60)
    assert final["status"] == "failed", final
    assert final["error"]["code"] == "content_filtered"
    assert "public figure" in final["error"]["message"]
    assert not [r for r in fake.requests if ":download" in r.path or "/download/" in r.path]


def test_models_listing_per_server(servers: dict[str, tuple[LiveServer, str]]) -> None:
    expected = {
        "gemini": (["720p", "1080p", "4K"], {"gemini"}),
        "vertex": (["720p", "1080p"], {"vertex"}),
        "mixed": (["720p", "1080p", "4K"], {"gemini", "vertex"}),
    }
    for server, (resolutions, backends) in expected.items():
        with client_for(servers, server) as client:
            models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        veo = models[FAST]
        assert veo["resolutions"] == resolutions, server
        assert set(veo["backends"]) == backends, server
