"""The google_veo provider against a local fake of the Gemini API and Vertex AI.

reelserve runs for real (uvicorn on loopback, SQLite, the worker, PyAV) with a live key, and its
REST client talks HTTP to `tests/fakes/google_veo.py` (pointed there by `google.base_url` and
`google.vertex_base_url`), which enforces Google's documented rules on its own. Every test
checks what arrived upstream as well as what the client got back. The matrix of every backend
against every request kind is tests/test_veo_backends.py.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.google_veo import FakeGoogle, serve, service_account
from tests.support import LiveServer, make_settings, static_server, submit, wait_task

KEY_A = "AIzaFakeKeyAlpha0001"
KEY_B = "AIzaFakeKeyBravo0002"
FAST = "veo3.1-fast-official"
QUALITY = "veo3.1-quality-official"
QUICK = {
    "poll_interval": 0.05,
    "poll_max_interval": 0.2,
    "retry_initial_delay": 0.05,
    "retry_max_delay": 0.5,
    "retry_attempts": 3,
    "request_timeout": 20,
    "deadline": 60,
}


def gemini_settings(fake: FakeGoogle, **extra: Any) -> dict[str, Any]:
    return {
        "api_keys": [
            {"key": KEY_A, "id": "key-a", "max_concurrency": 1},
            {"key": KEY_B, "id": "key-b", "max_concurrency": 1},
        ],
        "base_url": fake.url,
        **QUICK,
        **extra,
    }


@pytest.fixture(scope="module")
def gemini_fake() -> Iterator[FakeGoogle]:
    with serve(FakeGoogle(api_keys=(KEY_A, KEY_B))) as fake:
        yield fake


@pytest.fixture(scope="module")
def gemini(
    gemini_fake: FakeGoogle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    data = tmp_path_factory.mktemp("veo-gemini") / "data"
    live = LiveServer(make_settings(data, google=gemini_settings(gemini_fake))).start()
    yield live
    live.stop()


@pytest.fixture()
def fake(gemini_fake: FakeGoogle) -> FakeGoogle:
    gemini_fake.reset()
    return gemini_fake


@pytest.fixture(scope="module")
def live_key(gemini: LiveServer) -> str:
    return gemini.mint("live", "veo-tests")


@pytest.fixture()
def client(gemini: LiveServer, live_key: str) -> Iterator[httpx.Client]:
    with gemini.client(live_key) as c:
        yield c


def run(client: httpx.Client, body: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    return wait_task(client, submit(client, body), timeout=timeout)


def fetch(client: httpx.Client, url: str) -> bytes:
    response = client.get(url)
    assert response.status_code == 200, response.text
    return response.content


def only_operation(fake: FakeGoogle) -> Any:
    (op,) = fake.operations.values()
    return op


def assert_pinned(fake: FakeGoogle) -> None:
    """Every poll and download of an operation used the credential that created it."""
    for name, op in fake.operations.items():
        followups = fake.requests_for(name)
        assert followups, f"operation {name} was never polled"
        assert {r.credential for r in followups} == {op.owner}, name


# -- Gemini API ---------------------------------------------------------------------------


def test_text_to_video_every_parameter_arrives_upstream(
    client: httpx.Client, fake: FakeGoogle
) -> None:
    body = {
        "model": FAST,
        "prompt": "a lighthouse at dusk, waves crashing",
        "negative_prompt": "blurry, text",
        "duration": 6,
        "aspect_ratio": "9:16",
        "resolution": "720p",
        "seed": 4242,
        "sample_count": 1,
        "generate_audio": True,
        "enhance_prompt": True,
    }
    final = run(client, body)
    assert final["status"] == "completed", final.get("error")
    (sub,) = fake.submits()
    assert sub.path == "/v1beta/models/veo-3.1-fast-generate-preview:predictLongRunning"
    assert sub.credential in (KEY_A, KEY_B)
    assert sub.body["instances"] == [{"prompt": "a lighthouse at dusk, waves crashing"}]
    # No personGeneration (omitted: Google's own default), no generateAudio, resizeMode or
    # enhancePrompt (the Gemini API takes none), one video per request.
    assert sub.body["parameters"] == {
        "durationSeconds": 6,
        "aspectRatio": "9:16",
        "resolution": "720p",
        "negativePrompt": "blurry, text",
        "seed": 4242,
    }
    (video,) = final["result"]["videos"]
    assert video["duration"] == 6
    assert (video["width"], video["height"]) == (720, 1280)
    assert video["has_audio"] is True
    assert video["fps"] == 24
    # What was applied: the seed sent, and the Gemini API's text-to-video policy.
    assert video["seed"] == 4242
    assert video["person_generation"] == "allow_all"
    data = fetch(client, video["url"][0])
    assert data[4:8] == b"ftyp"
    assert fetch(client, video["thumbnail_url"])[:2] == b"\xff\xd8"
    assert_pinned(fake)


def test_seed_scenario_one_every_field_at_its_default(
    client: httpx.Client, fake: FakeGoogle
) -> None:
    final = run(client, {"model": FAST, "prompt": "a golden retriever on the beach"})
    assert final["status"] == "completed", final.get("error")
    (sub,) = fake.submits()
    params = sub.body["parameters"]
    assert "personGeneration" not in params and params["durationSeconds"] == 8
    (video,) = final["result"]["videos"]
    assert (video["width"], video["height"], video["duration"]) == (1280, 720, 8)
    assert video["person_generation"] == "allow_all"
    assert isinstance(video["seed"], int)  # a random seed, sent and reported


def test_person_generation_gemini_cannot_serve_is_refused_at_submit(
    client: httpx.Client, fake: FakeGoogle
) -> None:
    for value in ("allow_adult", "disallow"):
        response = client.post(
            "/v1/videos/generations",
            json={"model": QUALITY, "prompt": "people", "person_generation": value},
        )
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == "person_generation"
        assert error["message"] == (
            f'person_generation "{value}" for text-to-video needs a Vertex AI credential; '
            "this server has only Gemini API keys"
        )
    assert fake.requests == []


def test_audio_off_drops_the_gemini_audio_track(client: httpx.Client, fake: FakeGoogle) -> None:
    final = run(client, {"model": FAST, "prompt": "silent film", "duration": 4})
    assert final["status"] == "completed", final.get("error")
    (video,) = final["result"]["videos"]
    assert video["has_audio"] is False and video["duration"] == 4
    # Upstream did generate audio (the Gemini API always does): reelserve removed it.
    op = only_operation(fake)
    assert op.backend == "gemini" and "generateAudio" not in op.parameters


def test_sample_count_fans_out_one_operation_per_sample(
    client: httpx.Client, fake: FakeGoogle
) -> None:
    final = run(
        client,
        {
            "model": FAST,
            "prompt": "three takes",
            "duration": 4,
            "sample_count": 3,
            "seed": 10,
            "generate_audio": True,  # the files as Google sent them (no audio track removed)
        },
    )
    assert final["status"] == "completed", final.get("error")
    assert len(fake.operations) == 3
    assert all("sampleCount" not in op.parameters for op in fake.operations.values())
    assert sorted(op.parameters["seed"] for op in fake.operations.values()) == [10, 11, 12]
    videos = final["result"]["videos"]
    assert [v["seed"] for v in videos] == [10, 11, 12]
    files = [fetch(client, v["url"][0]) for v in videos]
    assert len(set(files)) == 3  # three distinct files, downloaded once each
    downloads = [r for r in fake.requests if ":download" in r.path]
    assert len(downloads) == 3
    assert "withheld" not in final["result"]
    assert_pinned(fake)


def test_partial_safety_filtering_completes_with_the_rest(
    client: httpx.Client, fake: FakeGoogle
) -> None:
    fake.filter_submits = {1}
    fake.filter_reasons = ["The video was filtered because it may depict a public figure."]
    final = run(client, {"model": FAST, "prompt": "a crowd", "duration": 4, "sample_count": 3})
    assert final["status"] == "completed", final.get("error")
    assert len(fake.operations) == 3
    assert len(final["result"]["videos"]) == 2
    (withheld,) = final["result"]["withheld"]
    assert withheld["code"] == "content_filtered" and withheld["count"] == 1
    assert "public figure" in withheld["message"]
    assert withheld["reasons"] == fake.filter_reasons
    # The SDK types both: what was applied per video, and what Google withheld.
    from reelserve.client import Client

    with Client(str(client.base_url), client.headers["Authorization"].split()[1]) as sdk:
        task = sdk.get(final["id"])
    assert [v.person_generation for v in task.videos] == ["allow_all", "allow_all"]
    (typed,) = task.withheld
    assert (typed.code, typed.count, typed.reasons) == (
        "content_filtered",
        1,
        tuple(fake.filter_reasons),
    )


def _image(path: Path, colour: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    Image.new("RGB", size, colour).save(path, format="JPEG", quality=95)
    return path.read_bytes()


def _decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")


@pytest.mark.parametrize("resize_mode", ["pad", "crop"])
def test_first_frame_is_fitted_by_reelserve_on_gemini(
    client: httpx.Client, fake: FakeGoogle, tmp_path: Path, resize_mode: str
) -> None:
    _image(tmp_path / "square.jpg", (220, 30, 30), (600, 600))
    with static_server(tmp_path) as base:
        final = run(
            client,
            {
                "model": FAST,
                "prompt": "the square comes alive",
                "duration": 8,
                "resolution": "1080p",
                "first_frame_image": f"{base}/square.jpg",
                "resize_mode": resize_mode,
            },
        )
    assert final["status"] == "completed", final.get("error")
    instance = only_operation(fake).instance
    assert set(instance) == {"prompt", "image"}
    frame = np.asarray(_decode(instance["image"]["bytesBase64Encoded"]))
    # Fitted to the output's 16:9 before sending, and never upscaled: a 600x600 image is
    # padded to 1067x600 or cropped to 600x338, not blown up to 1920x1080.
    if resize_mode == "pad":
        assert frame.shape == (600, 1067, 3)
        assert frame[300, 20].max() < 20  # pillarbox bar
        assert frame[300, 533][0] > 180
    else:
        assert frame.shape == (338, 600, 3)
        edge = frame[169, 5]
        assert edge[0] > 180 and edge[1] < 80  # the square, cropped to fill the frame
    assert only_operation(fake).parameters["resolution"] == "1080p"
    (video,) = final["result"]["videos"]
    assert (video["width"], video["height"]) == (1920, 1080)
    assert video["person_generation"] == "allow_adult"  # image-to-video's only policy


def test_large_first_frame_goes_as_a_jpeg_no_larger_than_the_output(
    client: httpx.Client, fake: FakeGoogle, tmp_path: Path
) -> None:
    rng = np.random.default_rng(7)
    noisy = rng.integers(0, 255, (1800, 2880, 3), dtype=np.uint8)  # a PNG of ~15 MB
    Image.fromarray(noisy).save(tmp_path / "big.png", format="PNG", compress_level=1)
    with static_server(tmp_path) as base:
        final = run(
            client,
            {
                "model": FAST,
                "prompt": "static",
                "duration": 8,
                "resolution": "720p",
                "first_frame_image": f"{base}/big.png",
                "resize_mode": "crop",
            },
        )
    assert final["status"] == "completed", final.get("error")
    image = only_operation(fake).instance["image"]
    assert image["mimeType"] == "image/jpeg"
    data = base64.b64decode(image["bytesBase64Encoded"])
    assert Image.open(io.BytesIO(data)).size == (1280, 720)
    assert len(data) < (tmp_path / "big.png").stat().st_size / 2


def test_first_and_last_frame_on_gemini(
    client: httpx.Client, fake: FakeGoogle, tmp_path: Path
) -> None:
    _image(tmp_path / "a.jpg", (10, 200, 10), (320, 180))
    _image(tmp_path / "b.jpg", (10, 10, 200), (320, 180))
    with static_server(tmp_path) as base:
        body = {
            "model": FAST,
            "prompt": "green to blue",
            "first_frame_image": f"{base}/a.jpg",
            "last_frame_image": f"{base}/b.jpg",
        }
        # First+last frame on the Gemini API: 8 s only (unconfirmed, so refused as strict).
        refused = client.post("/v1/videos/generations", json={**body, "duration": 4})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "duration"
        final = run(client, {**body, "duration": 8})
    assert final["status"] == "completed", final.get("error")
    instance = only_operation(fake).instance
    # 16:9 images smaller than the output go as they are (the original JPEG bytes).
    assert (
        base64.b64decode(instance["image"]["bytesBase64Encoded"])
        == (tmp_path / "a.jpg").read_bytes()
    )
    assert instance["image"]["mimeType"] == "image/jpeg"
    last = np.asarray(_decode(instance["lastFrame"]["bytesBase64Encoded"]))
    assert last.shape == (180, 320, 3) and last[90, 160][2] > 150


@pytest.mark.slow
def test_4k_goes_upstream_as_4k(client: httpx.Client, fake: FakeGoogle) -> None:
    final = run(client, {"model": FAST, "prompt": "crisp", "duration": 8, "resolution": "4k"})
    assert final["status"] == "completed", final.get("error")
    assert only_operation(fake).parameters["resolution"] == "4k"


def test_capability_table_refuses_before_any_upstream_call(
    client: httpx.Client, fake: FakeGoogle
) -> None:
    response = client.post(
        "/v1/videos/generations",
        json={"model": FAST, "prompt": "x", "duration": 4, "resolution": "1080p"},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "resolution" and "8" in error["message"]
    response = client.post(
        "/v1/videos/generations", json={"model": FAST, "prompt": "x", "duration": 5}
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "duration"
    assert fake.requests == []


def test_models_listing_shows_veo_capabilities(client: httpx.Client) -> None:
    data = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    for model_id in (FAST, QUALITY):
        veo = data[model_id]
        assert veo["provider"] == "google_veo" and veo["runs_on"] == "google_veo"
        assert veo["available"] is True
        assert veo["durations"] == [4, 6, 8]
        assert veo["resolutions"] == ["720p", "1080p", "4K"]
        assert veo["resolution_durations"] == {"1080p": [8], "4K": [8]}
        assert veo["modes"] == ["t2v", "i2v", "flf2v"]
        assert veo["aspect_ratios"] == ["16:9", "9:16"]
        assert veo["audio"] is True and veo["max_sample_count"] == 4
        assert "options" not in veo
        (gemini,) = veo["backends"].values()
        assert gemini["samples_per_request"] == 1
        assert gemini["person_generation"] == {
            "t2v": [],
            "i2v": ["allow_adult"],
            "flf2v": ["allow_adult"],
        }


def test_safety_filter_fails_with_content_filtered(client: httpx.Client, fake: FakeGoogle) -> None:
    fake.filter_next = (1, ["The video was filtered because it may depict a public figure."])
    final = run(client, {"model": FAST, "prompt": "a famous person", "duration": 4})
    assert final["status"] == "failed", final
    assert final["error"]["code"] == "content_filtered"
    assert "public figure" in final["error"]["message"]
    assert not [r for r in fake.requests if ":download" in r.path]


def test_upstream_400_fails_with_googles_reason_and_is_not_retried(
    client: httpx.Client, fake: FakeGoogle
) -> None:
    fake.submit_faults.append(
        {"code": 400, "status": "INVALID_ARGUMENT", "message": "The prompt is not allowed here."}
    )
    final = run(client, {"model": FAST, "prompt": "nope", "duration": 4})
    assert final["status"] == "failed", final
    assert final["error"]["code"] == "upstream_error"
    assert "The prompt is not allowed here." in final["error"]["message"]
    assert len(fake.submits()) == 1 and not fake.operations


def test_429_everywhere_then_success_honours_retry_info(
    client: httpx.Client, fake: FakeGoogle
) -> None:
    # Google's 429 carries a google.rpc.RetryInfo retryDelay in its body, no Retry-After.
    quota = {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "Quota exceeded."}
    fake.submit_faults.extend([{**quota, "retry_delay": "1s"}, {**quota, "retry_delay": "1s"}])
    final = run(client, {"model": FAST, "prompt": "patience", "duration": 4})
    assert final["status"] == "completed", final.get("error")
    subs = fake.submits()
    assert len(subs) == 3
    # Both keys answered 429 (failover), then the retry waited as RetryInfo asked.
    assert {subs[0].credential, subs[1].credential} == {KEY_A, KEY_B}
    assert subs[2].at - subs[1].at >= 0.95
    assert len(fake.operations) == 1


def test_quota_exhaustion_is_a_queue_not_a_failure(client: httpx.Client, fake: FakeGoogle) -> None:
    """Both keys answer 429 (with RetryInfo) more times than `retry_attempts` (3): the task
    waits, as Google asks, until the quota frees, instead of failing."""
    fake.exhausted.update({KEY_A, KEY_B})
    fake.exhausted_retry_delay = "0.1s"
    task_id = submit(client, {"model": FAST, "prompt": "a burst", "duration": 4})
    deadline = time.monotonic() + 30
    while len(fake.submits()) < 10:  # five rounds over both keys
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert client.get(f"/v1/tasks/{task_id}").json()["data"]["status"] == "processing"
    fake.exhausted.clear()
    final = wait_task(client, task_id, timeout=60)
    assert final["status"] == "completed", final.get("error")
    assert len(fake.operations) == 1


async def test_submit_rate_limiter_spaces_requests() -> None:
    from reelserve.providers.google_veo.credentials import RateLimiter

    async def wait(seconds: float, until: asyncio.Future[Any] | None = None) -> None:
        await asyncio.sleep(seconds)

    limiter = RateLimiter(per_minute=600)  # 10 a second, in bursts of up to 10
    started = time.monotonic()
    for _ in range(12):
        await limiter.take(wait)
    # The burst went at once; the 11th and 12th each waited for a token (0.1 s apart).
    assert time.monotonic() - started >= 0.18
    assert limiter.burst == 10


async def test_rate_limiter_gives_waiters_turns_in_arrival_order() -> None:
    """Takes queued behind the rate each wait once, for their own turn, first come first
    served: none wakes before its turn to look again (a thousand would otherwise herd)."""
    from reelserve.providers.google_veo.credentials import RateLimiter

    waits: list[float] = []
    done: list[int] = []

    async def wait(seconds: float, until: asyncio.Future[Any] | None = None) -> None:
        waits.append(seconds)
        await asyncio.sleep(seconds)

    limiter = RateLimiter(per_minute=1200, burst=2)  # 20 a second, 2 at once

    async def take(i: int) -> None:
        await limiter.take(wait)
        done.append(i)

    await asyncio.gather(*(take(i) for i in range(8)))
    assert done == list(range(8))
    assert len(waits) == 6  # the burst of 2 took no wait; each other take waited once
    assert waits == sorted(waits)
    assert waits[-1] == pytest.approx(6 * 0.05, abs=0.02)


def test_rate_settings_reach_each_credential() -> None:
    from reelserve.providers.google_veo.credentials import build_credentials
    from reelserve.settings.google import GoogleSettings

    settings = GoogleSettings(
        api_keys=[{"key": "k1", "submits_per_minute": 5}, {"key": "k2"}],
        submits_per_minute=50,
        requests_per_minute=600,
    )
    first, second = build_credentials(settings)
    assert first.submit_rate is not None and first.submit_rate.per_minute == 5
    assert second.submit_rate is not None and second.submit_rate.per_minute == 50
    assert first.request_rate is not None and first.request_rate.per_minute == 600
    assert GoogleSettings().max_concurrency == 1000  # Google limits rates, not operations


def test_operation_error_and_inline_videos(client: httpx.Client, fake: FakeGoogle) -> None:
    fake.operation_errors = [{"code": 13, "message": "Video generation failed internally."}]
    final = run(client, {"model": FAST, "prompt": "broken", "duration": 4})
    assert final["status"] == "failed", final
    assert final["error"]["code"] == "upstream_error"
    assert "error 13" in final["error"]["message"] and "internally" in final["error"]["message"]
    fake.reset()
    fake.inline_videos = True
    final = run(client, {"model": FAST, "prompt": "inline", "duration": 4})
    assert final["status"] == "completed", final.get("error")
    assert not [r for r in fake.requests if ":download" in r.path]
    assert final["result"]["videos"][0]["duration"] == 4


def test_500s_then_success(client: httpx.Client, fake: FakeGoogle) -> None:
    fake.submit_faults.append({"code": 500, "status": "INTERNAL", "message": "oops"})
    fake.poll_faults.append({"code": 503, "status": "UNAVAILABLE", "message": "busy"})
    fake.download_faults.append({"code": 500, "status": "INTERNAL", "message": "flaky"})
    final = run(client, {"model": FAST, "prompt": "resilience", "duration": 4})
    assert final["status"] == "completed", final.get("error")
    assert len(fake.submits()) == 2 and len(fake.operations) == 1
    assert len([r for r in fake.requests if ":download" in r.path]) == 2
    assert_pinned(fake)


def upstream_errors(client: httpx.Client) -> dict[str, float]:
    """`reelserve_upstream_errors_total` of google_veo by code, from the server's /metrics."""
    response = client.get("/metrics")
    assert response.status_code == 200
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if (
                sample.name == "reelserve_upstream_errors_total"
                and sample.labels["provider"] == "google_veo"
            ):
                counts[sample.labels["code"]] = sample.value
    return counts


