"""The seed API relay against a real upstream reelserve ("B": a `reelserve serve` process with
its own data directory, port and SQLite, on test keys, so it runs the sandbox).

The provider is run directly with a `RunContext` of the test's own (`relay_support`): the
upstream is real, and so is everything between them (HTTP over loopback, B's queue, its
worker, its files). What is checked: a task completes with B's video (the asked size and
duration, its first frame the image sent as a data URL); B killed with SIGKILL and restarted
mid-task does not fail it, and B holds one task; a create of unknown outcome is sent again
under the same Idempotency-Key only where the upstream honours it; 402 and 429 are mapped,
retried as the options say, and fail over only where nothing was created; a cancel reaches B.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from reelserve.domain.models import ModelEntry
from reelserve.media.video import decode_frames, probe_video
from reelserve.providers.base import InputImages, ProviderError, TaskCancelled
from reelserve.providers.relay import build_relay
from tests.relay_support import (
    H,
    RelayContext,
    Upstream,
    W,
    dropping_upstream,
    mad,
    make_spec,
    picture,
    png,
    relay_entry,
    workdir,
)
from tests.support import LiveServer, free_port, make_settings, submit, wait_task


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """One B for the tests that neither kill nor restart it (each mints its own key, and
    sees only its own tasks)."""
    b = Upstream(tmp_path_factory.mktemp("b")).start()
    try:
        yield b
    finally:
        b.stop()


@contextlib.contextmanager
def stopped(b: Upstream) -> Iterator[Upstream]:
    try:
        yield b
    finally:
        b.stop()


# -- options ---------------------------------------------------------------------------------


def test_bad_options_name_the_model_and_the_option_and_hide_the_key() -> None:
    entry = ModelEntry(
        id="veo-b",
        provider="relay",
        options={
            "api": "seed",
            "base_url": "ftp://upstream",
            "api_key": "sk-very-secret",
            "model": "veo3.1-fast-official",
            "poll_interval": 0,
            "pol_interval": 2,
        },
    )
    with pytest.raises(ValueError) as raised:
        build_relay("relay:veo-b", entry)
    message = str(raised.value)
    assert "models[veo-b].options.base_url: expected an http(s) URL" in message
    assert "got 'ftp://upstream'" in message
    assert "models[veo-b].options.poll_interval: expected greater than 0; got 0" in message
    assert "models[veo-b].options.pol_interval: expected one of the relay options" in message
    assert "sk-very-secret" not in message

    missing = ModelEntry(id="veo-b", provider="relay", options={"api": "seed"})
    with pytest.raises(ValueError, match=r"models\[veo-b\]\.options\.base_url: expected a value"):
        build_relay("relay:veo-b", missing)
    wrong_api = ModelEntry(
        id="veo-b", provider="relay", options={"api": "grpc", "base_url": "http://b", "model": "m"}
    )
    with pytest.raises(ValueError, match=r"options\.api: expected 'seed' or 'openai'; got 'grpc'"):
        build_relay("relay:veo-b", wrong_api)


def test_defaults_and_the_provider_seam() -> None:
    entry = relay_entry("seed", "http://127.0.0.1:9/v1/", "sk-hidden-4711")
    provider = build_relay("relay:veo-b", entry)
    assert provider.name == "relay:veo-b"
    assert provider.kind == "remote"
    options = provider.options  # type: ignore[attr-defined]
    assert options.base_url == "http://127.0.0.1:9"  # the /v1 an OpenAI-style URL carries
    assert options.honours_idempotency is True  # api = seed
    assert "sk-hidden-4711" not in repr(options)  # a SecretStr
    usage = provider.usage(make_spec(), None, 1)
    assert (usage.cost, usage.credential) == (0.0, "relay:veo-b")


# -- a task through B ------------------------------------------------------------------------


async def test_text_to_video_completes_with_b_video(tmp_path: Path, upstream: Upstream) -> None:
    key = await upstream.mint()
    provider = build_relay("relay:b", relay_entry("seed", upstream.url, key))
    ctx = RelayContext(workdir(tmp_path))
    clips = await provider.run(make_spec(duration=2, seed=5), ctx)

    (clip,) = clips
    info = probe_video(clip.path)
    assert (info.width, info.height, round(info.duration)) == (W, H, 2)
    assert clip.seed == 5  # as B reports it
    assert ctx.phases()[:2] == ["submitting", "polling"]
    assert ctx.checkpoints[0]["idempotency_key"] == ctx.checkpoints[1]["idempotency_key"]
    upstream_id = ctx.checkpoints[1]["upstream_id"]
    (task,) = upstream.tasks(key)  # one task on B, the one checkpointed
    assert task["id"] == upstream_id and task["status"] == "completed"
    assert ctx.progress == sorted(ctx.progress) and ctx.progress[-1] == 1.0


async def test_image_to_video_sends_the_fetched_bytes(tmp_path: Path, upstream: Upstream) -> None:
    key = await upstream.mint()
    provider = build_relay("relay:b", relay_entry("seed", upstream.url, key))
    image = picture()
    spec = make_spec(mode="i2v", first_frame_image="https://unreachable.invalid/first.png")
    ctx = RelayContext(workdir(tmp_path), images=InputImages(first_bytes=(png(image), "image/png")))
    (clip,) = await provider.run(spec, ctx)
    first = next(decode_frames(clip.path))
    assert first.shape == (H, W, 3)
    assert mad(first, image) < 6  # B started the video on the very image A fetched


async def test_b_killed_and_restarted_mid_task(tmp_path: Path) -> None:
    """B takes the task, is killed with SIGKILL while A polls it, and comes back on the same
    port and data directory: the relay waits the outage out and collects the same task."""
    with stopped(Upstream(tmp_path)) as b:
        b.start(worker=False)  # B queues the task and holds it pending: mid-task for sure
        key = await b.mint()
        provider = build_relay("relay:b", relay_entry("seed", b.url, key))
        ctx = RelayContext(workdir(tmp_path))
        job = asyncio.ensure_future(provider.run(make_spec(), ctx))
        await ctx.until_polling(job)
        await asyncio.to_thread(b.kill)
        polled = len(ctx.progress)
        # Two waits more: a poll began after the kill, met the closed port, and the relay
        # waits to try again (a refused poll reports no progress).
        async with asyncio.timeout(30):
            await ctx.until_sleeps(ctx.sleeps + 2)
        assert not job.done()
        await asyncio.to_thread(b.start)  # with its worker, which renders the pending task
        async with asyncio.timeout(90):
            (clip,) = await job
        assert len(ctx.progress) > polled
        assert probe_video(clip.path).width == W
        (task,) = b.tasks(key)  # exactly one task was created on B
        assert task["id"] == ctx.checkpoints[1]["upstream_id"]


async def test_a_create_of_unknown_outcome_goes_again_under_its_key(
    tmp_path: Path, upstream: Upstream
) -> None:
    """An attempt that stopped in `submitting` after B took the create: the next attempt
    sends it again with the same Idempotency-Key, and B answers with the same task."""
    key = await upstream.mint()
    provider = build_relay("relay:b", relay_entry("seed", upstream.url, key))
    first = RelayContext(workdir(tmp_path, "one"))
    await provider.run(make_spec(), first)
    submitting = first.checkpoints[0]
    assert submitting["phase"] == "submitting"

    resumed = RelayContext(workdir(tmp_path, "two"), resume_state=submitting, can_fail_over=True)
    resumed.task_id = first.task_id
    (clip,) = await provider.run(make_spec(), resumed)
    assert probe_video(clip.path).height == H
    assert resumed.checkpoints[-1]["upstream_id"] == first.checkpoints[1]["upstream_id"]
    assert resumed.checkpoints[-1]["uncertain"] is True
    assert len(upstream.tasks(key)) == 1


async def test_unknown_outcome_without_idempotency_fails_clearly(
    tmp_path: Path, upstream: Upstream
) -> None:
    key = await upstream.mint()
    provider = build_relay("relay:b", relay_entry("seed", upstream.url, key, idempotent=False))
    ctx = RelayContext(
        workdir(tmp_path),
        resume_state={"phase": "submitting", "idempotency_key": "k-1"},
        can_fail_over=True,
    )
    with pytest.raises(ProviderError) as raised:
        await provider.run(make_spec(), ctx)
    assert raised.value.code == "upstream_error"
    assert "may have accepted and billed it" in raised.value.message
    assert "did not send it again" in raised.value.message
    assert raised.value.failover is False  # something may exist upstream: never elsewhere
    assert upstream.tasks(key) == []


# -- 402, 429, down ----------------------------------------------------------------------------


@pytest.mark.parametrize("can_fail_over", [True, False])
async def test_payment_required_is_mapped(
    tmp_path: Path, upstream: Upstream, can_fail_over: bool
) -> None:
    key = await upstream.mint(budget=0.5)  # a 1-second video of `tiny` costs 1.0
    provider = build_relay("relay:b", relay_entry("seed", upstream.url, key))
    ctx = RelayContext(workdir(tmp_path), can_fail_over=can_fail_over)
    with pytest.raises(ProviderError) as raised:
        await provider.run(make_spec(), ctx)
    error = raised.value
    assert error.code == "upstream_error"
    assert "relay:b (seed API at http://127.0.0.1:" in error.message
    assert "refused the request for payment" in error.message
    assert "HTTP 402 payment_required" in error.message
    assert error.failover is can_fail_over  # nothing was created on B
    assert ctx.checkpoints[-1]["phase"] == "idle"
    assert upstream.tasks(key) == []


async def test_rate_limit_fails_after_the_retries_the_options_allow(
    tmp_path: Path, upstream: Upstream
) -> None:
    key = await upstream.mint(rate_per_minute=1)
    with upstream.client(key) as client:  # the minute's one submit
        taken = client.post("/v1/videos/generations", json={"model": "tiny", "prompt": "first"})
        assert taken.status_code == 200, taken.text

    # No retries: the 429 fails the task at once, mapped, and may fail over.
    none = build_relay("relay:b", relay_entry("seed", upstream.url, key, rate_limit_retries=0))
    ctx = RelayContext(workdir(tmp_path, "none"), can_fail_over=True)
    with pytest.raises(ProviderError) as raised:
        await none.run(make_spec(), ctx)
    assert "is rate limiting this server's key (HTTP 429 rate_limit_error" in raised.value.message
    assert "still limited after 0 retries (rate_limit_retries = 0)" in raised.value.message
    assert raised.value.failover is True

    # Retries allowed, but B asks for longer than max_retry_after: no wait for nothing.
    patient = build_relay(
        "relay:b",
        relay_entry("seed", upstream.url, key, rate_limit_retries=5, max_retry_after=2),
    )
    ctx = RelayContext(workdir(tmp_path, "patient"), can_fail_over=False)
    with pytest.raises(ProviderError) as raised:
        await patient.run(make_spec(), ctx)
    assert "more than max_retry_after (2 s)" in raised.value.message
    assert raised.value.failover is False  # no next route
    assert len(upstream.tasks(key)) == 1  # only the direct submit


async def test_an_upstream_that_is_down_fails_over(tmp_path: Path) -> None:
    """Nothing listens on the port: every try is refused, so nothing exists upstream."""
    entry = relay_entry("seed", f"http://127.0.0.1:{free_port()}", "key", retries=2)
    provider = build_relay("relay:down", entry)
    ctx = RelayContext(workdir(tmp_path), can_fail_over=True)
    with pytest.raises(ProviderError) as raised:
        await provider.run(make_spec(), ctx)
    assert raised.value.failover is True
    assert raised.value.message.startswith("cannot reach relay:down (seed API at http://")
    assert ctx.phases().count("submitting") == 3  # the first try and 2 retries


@pytest.mark.parametrize("idempotent", [True, False])
async def test_a_create_of_unknown_outcome_never_fails_over(
    tmp_path: Path, idempotent: bool
) -> None:
    """The upstream reads the create and drops the connection: it may have made the task. It
    is sent again only under the same key (idempotent), and never to the next route."""
    with dropping_upstream() as (url, heads):
        entry = relay_entry("seed", url, "key", idempotent=idempotent, retries=1)
        provider = build_relay("relay:drop", entry)
        ctx = RelayContext(workdir(tmp_path), can_fail_over=True)
        with pytest.raises(ProviderError) as raised:
            await provider.run(make_spec(), ctx)
    error = raised.value
    assert error.failover is False and error.code == "upstream_error"
    keys = {
        line.split(b":", 1)[1].strip()
        for head in heads
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"idempotency-key:")
    }
    assert keys == {ctx.checkpoints[0]["idempotency_key"].encode()}
    assert ctx.phases()[-1] == "submitting"  # a resumed attempt knows it is unknown
    if idempotent:
        assert len(heads) == 2  # the first try and one retry, under one key
        assert "kept failing" in error.message and "same Idempotency-Key" in error.message
    else:
        assert len(heads) == 1
        assert "failed midway" in error.message and "does not send it again" in error.message


# -- the end of an upstream task ----------------------------------------------------------------


async def test_cancel_reaches_the_upstream_task(tmp_path: Path) -> None:
    with stopped(Upstream(tmp_path)) as b:
        b.start(worker=False)
        key = await b.mint()
        provider = build_relay("relay:b", relay_entry("seed", b.url, key))
        ctx = RelayContext(workdir(tmp_path))
        job = asyncio.ensure_future(provider.run(make_spec(), ctx))
        await ctx.until_polling(job)
        ctx.cancel()
        with pytest.raises(TaskCancelled):
            await asyncio.wait_for(job, 30)
        upstream_id = ctx.checkpoints[-1]["upstream_id"]
        assert b.task(key, upstream_id)["status"] == "cancelled"


async def test_an_upstream_task_that_fails_fails_ours_with_its_code(
    tmp_path: Path, upstream: Upstream
) -> None:
    """B cannot decode the image it was sent: its task fails (or its submit is a 400 naming
    the image); ours fails with invalid_image, B's code, and says where it came from."""
    key = await upstream.mint()
    provider = build_relay("relay:b", relay_entry("seed", upstream.url, key))
    spec = make_spec(mode="i2v", first_frame_image="https://unreachable.invalid/broken.png")
    broken = InputImages(first_bytes=(b"\x89PNG\r\n\x1a\n but not an image", "image/png"))
    ctx = RelayContext(workdir(tmp_path), images=broken)
    with pytest.raises(ProviderError) as raised:
        await provider.run(spec, ctx)
    assert raised.value.code == "invalid_image", raised.value.message
    assert "relay:b (seed API at" in raised.value.message


