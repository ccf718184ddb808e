"""The Python SDK (`reelserve.client`) against a live server over real HTTP: submit, get, wait
(event stream and polling), cancel, list paging, download, models, idempotency, and exceptions
that carry the error envelope. Rate limiting is answered by a local stand-in for a rate-limiting
proxy in front of the server (reelserve itself does not answer 429)."""

from __future__ import annotations

import asyncio
import http.server
import inspect
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from reelserve.client import (
    APIConnectionError,
    AsyncClient,
    AuthenticationError,
    Client,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    ReelserveError,
    Task,
    TaskCancelled,
    TaskFailed,
    WaitTimeout,
    image_data_url,
)
from reelserve.client._events import EventReader
from reelserve.client._submission import SubmitFields
from reelserve.client._wait import Waiter
from reelserve.media.video import decode_frames, probe_video
from tests.support import LiveServer, free_port, make_settings, static_server

MODEL = "sandbox"
PROMPT = "a paper boat on a pond"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(make_settings(tmp_path_factory.mktemp("sdk") / "data")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """No worker: tasks stay pending until cancelled."""
    server = LiveServer(
        make_settings(tmp_path_factory.mktemp("sdk-idle") / "data"), run_worker=False
    ).start()
    yield server
    server.stop()


def _check_updates(updates: list[Task]) -> None:
    assert updates, "on_update was never called"
    pairs = [(t.status, t.progress) for t in updates]
    assert len(pairs) == len(set(pairs)), f"on_update repeated a state: {pairs}"
    progress = [t.progress for t in updates]
    assert progress == sorted(progress), f"progress decreased: {progress}"
    assert updates[-1].status == "completed" and updates[-1].progress == 100


def _requests(server: LiveServer, route: str) -> float:
    with server.client() as anon:
        text = anon.get("/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "reelserve_http_requests_total" and sample.labels["route"] == route
    )


@pytest.mark.parametrize("use_events", [True, False], ids=["events", "polling"])
def test_sync_submit_wait_get_download(live: LiveServer, tmp_path: Path, use_events: bool) -> None:
    streams = _requests(live, "/v1/tasks/{task_id}/events")
    with Client(live.url, live.mint()) as client:
        task_id = client.submit(
            MODEL, PROMPT, duration=2, aspect_ratio="9:16", resolution="720p", seed=7
        )
        assert task_id.startswith("task_")
        updates: list[Task] = []
        task = client.wait(task_id, timeout=120, on_update=updates.append, use_events=use_events)
        _check_updates(updates)
        # One event stream followed the task, or none when polling was asked for.
        assert _requests(live, "/v1/tasks/{task_id}/events") == streams + (1 if use_events else 0)
        assert task.status == "completed" and task.finished and task.error is None
        assert task.actual_time is not None and task.completed is not None
        (video,) = task.videos
        assert (video.width, video.height, video.seed, video.has_audio) == (720, 1280, 7, False)
        assert video.content_type == "video/mp4" and video.url.startswith(live.url)
        assert client.get(task_id) == task
        saved = client.download(task, tmp_path / "nested" / "boat.mp4")
        assert saved == tmp_path / "nested" / "boat.mp4"
        assert saved.stat().st_size == video.size_bytes
        info = probe_video(saved)
        assert (info.width, info.height) == (720, 1280)
        assert info.duration == pytest.approx(2.0, abs=0.05)
        assert not list(saved.parent.glob(".*.part"))  # no partial file left behind


def test_sync_samples_download_all_and_events(live: LiveServer, tmp_path: Path) -> None:
    with Client(live.url, live.mint()) as client:
        task_id = client.submit(MODEL, PROMPT, duration=1, sample_count=2, seed=40)
        seen = list(client.events(task_id))
        assert seen[-1].status == "completed" and all(not t.finished for t in seen[:-1])
        task = client.wait(task_id)
        paths = client.download_all(task, tmp_path / "out.mp4")
        assert paths == [tmp_path / "out.mp4", tmp_path / "out-1.mp4"]
        assert [v.seed for v in task.videos] == [40, 41]
        assert paths[0].read_bytes() != paths[1].read_bytes()
        for path in paths:
            assert probe_video(path).duration == pytest.approx(1.0, abs=0.05)
        # A Video or a bare file URL works too.
        assert client.download(task.videos[1], tmp_path / "v.mp4").read_bytes() == (
            paths[1].read_bytes()
        )
        assert client.download(task.videos[0].url, tmp_path / "u.mp4").read_bytes() == (
            paths[0].read_bytes()
        )


def test_async_client(live: LiveServer, tmp_path: Path) -> None:
    key = live.mint()

    async def scenario() -> None:
        async with AsyncClient(live.url, key) as client:
            updates: list[Task] = []

            async def on_update(task: Task) -> None:
                updates.append(task)

            task_ids = [await client.submit(MODEL, PROMPT, duration=1, seed=s) for s in (1, 2)]
            tasks = await asyncio.gather(
                *(client.wait(t, timeout=120, on_update=on_update) for t in task_ids)
            )
            assert [t.status for t in tasks] == ["completed", "completed"]
            assert {t.id for t in updates} == set(task_ids)
            for task_id in task_ids:
                _check_updates([t for t in updates if t.id == task_id])
            polled = await client.wait(task_ids[0], use_events=False)
            assert polled == tasks[0]
            assert await client.get(task_ids[1]) == tasks[1]
            listed = [t.id async for t in client.list(page_size=1)]
            assert listed == task_ids[::-1]
            saved = await client.download(tasks[0], tmp_path / "a.mp4")
            assert probe_video(saved).duration == pytest.approx(1.0, abs=0.05)
            models = await client.models()
            assert "sandbox" in {m.id for m in models}
            streamed = [t async for t in client.events(task_ids[1])]
            assert streamed == [tasks[1]]
            with pytest.raises(NotFoundError):
                await client.get("task_missing")
            task = await client.generate(MODEL, PROMPT, duration=1)
            assert task.status == "completed"

    asyncio.run(scenario())


def test_list_pages_newest_first(idle: LiveServer) -> None:
    with Client(idle.url, idle.mint()) as client:
        ids = [client.submit(MODEL, f"{PROMPT} {i}", duration=1) for i in range(5)]
        other = client.submit("veo3.1-fast-official", PROMPT, duration=4)
        newest_first = [other, *ids[::-1]]
        assert [t.id for t in client.list(page_size=2)] == newest_first
        page = client.list_page(limit=2)
        assert [t.id for t in page.tasks] == newest_first[:2]
        assert page.has_more and page.next_after == newest_first[1]
        last = client.list_page(limit=4, after=newest_first[1])
        assert [t.id for t in last.tasks] == newest_first[2:]
        assert not last.has_more and last.next_after is None
        assert [t.id for t in client.list(model=MODEL, page_size=3)] == ids[::-1]
        assert all(t.status == "pending" for t in client.list())
        client.cancel(ids[0])
        assert [t.id for t in client.list(status="cancelled")] == [ids[0]]


def test_cancel_and_waiting_on_unfinished_tasks(idle: LiveServer) -> None:
    with Client(idle.url, idle.mint()) as client:
        task_id = client.submit(MODEL, PROMPT, duration=1)
        pending = client.get(task_id)
        assert pending.status == "pending" and pending.queue_position is not None
        with pytest.raises(WaitTimeout) as timed_out:
            client.wait(task_id, timeout=0.6)
        assert isinstance(timed_out.value, TimeoutError)
        assert timed_out.value.task is not None and timed_out.value.task.status == "pending"
        with pytest.raises(WaitTimeout):
            client.wait(task_id, timeout=0.6, use_events=False)

        cancelled = client.cancel(task_id)
        assert cancelled.status == "cancelled"
        with pytest.raises(ConflictError) as again:
            client.cancel(task_id)
        assert again.value.status_code == 409 and again.value.param == "task_id"
        assert "already cancelled" in again.value.message
        with pytest.raises(TaskCancelled) as raised:
            client.wait(task_id)
        assert raised.value.task.id == task_id
        assert client.wait(task_id, raise_on_failure=False).status == "cancelled"
        with pytest.raises(ReelserveError, match="no videos"):
            client.download(cancelled, "never.mp4")


def test_failed_task_raises_task_failed(live: LiveServer, tmp_path: Path) -> None:
    with static_server(tmp_path) as images, Client(live.url, live.mint()) as client:
        task_id = client.submit(
            MODEL, PROMPT, duration=1, first_frame_image=f"{images}/missing.png"
        )
        with pytest.raises(TaskFailed) as failed:
            client.wait(task_id)
        assert failed.value.code == "invalid_image"
        assert failed.value.task.status == "failed"
        assert failed.value.message == failed.value.task.error.message  # type: ignore[union-attr]
        assert "invalid_image" in str(failed.value)
        task = client.wait(task_id, raise_on_failure=False)
        assert task.error is not None and task.error.code == "invalid_image"
        assert task.error.type == "invalid_request_error"


def test_local_image_file_is_sent_as_a_data_url(live: LiveServer, tmp_path: Path) -> None:
    picture = tmp_path / "red.png"
    Image.new("RGB", (320, 180), (220, 20, 30)).save(picture)
    with Client(live.url, live.mint()) as client:
        task = client.generate(MODEL, PROMPT, duration=1, first_frame_image=picture)
        saved = client.download(task, tmp_path / "red.mp4")
    first = next(decode_frames(saved))
    middle = first[first.shape[0] // 2, first.shape[1] // 2].astype(int)
    assert abs(middle[0] - 220) < 30 and middle[1] < 60 and middle[2] < 70, middle
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, "WEBP")
    assert image_data_url(buffer.getvalue()).startswith("data:image/webp;base64,")
    with pytest.raises(ValueError, match="JPEG, PNG or WebP"):
        image_data_url(b"GIF89a....")


def test_errors_carry_the_envelope(live: LiveServer) -> None:
    key = live.mint()
    with Client(live.url, key) as client:
        with pytest.raises(InvalidRequestError) as bad:
            client.submit(MODEL, PROMPT, extra={"duration": "8"})
        error = bad.value
        assert (error.status_code, error.code, error.type) == (400, 400, "invalid_request_error")
        assert error.param == "duration" and "duration" in error.message
        assert error.body["error"]["message"] == error.message
        with pytest.raises(InvalidRequestError) as unknown_model:
            client.submit("no-such-model", PROMPT)
        assert unknown_model.value.param == "model" and "sandbox" in unknown_model.value.message
        with pytest.raises(NotFoundError) as missing:
            client.get("task_01NOSUCHTASK")
        assert missing.value.param == "task_id" and missing.value.status_code == 404
        assert isinstance(missing.value, InvalidRequestError)
        task_id = client.submit(MODEL, PROMPT, duration=1)
    with Client(live.url, live.mint()) as stranger, pytest.raises(NotFoundError):
        stranger.get(task_id)
    with Client(live.url, "rs_test_wrong") as wrong, pytest.raises(AuthenticationError) as denied:
        wrong.models()
    assert denied.value.status_code == 401 and denied.value.type == "authentication_error"
    with (
        Client(f"http://127.0.0.1:{free_port()}", key, max_retries=1) as nowhere,
        pytest.raises(APIConnectionError),
    ):
        nowhere.get(task_id)


def test_idempotency_key(live: LiveServer) -> None:
    with Client(live.url, live.mint()) as client:
        first = client.submit(MODEL, PROMPT, duration=1, idempotency_key="order-42")
        assert client.submit(MODEL, PROMPT, duration=1, idempotency_key="order-42") == first
        with pytest.raises(ConflictError) as conflict:
            client.submit(MODEL, "another prompt", duration=1, idempotency_key="order-42")
        assert conflict.value.param == "Idempotency-Key"
        # Without a key, every call is a new task (the SDK's own key only covers its retries).
        assert client.submit(MODEL, PROMPT, duration=1) != client.submit(MODEL, PROMPT, duration=1)


def test_models_and_environment(live: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REELSERVE_URL", live.url)
    monkeypatch.setenv("REELSERVE_KEY", live.mint())
    with Client() as client:
        models = {m.id: m for m in client.models()}
    sandbox = models["sandbox"]
    assert sandbox.provider == "sandbox" and sandbox.available and sandbox.runs_on == "sandbox"
    assert 1 in sandbox.durations and "720p" in sandbox.resolutions
    assert models["veo3.1-fast-official"].durations == (4, 6, 8)
    monkeypatch.delenv("REELSERVE_KEY")
    with pytest.raises(ReelserveError, match="REELSERVE_KEY"):
        Client()


class _RateLimited(http.server.BaseHTTPRequestHandler):
    """Answers `GET /v1/tasks/{id}` 429 (envelope and Retry-After) `limited` times, then 200."""

    limited = 0
    seen: list[str] = []

    def do_GET(self) -> None:
        type(self).seen.append(self.path)
        if type(self).limited > 0:
            type(self).limited -= 1
            body: dict[str, Any] = {
                "code": 429,
                "error": {
                    "message": "too many requests",
                    "type": "rate_limit_error",
                    "param": None,
                },
            }
            self._send(429, body, {"Retry-After": self.headers.get("X-Wait", "0")})
            return
        view = {"id": "task_1", "status": "pending", "progress": 0, "model": MODEL}
        self._send(200, {"code": 200, "data": view}, {})

    def _send(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_rate_limit_error_and_retries() -> None:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RateLimited)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        _RateLimited.limited, _RateLimited.seen = 1, []
        waits_7 = httpx.Client(headers={"X-Wait": "7"})
        with (
            Client(url, "rs_test_x", max_retries=0, http_client=waits_7) as client,
            pytest.raises(RateLimitError) as rl,
        ):
            client.get("task_1")
        assert rl.value.retry_after == 7.0 and rl.value.status_code == 429
        assert rl.value.type == "rate_limit_error" and rl.value.message == "too many requests"

        _RateLimited.limited, _RateLimited.seen = 2, []
        with Client(url, "rs_test_x", max_retries=2) as client:
            assert client.get("task_1").status == "pending"
        assert len(_RateLimited.seen) == 3  # two 429s waited out, then the answer

        _RateLimited.limited, _RateLimited.seen = 1, []
        waits_an_hour = httpx.Client(headers={"X-Wait": "3600"})  # longer than the SDK waits
        with (
            Client(url, "rs_test_x", max_retries=2, http_client=waits_an_hour) as client,
            pytest.raises(RateLimitError),
        ):
            client.get("task_1")
        assert len(_RateLimited.seen) == 1
        waits_7.close()
        waits_an_hour.close()
    finally:
        httpd.shutdown()
        httpd.server_close()


class _NoEvents(http.server.BaseHTTPRequestHandler):
    """A server without the events route (an older one, or a proxy that drops it): the task is
    pending for two polls, then completed."""

    seen: list[str] = []

    def do_GET(self) -> None:
        type(self).seen.append(self.path)
        if self.path.endswith("/events"):
            error = {"message": f"no route for GET {self.path}", "type": "invalid_request_error"}
            status, body = 404, {"code": 404, "error": {**error, "param": None}}
        else:
            polls = sum(1 for p in type(self).seen if not p.endswith("/events"))
            done = polls > 2
            view = {
                "id": "task_1",
                "status": "completed" if done else "pending",
                "progress": 100 if done else 0,
                "model": MODEL,
            }
            status, body = 200, {"code": 200, "data": view}
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_wait_falls_back_to_polling_without_an_event_stream() -> None:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NoEvents)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        _NoEvents.seen = []
        updates: list[Task] = []
        with Client(f"http://127.0.0.1:{httpd.server_address[1]}", "rs_test_x") as client:
            task = client.wait("task_1", poll_interval=0.05, on_update=updates.append)
        assert task.status == "completed"
        assert [t.status for t in updates] == ["pending", "completed"]
        assert _NoEvents.seen == ["/v1/tasks/task_1/events"] + ["/v1/tasks/task_1"] * 3
    finally:
        httpd.shutdown()
        httpd.server_close()


# -- the two clients and their shared, I/O-free base ----------------------------------------------


def test_both_clients_have_the_same_surface() -> None:
    """`AsyncClient` is `Client` awaited: the same public methods with the same parameters
    (closing and the context manager being the asyncio ones)."""
    own = {"close", "aclose"}

    def public(cls: type) -> set[str]:
        return {n for n in dir(cls) if not n.startswith("_")} - own

    assert public(Client) == public(AsyncClient)
    assert public(Client) >= {"submit", "get", "wait", "events", "download_all", "models"}
    for name in sorted(public(Client)):
        sync, awaited = getattr(Client, name), getattr(AsyncClient, name)
        if not callable(sync):
            continue
        assert inspect.signature(sync).parameters == inspect.signature(awaited).parameters, name
        assert not inspect.iscoroutinefunction(sync), name
        if name == "list":
            assert inspect.isasyncgenfunction(awaited)
        elif name != "events":  # events returns the stream without awaiting anything
            assert inspect.iscoroutinefunction(awaited), name
    assert inspect.signature(Client).parameters == inspect.signature(AsyncClient).parameters
    assert inspect.iscoroutinefunction(AsyncClient.aclose)


@pytest.fixture
def offline() -> Iterator[Client]:
    """A client whose requests are built but never sent (nothing listens on that port)."""
    http = httpx.Client(headers={"X-Trace": "t1"})
    with Client(f"http://127.0.0.1:{free_port()}/base", "rs_test_k", http_client=http) as client:
        yield client
    http.close()


def test_requests_are_built_by_the_base(offline: Client) -> None:
    get = offline._get_call("task/1")
    assert str(get.request.url).endswith("/base/v1/tasks/task%2F1") and get.idempotent
    headers = get.request.headers
    assert headers["authorization"] == "Bearer rs_test_k"
    assert headers["user-agent"].startswith("reelserve-python/")
    assert headers["x-trace"] == "t1"  # the caller's httpx client's own headers still apply
    assert not offline._cancel_call("task_1").idempotent
    listing = offline._list_page_call(None, "sandbox", 5, None).request
    assert dict(listing.url.params) == {"model": "sandbox", "limit": "5"}
    events = offline._events_request("task_1", None)
    assert events.headers["accept"] == "text/event-stream"
    assert events.extensions["timeout"]["read"] == 60.0
    # A file link carries no key: it is signed, and may live on another host.
    download = offline._plan_download("https://cdn.example/v.mp4?sig=1", "out/v.mp4", 0)
    assert "authorization" not in download.request.headers
    assert download.part == Path("out/.v.mp4.part")


def test_submit_body_and_idempotency_keys(offline: Client) -> None:
    png = io.BytesIO()
    Image.new("RGB", (2, 2)).save(png, "PNG")
    fields = SubmitFields(duration=4, seed=None, first_frame_image=png.getvalue())
    first = offline._submit_call(MODEL, PROMPT, {**fields, "extra": {"x_note": 1}})
    body = json.loads(first.request.content)
    assert body["duration"] == 4 and body["x_note"] == 1 and "seed" not in body
    assert body["first_frame_image"].startswith("data:image/png;base64,")
    second = offline._submit_call(MODEL, PROMPT, fields)
    keys = {c.request.headers["idempotency-key"] for c in (first, second)}
    assert len(keys) == 2 and all(k.startswith("rsdk-") for k in keys)
    mine = offline._submit_call(MODEL, PROMPT, {"idempotency_key": "order-7"})
    assert mine.request.headers["idempotency-key"] == "order-7"
    assert "idempotency_key" not in json.loads(mine.request.content)
    with pytest.raises(
        TypeError, match=r"Client\.submit\(\) got an unexpected keyword argument 'durration'"
    ):
        offline.submit(MODEL, PROMPT, durration=4)  # type: ignore[call-arg]


def test_retry_decisions(offline: Client) -> None:
    get, cancel = offline._get_call("task_1"), offline._cancel_call("task_1")

    def answer(status: int, retry_after: str | None = None) -> httpx.Response:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        return httpx.Response(status, headers=headers, request=get.request)

    assert offline._delay_after(get, 0, answer(429, "7")) == 7.0
    assert offline._delay_after(get, 0, answer(429, "3600")) is None  # longer than it waits
    assert 0.375 <= (offline._delay_after(get, 0, answer(503)) or 0) <= 0.625
    assert 0.75 <= (offline._delay_after(get, 1, answer(502)) or 0) <= 1.25
    assert offline._delay_after(get, 2, answer(503)) is None  # max_retries=2 spent
    assert offline._delay_after(get, 0, answer(500)) is None
    assert offline._delay_after(get, 0, answer(200)) is None
    assert offline._delay_after(cancel, 0, answer(503)) is None  # it may have been done
    assert offline._delay_after(cancel, 0, answer(429, "1")) == 1.0
    refused, cut = httpx.ConnectError("refused"), httpx.ReadTimeout("cut")
    assert offline._delay_after_error(get, 0, cut) > 0
    assert offline._delay_after_error(cancel, 0, refused) > 0  # never reached the server
    with pytest.raises(APIConnectionError, match=r"POST .*/cancel: cut"):
        offline._delay_after_error(cancel, 0, cut)
    with pytest.raises(APIConnectionError, match="refused"):
        offline._delay_after_error(get, 2, refused)


def _view(status: str, progress: int) -> Task:
    return Task.from_dict({"id": "task_1", "status": status, "progress": progress})


def test_wait_decisions() -> None:
    updates: list[Task] = []
    waiter = Waiter("task_1", None, updates.append, 0.5, 2.0, True)
    for status, progress in [("pending", 0), ("pending", 0), ("processing", 40)]:
        waiter.seen(_view(status, progress))
    assert [(t.status, t.progress) for t in updates] == [("pending", 0), ("processing", 40)]
    assert waiter.done is None
    assert [waiter.poll_delay() for _ in range(6)] == [0.5, 0.75, 1.125, 1.6875, 2.0, 2.0]
    # A stream that ends or breaks is followed again twice, then given up for polling.
    assert waiter.reconnect_delay() == 0.25
    assert waiter.reconnect_delay(httpx.ReadError("reset")) == 0.5
    assert waiter.reconnect_delay(APIConnectionError("reset")) is None
    missing = NotFoundError("no route", status_code=404, type="invalid_request_error")
    assert Waiter("task_1", None, None, 1, 1, True).reconnect_delay(missing) is None
    denied = AuthenticationError("revoked", status_code=401, type="authentication_error")
    with pytest.raises(AuthenticationError):
        Waiter("task_1", None, None, 1, 1, True).reconnect_delay(denied)
    with pytest.raises(RuntimeError, match="a bug in on_update"):
        Waiter("task_1", None, None, 1, 1, True).reconnect_delay(RuntimeError("a bug in on_update"))
    waiter.seen(_view("failed", 40))
    assert waiter.done is not None and waiter.reconnect_delay() is None
    with pytest.raises(TaskFailed):
        waiter.result()
    lenient = Waiter("task_1", None, None, 1, 1, False)
    lenient.seen(_view("cancelled", 0))
    assert lenient.result().status == "cancelled"
    late = Waiter(_view("pending", 0), 0.0, None, 1, 1, True)
    late.seen(_view("pending", 0))
    with pytest.raises(WaitTimeout) as timed_out:
        late.poll_delay()
    assert timed_out.value.task == _view("pending", 0) and timed_out.value.task_id == "task_1"


def test_event_reader() -> None:
    reader = EventReader(None)
    lines = [": keep-alive", "", "id: 1", "event: status"]
    lines += ['data: {"id": "task_1", "status": "processing",', 'data: "progress": 10}', ""]
    seen = [task for task in map(reader.feed, lines) if task is not None]
    assert [(t.status, t.progress) for t in seen] == [("processing", 10)] and not reader.done
    assert reader.feed('data: {"id": "task_1", "status": "completed", "progress": 100}') is None
    assert reader.feed("").status == "completed" and reader.done  # type: ignore[union-attr]
    expired = EventReader(deadline=0.0)  # a deadline long past
    assert expired.feed(": keep-alive") is None and expired.done