def test_every_error_answer_from_google_is_counted_in_metrics(
    client: httpx.Client, fake: FakeGoogle
) -> None:
    """Each error answer (submit, poll, download), retried or not, counts once under its HTTP
    status in `reelserve_upstream_errors_total`; the task still completes."""
    before = upstream_errors(client)
    fake.submit_faults.extend(
        [
            {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "Quota exceeded."},
            {"code": 500, "status": "INTERNAL", "message": "oops"},
        ]
    )
    fake.poll_faults.append({"code": 503, "status": "UNAVAILABLE", "message": "busy"})
    fake.download_faults.append({"code": 500, "status": "INTERNAL", "message": "flaky"})
    final = run(client, {"model": FAST, "prompt": "counted", "duration": 4})
    assert final["status"] == "completed", final.get("error")
    after = upstream_errors(client)
    grown = {code: after[code] - before.get(code, 0.0) for code in after}
    assert {code: n for code, n in grown.items() if n} == {"429": 1, "500": 2, "503": 1}
    assert len(fake.submits()) == 3 and len(fake.operations) == 1


def test_quota_failover_and_pinning(client: httpx.Client, fake: FakeGoogle) -> None:
    fake.exhausted.add(KEY_A)
    for i in range(2):
        final = run(client, {"model": FAST, "prompt": f"failover {i}", "duration": 4})
        assert final["status"] == "completed", final.get("error")
    assert len(fake.operations) == 2
    assert {op.owner for op in fake.operations.values()} == {KEY_B}
    assert any(s.credential == KEY_A for s in fake.submits())  # tried, answered 429
    assert_pinned(fake)


