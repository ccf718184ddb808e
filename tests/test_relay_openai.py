"""The OpenAI-style relay against a real upstream: reelserve B's own `/v1/videos` facade (a
`reelserve serve` process on a test key, so it runs the sandbox).

The provider is run directly with the tests' own `RunContext` (`relay_support`). What is
checked: a text-to-video and an image-to-video task (the image uploaded as `input_reference`)
complete with B's video; the form carries the entry's size and only the extensions a request
needs; a resumed create of unknown outcome is not sent again (an OpenAI-style upstream is not
taken to honour Idempotency-Key); what OpenAI's API cannot express is a 400 at submit; a
failure B reports on the video fails ours with its code; a cancel reaches B.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from reelserve.domain.errors import InvalidRequest
from reelserve.domain.models import ModelEntry
from reelserve.media.video import decode_frames, probe_video
from reelserve.providers.base import InputImages, ProviderError, TaskCancelled
from reelserve.providers.relay import build_relay
from reelserve.providers.relay.openai import form_parts
from tests.relay_support import (
    H,
    RelayContext,
    Upstream,
    W,
    mad,
    make_spec,
    picture,
    png,
    relay_entry,
    workdir,
)
from tests.support import LiveServer, make_settings, submit, wait_task


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    b = Upstream(tmp_path_factory.mktemp("b")).start()
    try:
        yield b
    finally:
        b.stop()


def test_the_form_is_the_facade_inverse() -> None:
    entry = ModelEntry(id="wan", provider="relay", sizes={"720p": (832, 480)})
    spec = make_spec(model="wan", duration=2, seed_given=False, generate_audio=True)
    parts = dict(
        form_parts(
            spec,
            "Wan-AI/Wan2.2-T2V-A14B-Diffusers",
            entry.render_size("720p", "16:9"),
            None,
            audio_field="generate_sound",
            extra={"num_inference_steps": 4, "prompt": "never sent"},
        )
    )
    assert parts == {
        "model": (None, "Wan-AI/Wan2.2-T2V-A14B-Diffusers"),
        "prompt": (None, spec.prompt),  # an extra field never overrides the request's own
        "seconds": (None, "2"),
        "size": (None, "832x480"),  # what the entry renders 720p 16:9 at
        "generate_sound": (None, "true"),
        "num_inference_steps": (None, "4"),
    }  # no seed: the client gave none


async def test_text_to_video_completes_on_the_facade(tmp_path: Path, upstream: Upstream) -> None:
    key = await upstream.mint()
    provider = build_relay("relay:b-openai", relay_entry("openai", upstream.url + "/v1", key))
    ctx = RelayContext(workdir(tmp_path))
    (clip,) = await provider.run(make_spec(duration=2), ctx)
    info = probe_video(clip.path)
    assert (info.width, info.height, round(info.duration)) == (W, H, 2)
    assert clip.seed is None  # OpenAI's video object reports none
    assert ctx.phases()[:2] == ["submitting", "polling"]
    (task,) = upstream.tasks(key)
    assert task["id"] == ctx.checkpoints[1]["upstream_id"] and task["status"] == "completed"
    spec = upstream.task(key, task["id"])
    assert spec["model"] == "tiny"


async def test_image_to_video_uploads_the_reference(tmp_path: Path, upstream: Upstream) -> None:
    key = await upstream.mint()
    provider = build_relay("relay:b-openai", relay_entry("openai", upstream.url, key))
    image = picture()
    spec = make_spec(mode="i2v", first_frame_image="https://unreachable.invalid/first.png")
    ctx = RelayContext(workdir(tmp_path), images=InputImages(first_bytes=(png(image), "image/png")))
    (clip,) = await provider.run(spec, ctx)
    assert mad(next(decode_frames(clip.path)), image) < 6


async def test_a_create_of_unknown_outcome_is_not_sent_again(
    tmp_path: Path, upstream: Upstream
) -> None:
    key = await upstream.mint()
    provider = build_relay("relay:b-openai", relay_entry("openai", upstream.url, key))
    ctx = RelayContext(
        workdir(tmp_path),
        resume_state={"phase": "submitting", "idempotency_key": "k"},
        can_fail_over=True,
    )
    with pytest.raises(ProviderError) as raised:
        await provider.run(make_spec(), ctx)
    assert "does not honour Idempotency-Key (idempotent = false)" in raised.value.message
    assert raised.value.failover is False
    assert upstream.tasks(key) == []


def test_what_openai_cannot_express_is_refused_at_submit() -> None:
    provider = build_relay("relay:o", relay_entry("openai", "http://127.0.0.1:9", None))
    with pytest.raises(InvalidRequest) as raised:
        provider.admit(make_spec(mode="flf2v", first_frame_image="x", last_frame_image="y"))
    assert raised.value.param == "last_frame_image"
    with pytest.raises(InvalidRequest) as raised:
        provider.admit(make_spec(sample_count=2))
    assert raised.value.param == "sample_count"
    provider.admit(make_spec(mode="i2v", first_frame_image="x"))
    fitted = provider.fit_model(relay_entry("openai", "http://127.0.0.1:9", None))
    assert (fitted.modes, fitted.max_sample_count) == (["t2v", "i2v"], 1)


async def test_a_refused_create_maps_and_may_fail_over(tmp_path: Path, upstream: Upstream) -> None:
    """B has no model "nope": a 400 at create, so nothing exists upstream."""
    key = await upstream.mint()
    entry = relay_entry("openai", upstream.url, key, model="nope")
    provider = build_relay("relay:b-openai", entry)
    ctx = RelayContext(workdir(tmp_path), can_fail_over=True)
    with pytest.raises(ProviderError) as raised:
        await provider.run(make_spec(), ctx)
    assert "relay:b-openai (OpenAI-style API at http://127.0.0.1:" in raised.value.message
    assert "rejected the request (HTTP 400 invalid_request_error" in raised.value.message
    assert raised.value.failover is True
    wrong_key = build_relay("relay:b-openai", relay_entry("openai", upstream.url, "rs_nope"))
    with pytest.raises(ProviderError) as raised:
        await wrong_key.run(make_spec(), RelayContext(workdir(tmp_path, "k")))
    assert "refused this server's API key" in raised.value.message
    assert raised.value.failover is False  # no next route in this context


async def test_cancel_reaches_the_upstream_video(tmp_path: Path) -> None:
    b = Upstream(tmp_path).start(worker=False)  # the video stays queued on B
    try:
        key = await b.mint()
        provider = build_relay("relay:b-openai", relay_entry("openai", b.url, key))
        ctx = RelayContext(workdir(tmp_path))
        job = asyncio.ensure_future(provider.run(make_spec(), ctx))
        await ctx.until_polling(job)
        ctx.cancel()
        with pytest.raises(TaskCancelled):
            await asyncio.wait_for(job, 30)
        # DELETE cancels a queued video on B and deletes it.
        assert b.tasks(key) == []
    finally:
        b.stop()


def test_a_relays_to_b_facade(tmp_path: Path, upstream: Upstream) -> None:
    """Reelserve A, on a live key, serves the model through B's /v1/videos facade."""
    key_b = asyncio.run(upstream.mint())
    entry = relay_entry("openai", upstream.url, key_b)
    a = LiveServer(make_settings(tmp_path / "a-data", models=[entry])).start()
    try:
        with a.client(a.mint("live")) as client:
            task_id = submit(client, {"model": "relayed", "prompt": "via openai", "duration": 2})
            done = wait_task(client, task_id, timeout=90)
            assert done["status"] == "completed", done
            assert done["route"] == "relay:relayed"
            (video,) = done["result"]["videos"]
            assert video["url"][0].startswith(f"{a.url}/v1/files/")
            answer = httpx.get(video["url"][0], timeout=30)
            assert answer.status_code == 200
            path = tmp_path / "a.mp4"
            path.write_bytes(answer.content)
            info = probe_video(path)
            assert (info.width, info.height, round(info.duration)) == (W, H, 2)
            # What OpenAI's API cannot express is a 400 at A's submit, before B sees anything.
            refused = client.post(
                "/v1/videos/generations",
                json={"model": "relayed", "prompt": "two", "duration": 1, "sample_count": 2},
            )
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"]["param"] == "sample_count"
    finally:
        a.stop()
    (task,) = upstream.tasks(key_b)
    assert task["status"] == "completed"