# -- through reelserve A -------------------------------------------------------------------------


@contextlib.contextmanager
def front(tmp_path: Path, entry: ModelEntry) -> Iterator[tuple[LiveServer, str]]:
    """Reelserve A serving `entry` (a relay to B), and a live key on A."""
    a = LiveServer(make_settings(tmp_path / "a-data", models=[entry])).start()
    try:
        yield a, a.mint("live")
    finally:
        a.stop()


def _download(url: str, path: Path) -> Path:
    answer = httpx.get(url, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "video/mp4"
    path.write_bytes(answer.content)
    return path


def test_a_relays_to_b_and_rehosts_the_video(tmp_path: Path, upstream: Upstream) -> None:
    key_b = asyncio.run(upstream.mint())
    with front(tmp_path, relay_entry("seed", upstream.url, key_b)) as (a, key_a):
        with a.client(key_a) as client:
            task_id = submit(client, {"model": "relayed", "prompt": "relayed", "duration": 2})
            done = wait_task(client, task_id, timeout=90)
        assert done["status"] == "completed", done
        assert done["route"] == "relay:relayed"  # the model's one route, a relay
        (video,) = done["result"]["videos"]
        url = video["url"][0]
        assert url.startswith(f"{a.url}/v1/files/")  # A's own storage, not B's link
        info = probe_video(_download(url, tmp_path / "a.mp4"))
        assert (info.width, info.height, round(info.duration)) == (W, H, 2)
        assert (video["width"], video["height"]) == (W, H)
    (task,) = upstream.tasks(key_b)
    assert task["status"] == "completed"


def test_through_a_b_killed_and_restarted_mid_task(tmp_path: Path) -> None:
    with stopped(Upstream(tmp_path)) as b:
        b.start(worker=False)  # B takes the task and holds it pending
        key_b = asyncio.run(b.mint())
        entry = relay_entry("seed", b.url, key_b)
        with front(tmp_path, entry) as (a, key_a), a.client(key_a) as client:
            task_id = submit(client, {"model": "relayed", "prompt": "killed", "duration": 1})
            deadline = time.monotonic() + 60
            while not b.tasks(key_b):  # A's create reached B
                assert time.monotonic() < deadline, "A never created B's task"
                time.sleep(0.05)
            b.kill()
            assert client.get(f"/v1/tasks/{task_id}").json()["data"]["status"] == "processing"
            b.start()  # the same port and data directory, with its worker
            done = wait_task(client, task_id, timeout=90)
        assert done["status"] == "completed", done
        (task,) = b.tasks(key_b)  # exactly one task created on B
        assert task["status"] == "completed"


def test_through_a_payment_required_fails_the_task(tmp_path: Path, upstream: Upstream) -> None:
    key_b = asyncio.run(upstream.mint(budget=0.5))
    entry = relay_entry("seed", upstream.url, key_b)
    with front(tmp_path, entry) as (a, key_a), a.client(key_a) as client:
        task_id = submit(client, {"model": "relayed", "prompt": "unpaid", "duration": 1})
        done = wait_task(client, task_id, timeout=60)
    assert done["status"] == "failed"
    assert done["error"]["code"] == "upstream_error"
    assert "refused the request for payment" in done["error"]["message"]
    assert "HTTP 402 payment_required" in done["error"]["message"]
    assert upstream.tasks(key_b) == []


def test_through_a_a_refused_relay_fails_over_to_the_next(
    tmp_path: Path, upstream: Upstream
) -> None:
    """Two relay routes: the first's key is over its budget on B (402 at create: nothing made
    there), so the task moves on and completes on the second, which the answer names."""
    broke = asyncio.run(upstream.mint(budget=0.5))
    paying = asyncio.run(upstream.mint())
    single = relay_entry("seed", upstream.url, None)
    options = single.options
    entry = ModelEntry(
        **single.model_dump(exclude={"provider", "options", "routes"}, exclude_none=True),
        routes=[
            {"provider": "relay", "name": "b-broke", "options": {**options, "api_key": broke}},
            {"provider": "relay", "name": "b-paid", "options": {**options, "api_key": paying}},
        ],
    )
    with front(tmp_path, entry) as (a, key_a), a.client(key_a) as client:
        task_id = submit(client, {"model": "relayed", "prompt": "failover", "duration": 1})
        done = wait_task(client, task_id, timeout=90)
    assert done["status"] == "completed", done
    assert done["route"] == "b-paid"
    assert upstream.tasks(broke) == []
    assert len(upstream.tasks(paying)) == 1  # exactly one upstream task