def test_round_robin_and_per_key_concurrency_limit(client: httpx.Client, fake: FakeGoogle) -> None:
    fake.done_after = 3
    ids = [submit(client, {"model": FAST, "prompt": f"rr {i}", "duration": 4}) for i in range(3)]
    for task_id in ids:
        assert wait_task(client, task_id, timeout=60)["status"] == "completed"
    ops = sorted(fake.operations.values(), key=lambda o: o.created_at)
    assert {op.owner for op in ops} == {KEY_A, KEY_B}
    # max_concurrency 1 per key: a key's next operation starts after its previous one ended.
    for owner in (KEY_A, KEY_B):
        mine = [op for op in ops if op.owner == owner]
        for before, after in itertools.pairwise(mine):
            last_use = max(r.at for r in fake.requests_for(before.name))
            assert after.created_at >= last_use
    assert_pinned(fake)


def test_cancel_while_polling_stops_polling(client: httpx.Client, fake: FakeGoogle) -> None:
    fake.finish = False
    task_id = submit(client, {"model": FAST, "prompt": "never mind", "duration": 4})
    deadline = time.monotonic() + 30
    while not fake.operations or only_operation(fake).polls < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert client.post(f"/v1/tasks/{task_id}/cancel").status_code == 200
    final = wait_task(client, task_id, timeout=30)
    assert final["status"] == "cancelled"
    polls = only_operation(fake).polls
    time.sleep(0.6)
    assert only_operation(fake).polls == polls


def test_usage_counts_seconds_and_cost_per_model(gemini: LiveServer, fake: FakeGoogle) -> None:
    key = gemini.mint("live", "usage")
    with gemini.client(key) as c:
        before = time.time()
        a = run(c, {"model": FAST, "prompt": "u1", "duration": 4, "sample_count": 2})
        b = run(c, {"model": QUALITY, "prompt": "u2", "duration": 6})
        assert a["status"] == b["status"] == "completed"
        usage = c.get("/v1/usage").json()["data"]
        by_model = {m["model"]: m for m in usage["models"]}
        # Default prices (720p, the Gemini API always bills audio): Fast $0.10/s, Veo $0.40/s.
        assert by_model[FAST] == {
            "model": FAST,
            "tasks": 1,
            "videos": 2,
            "video_seconds": 8.0,
            "cost": pytest.approx(0.10 * 8),
            "currency": "USD",
        }
        assert by_model[QUALITY]["video_seconds"] == 6.0
        assert by_model[QUALITY]["cost"] == pytest.approx(0.40 * 6)
        (total,) = usage["totals"]
        assert total["tasks"] == 2 and total["videos"] == 3
        assert total["cost"] == pytest.approx(0.8 + 2.4)
        empty = c.get("/v1/usage", params={"until": int(before) - 10}).json()["data"]
        assert empty["models"] == [] and empty["totals"] == []
        later = c.get("/v1/usage", params={"since": int(before) - 1}).json()["data"]
        assert {m["model"] for m in later["models"]} == {FAST, QUALITY}
        bad = c.get("/v1/usage", params={"since": "yesterday"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "since"
    engine = sa.create_engine(f"sqlite:///{gemini.settings.data_dir / 'reelserve.db'}")
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT credential, provider FROM usage WHERE task_id IN (:a, :b)"),
            {"a": a["id"], "b": b["id"]},
        ).all()
    engine.dispose()
    assert {r[1] for r in rows} == {"google_veo"}
    # A fanned-out task names every key it used.
    assert {c for r in rows for c in r[0].split(",")} <= {"key-a", "key-b"}


def test_test_keys_never_reach_google(gemini: LiveServer, fake: FakeGoogle) -> None:
    key = gemini.mint("test", "sandbox")
    with gemini.client(key) as c:
        final = run(c, {"model": FAST, "prompt": "offline", "duration": 4})
        assert final["status"] == "completed"
    assert fake.requests == []


def test_operation_that_never_finishes_times_out(gemini_fake: FakeGoogle, tmp_path: Path) -> None:
    gemini_fake.reset()
    gemini_fake.finish = False
    # 3 s: room for the two polls asserted below on a loaded machine (1.5 s failed once).
    settings = make_settings(tmp_path / "data", google=gemini_settings(gemini_fake, deadline=3))
    live = LiveServer(settings).start()
    try:
        with live.client(live.mint("live")) as c:
            final = run(c, {"model": FAST, "prompt": "forever", "duration": 4})
    finally:
        live.stop()
    assert final["status"] == "failed", final
    assert final["error"]["code"] == "timeout"
    assert len(gemini_fake.submits()) == 1 and only_operation(gemini_fake).polls >= 2


def test_a_task_waiting_for_a_slot_times_out_at_its_deadline(
    gemini_fake: FakeGoogle, tmp_path: Path
) -> None:
    """Both keys' one slot each are held by submits Google has not answered yet: the third task
    waits in line for a slot and fails with `timeout` at its deadline, never sent to Google
    (its wait ends there, rather than coming back at once, again and again, until a slot
    frees and the late task is sent and paid for)."""
    gemini_fake.reset()
    gemini_fake.finish = False
    gemini_fake.hold_submits.set()
    settings = make_settings(tmp_path / "data", google=gemini_settings(gemini_fake, deadline=2))
    live = LiveServer(settings).start()
    try:
        with live.client(live.mint("live")) as c:
            ids = [
                submit(c, {"model": FAST, "prompt": f"forever {i}", "duration": 4})
                for i in range(3)
            ]
            waiting = wait_task(c, ids[2], timeout=30)
            assert waiting["status"] == "failed", waiting
            assert waiting["error"]["code"] == "timeout"
            assert len(gemini_fake.submits()) == 2  # the third never got a slot
            gemini_fake.hold_submits.clear()
            finals = [wait_task(c, task_id, timeout=30) for task_id in ids[:2]]
    finally:
        gemini_fake.hold_submits.clear()
        live.stop()
    assert [f["error"]["code"] for f in finals] == ["timeout", "timeout"], finals
    assert len(gemini_fake.submits()) == 2


# -- a worker killed mid-task ---------------------------------------------------------------


def _worker_env(data: Path, fake: FakeGoogle) -> dict[str, str]:
    return {
        **os.environ,
        "REELSERVE_DATA_DIR": str(data),
        "REELSERVE_SECRET_KEY": "test-secret",
        "REELSERVE_LEASE_SECONDS": "2",
        "REELSERVE_POLL_INTERVAL": "0.1",
        "REELSERVE_PROGRESS_FLUSH_INTERVAL": "0.2",
        "REELSERVE_GOOGLE__API_KEYS": f'["{KEY_A}"]',
        "REELSERVE_GOOGLE__BASE_URL": fake.url,
        "REELSERVE_GOOGLE__POLL_INTERVAL": "0.05",
        "REELSERVE_GOOGLE__POLL_MAX_INTERVAL": "0.2",
    }


def _worker(data: Path, fake: FakeGoogle, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "reelserve", "worker", "--concurrency", "1"],
        env=_worker_env(data, fake),
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )


def _task_row(data: Path, task_id: str) -> dict[str, Any]:
    engine = sa.create_engine(f"sqlite:///{data / 'reelserve.db'}")
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT status, attempts, checkpoint FROM tasks WHERE id = :id"),
            {"id": task_id},
        ).one()
    engine.dispose()
    return dict(row._mapping)


@pytest.fixture()
def api_only(
    gemini_fake: FakeGoogle, tmp_path: Path
) -> Iterator[tuple[LiveServer, Path, FakeGoogle]]:
    gemini_fake.reset()
    data = tmp_path / "data"
    google = {"api_keys": [KEY_A], "base_url": gemini_fake.url}
    live = LiveServer(make_settings(data, google=google), run_worker=False).start()
    yield live, data, gemini_fake
    live.stop()


def _stop(*procs: subprocess.Popen[bytes] | None) -> None:
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


@pytest.mark.slow
def test_worker_killed_while_polling_is_resumed_without_a_second_submit(
    api_only: tuple[LiveServer, Path, FakeGoogle], tmp_path: Path
) -> None:
    live, data, fake = api_only
    fake.finish = False
    first = second = None
    try:
        with live.client(live.mint("live")) as c:
            task_id = submit(c, {"model": FAST, "prompt": "survive a crash", "duration": 4})
            first = _worker(data, fake, tmp_path / "w1.log")
            deadline = time.monotonic() + 60
            while not fake.operations or only_operation(fake).polls < 2:
                assert time.monotonic() < deadline, (tmp_path / "w1.log").read_text()
                time.sleep(0.05)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            polls_before = only_operation(fake).polls
            checkpoint = _task_row(data, task_id)["checkpoint"]
            assert '"phase": "polling"' in checkpoint and only_operation(fake).name in checkpoint
            fake.finish_all()
            second = _worker(data, fake, tmp_path / "w2.log")
            final = wait_task(c, task_id, timeout=90)
            assert final["status"] == "completed", (final, (tmp_path / "w2.log").read_text())
            assert len(final["result"]["videos"]) == 1
    finally:
        _stop(first, second)
    assert len(fake.submits()) == 1  # exactly one paid submission
    op = only_operation(fake)
    assert op.polls > polls_before  # the second worker polled the same operation
    assert_pinned(fake)
    assert _task_row(data, task_id)["attempts"] == 2
    assert "resuming operation" in (tmp_path / "w2.log").read_text()


@pytest.mark.slow
def test_worker_killed_while_polling_fanned_out_samples_pays_each_sample_once(
    api_only: tuple[LiveServer, Path, FakeGoogle], tmp_path: Path
) -> None:
    live, data, fake = api_only
    fake.finish = False
    first = second = None
    try:
        with live.client(live.mint("live")) as c:
            body = {"model": FAST, "prompt": "three survive", "duration": 4, "sample_count": 3}
            task_id = submit(c, body)
            first = _worker(data, fake, tmp_path / "w1.log")
            deadline = time.monotonic() + 60
            while len(fake.operations) < 3 or min(o.polls for o in fake.operations.values()) < 1:
                assert time.monotonic() < deadline, (tmp_path / "w1.log").read_text()
                time.sleep(0.05)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            checkpoint = _task_row(data, task_id)["checkpoint"]
            assert all(name in checkpoint for name in fake.operations)
            fake.finish_all()
            second = _worker(data, fake, tmp_path / "w2.log")
            final = wait_task(c, task_id, timeout=90)
            assert final["status"] == "completed", (final, (tmp_path / "w2.log").read_text())
    finally:
        _stop(first, second)
    assert len(fake.submits()) == 3  # one paid submission per sample, none repeated
    assert len(final["result"]["videos"]) == 3
    assert (tmp_path / "w2.log").read_text().count("resuming operation") == 3
    assert_pinned(fake)


@pytest.mark.slow
def test_api_host_without_google_credentials_queues_for_remote_pollers(
    gemini_fake: FakeGoogle, tmp_path: Path
) -> None:
    """Only the poller workers hold the Google key: the API process, told that google_veo runs
    elsewhere (`remote_providers`), queues live-key Veo tasks and a worker process runs them."""
    gemini_fake.reset()
    data = tmp_path / "data"
    worker = None
    refusing = LiveServer(make_settings(tmp_path / "other"), run_worker=False).start()
    try:
        with refusing.client(refusing.mint("live")) as c:
            answer = c.post("/v1/videos/generations", json={"model": FAST, "prompt": "x"})
            assert answer.status_code == 400 and answer.json()["error"]["param"] == "model"
    finally:
        refusing.stop()
    live = LiveServer(
        make_settings(data, remote_providers=["google_veo"]), run_worker=False
    ).start()
    try:
        assert "google_veo" not in live.app.state.reelserve.providers
        with live.client(live.mint("live")) as c:
            task_id = submit(c, {"model": FAST, "prompt": "queued for a poller", "duration": 4})
            assert c.get(f"/v1/tasks/{task_id}").json()["data"]["status"] == "pending"
            worker = _worker(data, gemini_fake, tmp_path / "w.log")
            final = wait_task(c, task_id, timeout=90)
            assert final["status"] == "completed", (final, (tmp_path / "w.log").read_text())
    finally:
        _stop(worker)
        live.stop()
    assert len(gemini_fake.submits()) == 1


@pytest.mark.slow
def test_worker_killed_mid_submit_fails_clearly_instead_of_paying_twice(
    api_only: tuple[LiveServer, Path, FakeGoogle], tmp_path: Path
) -> None:
    live, data, fake = api_only
    fake.hold_submits.set()
    first = second = None
    try:
        with live.client(live.mint("live")) as c:
            task_id = submit(c, {"model": FAST, "prompt": "in flight", "duration": 4})
            first = _worker(data, fake, tmp_path / "w1.log")
            assert fake.submit_arrived.wait(60), (tmp_path / "w1.log").read_text()
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            fake.hold_submits.clear()  # Google accepts the request nobody is waiting for
            deadline = time.monotonic() + 30
            while not fake.operations:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            second = _worker(data, fake, tmp_path / "w2.log")
            final = wait_task(c, task_id, timeout=90)
    finally:
        _stop(first, second)
    assert final["status"] == "failed", final
    assert final["error"]["code"] == "upstream_error"
    assert "did not send it again" in final["error"]["message"]
    assert len(fake.submits()) == 1


# -- Vertex AI ------------------------------------------------------------------------------

VERTEX_TOKEN = "ya29.static-test-token"


@pytest.fixture(scope="module")
def vertex_fake() -> Iterator[FakeGoogle]:
    projects = (("proj-a", "us-central1"), ("proj-b", "europe-west4"))
    with serve(FakeGoogle(vertex_projects=projects, static_tokens=(VERTEX_TOKEN,))) as fake:
        yield fake


def vertex_settings(fake: FakeGoogle, directory: Path, **extra: Any) -> dict[str, Any]:
    sa_file = service_account(fake, directory, "veo-runner@proj-a.iam.gserviceaccount.com")
    return {
        "vertex": [
            {"project": "proj-a", "location": "us-central1", "service_account_file": str(sa_file)},
            {"project": "proj-b", "location": "europe-west4", "access_token": VERTEX_TOKEN},
        ],
        "vertex_base_url": fake.url,
        **QUICK,
        **extra,
    }


@pytest.fixture(scope="module")
def vertex(
    vertex_fake: FakeGoogle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("veo-vertex")
    settings = make_settings(tmp / "data", google=vertex_settings(vertex_fake, tmp))
    live = LiveServer(settings).start()
    yield live
    live.stop()


@pytest.fixture()
def vfake(vertex_fake: FakeGoogle) -> FakeGoogle:
    vertex_fake.reset()
    return vertex_fake


@pytest.fixture()
def vclient(vertex: LiveServer) -> Iterator[httpx.Client]:
    with vertex.client(vertex.mint("live", "vertex-tests")) as c:
        yield c


def test_vertex_first_last_frame_with_every_parameter(
    vclient: httpx.Client, vfake: FakeGoogle, tmp_path: Path
) -> None:
    first = _image(tmp_path / "first.jpg", (200, 20, 20), (400, 300))
    last = _image(tmp_path / "last.jpg", (20, 20, 200), (400, 300))
    with static_server(tmp_path) as base:
        final = run(
            vclient,
            {
                "model": FAST,
                "prompt": "red dissolves into blue",
                "negative_prompt": "noise",
                "duration": 8,
                "aspect_ratio": "16:9",
                "resolution": "1080p",
                "first_frame_image": f"{base}/first.jpg",
                "last_frame_image": f"{base}/last.jpg",
                "seed": 123456789,
                "sample_count": 2,
                "generate_audio": True,
                "person_generation": "disallow",
                "resize_mode": "crop",
            },
        )
    assert final["status"] == "completed", final.get("error")
    (sub,) = vfake.submits()
    assert sub.path.endswith(
        "/publishers/google/models/veo-3.1-fast-generate-001:predictLongRunning"
    )
    assert sub.path.startswith("/v1/projects/")
    op = only_operation(vfake)
    assert op.parameters == {
        "sampleCount": 2,  # Vertex AI gives up to 4 videos per request: one operation
        "durationSeconds": 8,
        "aspectRatio": "16:9",
        "resolution": "1080p",
        "personGeneration": "dont_allow",
        "negativePrompt": "noise",
        "seed": 123456789,
        "generateAudio": True,
        "resizeMode": "crop",
    }
    # Vertex AI gets the original image bytes and fits them itself (resizeMode).
    assert base64.b64decode(op.instance["image"]["bytesBase64Encoded"]) == first
    assert op.instance["image"]["mimeType"] == "image/jpeg"
    assert base64.b64decode(op.instance["lastFrame"]["bytesBase64Encoded"]) == last
    videos = final["result"]["videos"]
    assert len(videos) == 2
    assert all(v["has_audio"] and v["duration"] == 8 and v["seed"] == 123456789 for v in videos)
    assert all(v["person_generation"] == "disallow" for v in videos)
    assert all((v["width"], v["height"]) == (1920, 1080) for v in videos)
    assert_pinned(vfake)


def test_vertex_credentials_round_robin_with_service_account_and_token(
    vclient: httpx.Client, vfake: FakeGoogle
) -> None:
    for i in range(2):
        final = run(vclient, {"model": QUALITY, "prompt": f"vertex {i}", "duration": 4})
        assert final["status"] == "completed", final.get("error")
        assert final["result"]["videos"][0]["has_audio"] is False
    owners = {op.owner for op in vfake.operations.values()}
    assert owners == {"vertex:proj-a/us-central1", "vertex:proj-b/europe-west4"}
    tokens = {r.headers["authorization"] for r in vfake.submits()}
    # proj-a used a token the service account obtained from the (fake) token endpoint.
    assert f"Bearer {VERTEX_TOKEN}" in tokens
    assert any(t.startswith("Bearer ya29.fake-") for t in tokens)
    for sub in vfake.submits():
        assert "/models/veo-3.1-generate-001:predictLongRunning" in sub.path
    assert_pinned(vfake)


def test_vertex_has_no_4k(vclient: httpx.Client, vfake: FakeGoogle) -> None:
    models = {m["id"]: m for m in vclient.get("/v1/models").json()["data"]}
    assert models[FAST]["resolutions"] == ["720p", "1080p"]
    assert models[FAST]["resolution_durations"] == {"1080p": [8]}
    response = vclient.post(
        "/v1/videos/generations",
        json={"model": FAST, "prompt": "x", "duration": 8, "resolution": "4K"},
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "resolution"
    assert vfake.requests == []


def test_vertex_safety_filter(vclient: httpx.Client, vfake: FakeGoogle) -> None:
    vfake.filter_next = (1, ["58061214: child safety"])
    final = run(vclient, {"model": FAST, "prompt": "blocked", "duration": 4})
    assert final["status"] == "failed"
    assert final["error"]["code"] == "content_filtered"
    assert "child safety" in final["error"]["message"]


def test_vertex_usage_prices_audio_separately(vertex: LiveServer, vfake: FakeGoogle) -> None:
    with vertex.client(vertex.mint("live", "vertex-usage")) as c:
        run(c, {"model": FAST, "prompt": "quiet", "duration": 4})
        run(c, {"model": FAST, "prompt": "loud", "duration": 4, "generate_audio": True})
        (row,) = c.get("/v1/usage").json()["data"]["models"]
    assert row["tasks"] == 2 and row["video_seconds"] == 8.0
    # Vertex AI prices Veo 3.1 Fast at 720p: $0.08/s video only, $0.10/s with audio.
    assert row["cost"] == pytest.approx(0.08 * 4 + 0.10 * 4)


def test_vertex_results_in_cloud_storage(vertex_fake: FakeGoogle, tmp_path: Path) -> None:
    vertex_fake.reset()
    google = vertex_settings(
        vertex_fake,
        tmp_path,
        output_gcs_uri="gs://veo-out/reelserve",
        storage_base_url=vertex_fake.url,
    )
    live = LiveServer(make_settings(tmp_path / "data", google=google)).start()
    try:
        with live.client(live.mint("live")) as c:
            final = run(c, {"model": FAST, "prompt": "to the bucket", "duration": 4})
    finally:
        live.stop()
    assert final["status"] == "completed", final.get("error")
    op = only_operation(vertex_fake)
    assert op.parameters["storageUri"] == f"gs://veo-out/reelserve/{final['id']}/0/"
    downloads = [r for r in vertex_fake.requests if r.path.startswith("/download/storage/")]
    assert len(downloads) == 1
    assert downloads[0].path.endswith(f"/o/reelserve/{final['id']}/0/sample_0.mp4?alt=media")
    assert downloads[0].headers["authorization"].startswith("Bearer ")


def test_unusable_service_account_file_stops_the_server_with_a_clear_message(
    tmp_path: Path,
) -> None:
    from reelserve.providers.google_veo.credentials import CredentialError, build_credentials
    from reelserve.settings.google import GoogleSettings

    missing = tmp_path / "nope.json"
    settings = GoogleSettings(project="proj-x", service_account_file=missing)
    with pytest.raises(CredentialError) as caught:
        build_credentials(settings)
    assert "proj-x" in str(caught.value) and str(missing) in str(caught.value)
    twins = GoogleSettings(api_keys=[{"key": "k1", "id": "same"}, {"key": "k2", "id": "same"}])
    with pytest.raises(CredentialError, match="distinct ids"):
        build_credentials(twins)
