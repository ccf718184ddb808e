"""Webhooks over real HTTP: a local receiver on 127.0.0.1 verifies Standard Webhooks signatures
(with the `standardwebhooks` package and with HMAC computed here), fails the first deliveries
(a 500, then a timeout) and accepts the third. Also: failed and cancelled tasks, refusal of
loopback targets at submit and at delivery, survival of a worker killed mid-delivery, and the
signing secret shown once by `reelserve keys create` and replaced by `rotate-webhook-secret`.

The servers allow 127.0.0.0/8 as a webhook network where a test needs to reach the receiver;
the refusal tests use servers (or workers) that do not.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from standardwebhooks import Webhook, WebhookVerificationError

from reelserve.cli.main import mint_key_with_webhook_secret
from reelserve.store.db import create_engine
from tests.databases import database_url
from tests.support import LiveServer, make_settings, start_worker, static_server, submit, wait_task

QUICK = {"model": "sandbox", "prompt": "a paper boat on a pond", "duration": 1}
FAST = {
    "allow_http_webhooks": True,
    "webhook_allow_networks": ["127.0.0.0/8"],
    "webhook_timeout": 2.0,
    "webhook_retry_schedule": [0.3, 0.3, 0.3, 0.3],
}
WORKER_ENV = {
    "REELSERVE_WEBHOOK_TIMEOUT": "2",
    "REELSERVE_WEBHOOK_RETRY_SCHEDULE": "[0.3, 0.3, 0.3]",
    "REELSERVE_WEBHOOK_ALLOW_NETWORKS": '["127.0.0.0/8"]',
}


# -- a webhook receiver --------------------------------------------------------------------------


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """An HTTP server on 127.0.0.1 whose answers follow a script per path: "ok" (200),
    "error" (500), "slow" (answers after 5 s, past the sender's timeout), "block" (answers only
    once `release` is set). Past the end of its script a path answers "ok"."""

    def __init__(self, script: dict[str, list[str]] | None = None) -> None:
        self.script = {path: list(steps) for path, steps in (script or {}).items()}
        self.hits: list[Hit] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver.lock:
                    receiver.hits.append(
                        Hit(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    steps = receiver.script.get(self.path, [])
                    step = steps.pop(0) if steps else "ok"
                if step == "slow":
                    time.sleep(5)
                elif step == "block":
                    receiver.release.wait(60)
                status = 500 if step == "error" else 200
                try:
                    self.send_response(status)
                    self.send_header("content-length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                except OSError:
                    pass  # the sender gave up waiting (timeout) or died

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def wait(self, count: int, path: str, timeout: float = 60) -> list[Hit]:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                hits = [h for h in self.hits if h.path == path]
            if len(hits) >= count:
                return hits
            assert time.monotonic() < deadline, f"{len(hits)} of {count} deliveries to {path}"
            time.sleep(0.05)

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def signature_ok(secret: str, hit: Hit) -> bool:
    """The Standard Webhooks check, computed here without the code under test."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{hit.headers['webhook-id']}.{hit.headers['webhook-timestamp']}.".encode() + hit.body
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        hmac.compare_digest(sig, expected) for sig in hit.headers["webhook-signature"].split(" ")
    )


def verified(secret: str, hit: Hit) -> dict[str, Any]:
    """Both checks: ours and the `standardwebhooks` package's (which also checks the timestamp
    is recent); the parsed body."""
    assert signature_ok(secret, hit)
    payload: dict[str, Any] = Webhook(secret).verify(hit.body, hit.headers)
    return payload


def deliveries(client: httpx.Client, task_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/tasks/{task_id}/webhooks")
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def wait_delivery(
    client: httpx.Client, task_id: str, until: tuple[str, ...], timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = deliveries(client, task_id)
        if found and found[0]["status"] in until:
            return found[0]
        assert time.monotonic() < deadline, found
        time.sleep(0.1)


def mint(settings: Any, name: str) -> tuple[str, str]:
    return asyncio.run(mint_key_with_webhook_secret(settings, "test", name))


# -- one server per database engine ------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def hooked(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp(f"webhooks-{request.param}")
    with database_url(request.param, tmp) as url:
        live = LiveServer(make_settings(tmp / "data", database_url=url, **FAST)).start()
        yield live
        live.stop()


def test_retries_until_delivered_with_one_id_and_valid_signatures(
    hooked: LiveServer, receiver: Receiver
) -> None:
    key, secret = mint(hooked.settings, "hooks")
    receiver.script["/done"] = ["error", "slow", "ok"]
    with hooked.client(key) as c:
        task_id = submit(c, {**QUICK, "webhook_url": receiver.url("/done")})
        assert wait_task(c, task_id)["status"] == "completed"
        hits = receiver.wait(3, "/done")
        delivery = wait_delivery(c, task_id, ("delivered",))
        final = c.get(f"/v1/tasks/{task_id}").json()

    # one event: the same webhook-id on every attempt, fresh timestamps, identical bodies
    assert {h.headers["webhook-id"] for h in hits} == {delivery["id"]}
    assert delivery["id"].startswith("msg_")
    stamps = [int(h.headers["webhook-timestamp"]) for h in hits]
    assert stamps == sorted(stamps) and stamps[-1] > stamps[0]
    assert len({h.body for h in hits}) == 1
    for hit in hits:
        assert verified(secret, hit) == final  # exactly what GET /v1/tasks/{id} answers
        assert hit.headers["content-type"] == "application/json"
    assert final["data"]["status"] == "completed"
    assert final["data"]["result"]["videos"][0]["url"][0].startswith(hooked.url)

    # every attempt is recorded and shown to the key's owner
    assert delivery["event"] == "task.completed"
    assert delivery["url"] == receiver.url("/done")
    attempts = delivery["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    assert [a["outcome"] for a in attempts] == ["failed", "failed", "delivered"]
    assert [a["status_code"] for a in attempts] == [500, None, 200]
    assert "timed out" in attempts[1]["error"]
    assert attempts[0]["at"] < attempts[1]["at"] < attempts[2]["at"]
    assert delivery["next_attempt_at"] is None and delivery["finished"] >= attempts[2]["at"]
    assert len(receiver.wait(3, "/done")) == 3  # nothing more after the success

    # a tampered body or a wrong secret does not verify
    forged = Hit(hits[-1].path, hits[-1].headers, hits[-1].body.replace(b"completed", b"failed"))
    assert not signature_ok(secret, forged)
    with pytest.raises(WebhookVerificationError):
        Webhook(mint(hooked.settings, "other")[1]).verify(hits[-1].body, hits[-1].headers)

    # other keys see no such task
    other = hooked.mint("test", "stranger")
    with hooked.client(other) as c:
        response = c.get(f"/v1/tasks/{task_id}/webhooks")
        assert response.status_code == 404
        assert response.json()["error"]["param"] == "task_id"


def test_failed_and_cancelled_tasks_are_notified(
    hooked: LiveServer, receiver: Receiver, tmp_path: Path
) -> None:
    key, secret = mint(hooked.settings, "events")
    with static_server(tmp_path) as images, hooked.client(key) as c:
        # the image is fetched by the worker and is missing: the task fails with invalid_image
        failing = submit(
            c,
            {
                **QUICK,
                "first_frame_image": f"{images}/missing.png",
                "webhook_url": receiver.url("/failed"),
            },
        )
        # a long task cancelled while it runs
        running = submit(c, {**QUICK, "duration": 20, "webhook_url": receiver.url("/cancelled")})
        wait_task(c, running, until=("processing",))
        assert c.post(f"/v1/tasks/{running}/cancel").status_code == 200
        failed_view = wait_task(c, failing)
        cancelled_view = wait_task(c, running)
        (failed_hit,) = receiver.wait(1, "/failed")
        (cancelled_hit,) = receiver.wait(1, "/cancelled")
        assert wait_delivery(c, failing, ("delivered",))["event"] == "task.failed"
        assert wait_delivery(c, running, ("delivered",))["event"] == "task.cancelled"
        # a task without webhook_url has no deliveries
        plain = submit(c, QUICK)
        assert deliveries(c, plain) == []
    assert failed_view["status"] == "failed"
    assert failed_view["error"]["code"] == "invalid_image"
    assert verified(secret, failed_hit) == {"code": 200, "data": failed_view}
    assert cancelled_view["status"] == "cancelled"
    assert verified(secret, cancelled_hit) == {"code": 200, "data": cancelled_view}


# -- refusals ------------------------------------------------------------------------------------


def test_loopback_and_private_targets_are_refused_at_submit(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", allow_http_webhooks=True)
    live = LiveServer(settings, run_worker=False).start()
    try:
        key, _ = mint(settings, "strict")
        with live.client(key) as c:
            for url, label in [
                ("http://127.0.0.1:9/hook", "loopback"),
                ("http://localhost/hook", "loopback"),
                ("https://10.1.2.3/hook", "private"),
                ("https://169.254.169.254/latest/meta-data", "link-local"),
                ("http://[::1]:8080/hook", "loopback"),
                ("http://0x7f.1/hook", "loopback"),
            ]:
                response = c.post("/v1/videos/generations", json={**QUICK, "webhook_url": url})
                assert response.status_code == 400, (url, response.text)
                error = response.json()["error"]
                assert error["param"] == "webhook_url"
                assert label in error["message"] and "not allowed" in error["message"], error
            assert c.get("/v1/tasks").json()["data"] == []

            # a key made before webhooks existed has no secret to sign with: a clear 400
            async def forget_secret() -> None:
                engine = create_engine(settings.resolved_database_url)
                async with engine.begin() as conn:
                    await conn.execute(sa.text("UPDATE api_keys SET webhook_secret = NULL"))
                await engine.dispose()

            asyncio.run(forget_secret())
            response = c.post(
                "/v1/videos/generations",
                json={**QUICK, "webhook_url": "https://203.0.113.9/hook"},
            )
            assert response.status_code == 400
            assert "rotate-webhook-secret" in response.json()["error"]["message"]
    finally:
        live.stop()


def test_a_refused_address_at_delivery_is_recorded_and_not_retried(
    tmp_path: Path, receiver: Receiver
) -> None:
    """The API allowed the target; the worker's policy (changed since) does not: the delivery is
    refused at its first attempt, recorded as such, and never retried."""
    data_dir = tmp_path / "data"
    settings = make_settings(data_dir, **FAST)
    live = LiveServer(settings, run_worker=False).start()
    worker = None
    try:
        key, _ = mint(settings, "changed-policy")
        with live.client(key) as c:
            task_id = submit(c, {**QUICK, "webhook_url": receiver.url("/refused")})
            worker = start_worker(
                data_dir,
                tmp_path / "worker.log",
                **{**WORKER_ENV, "REELSERVE_WEBHOOK_ALLOW_NETWORKS": "[]"},
            )
            assert wait_task(c, task_id)["status"] == "completed"
            delivery = wait_delivery(c, task_id, ("refused",))
            time.sleep(1.5)  # several retry intervals of the worker's schedule
            again = deliveries(c, task_id)[0]
        assert again == delivery
        (attempt,) = delivery["attempts"]
        assert attempt["outcome"] == "refused" and attempt["status_code"] is None
        assert "loopback" in attempt["error"] and "not allowed" in attempt["error"]
        assert delivery["next_attempt_at"] is None
        assert [h for h in receiver.hits if h.path == "/refused"] == []
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)
        live.stop()


# -- durability ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_delivery_survives_a_worker_killed_mid_attempt(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Worker 1 is SIGKILLed while its POST is in flight; worker 2 delivers the same event (same
    webhook-id) once the lease expires. A pending task cancelled by the API while no worker ran
    is notified too."""
    data_dir = tmp_path / "data"
    settings = make_settings(data_dir, **FAST)
    live = LiveServer(settings, run_worker=False).start()
    first = second = None
    receiver.script["/durable"] = ["block"]
    try:
        key, secret = mint(settings, "durable")
        with live.client(key) as c:
            cancelled = submit(c, {**QUICK, "webhook_url": receiver.url("/pending-cancel")})
            assert c.post(f"/v1/tasks/{cancelled}/cancel").json()["data"]["status"] == "cancelled"
            task_id = submit(c, {**QUICK, "webhook_url": receiver.url("/durable")})
            first = start_worker(data_dir, tmp_path / "w1.log", **WORKER_ENV)
            (in_flight,) = receiver.wait(1, "/durable")
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            receiver.release.set()  # the blocked answer goes to a dead worker

            second = start_worker(data_dir, tmp_path / "w2.log", **WORKER_ENV)
            delivery = wait_delivery(c, task_id, ("delivered",))
            hits = receiver.wait(2, "/durable")
            final = c.get(f"/v1/tasks/{task_id}").json()
            cancel_delivery = wait_delivery(c, cancelled, ("delivered",))
            cancel_hits = receiver.wait(1, "/pending-cancel")
        assert in_flight.headers["webhook-id"] == hits[1].headers["webhook-id"] == delivery["id"]
        assert verified(secret, hits[1]) == final
        assert in_flight.body == hits[1].body
        # the killed worker recorded nothing; worker 2's attempt is the one on record
        assert [(a["attempt"], a["outcome"]) for a in delivery["attempts"]] == [(1, "delivered")]
        assert {h.headers["webhook-id"] for h in cancel_hits} == {cancel_delivery["id"]}
        cancel_view = verified(secret, cancel_hits[-1])["data"]
        assert cancel_view["id"] == cancelled and cancel_view["status"] == "cancelled"
        assert cancel_delivery["event"] == "task.cancelled"
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
        live.stop()


@pytest.mark.slow
def test_a_worker_makes_at_most_webhook_concurrency_deliveries_at_once(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Five tasks finish while their receiver holds every request open: the worker has two
    deliveries in flight (`webhook_concurrency`), no more, and still runs tasks meanwhile (a full
    delivery lane holds up no other lane of the claim loop); once the receiver answers, the
    other three go out."""
    settings = make_settings(
        tmp_path / "data", **{**FAST, "webhook_timeout": 30.0, "webhook_concurrency": 2}
    )
    live = LiveServer(settings).start()
    receiver.script["/held"] = ["block"] * 5
    try:
        key, _ = mint(settings, "bound")
        with live.client(key) as c:
            hooked = [submit(c, {**QUICK, "webhook_url": receiver.url("/held")}) for _ in range(5)]
            for task_id in hooked:
                assert wait_task(c, task_id)["status"] == "completed"
            receiver.wait(2, "/held")
            # Time for a third delivery to start, were the bound not kept; and a task runs.
            assert wait_task(c, submit(c, QUICK))["status"] == "completed"
            time.sleep(1.0)
            assert len(receiver.wait(2, "/held")) == 2
            receiver.release.set()
            hits = receiver.wait(5, "/held")
            for task_id in hooked:
                assert wait_delivery(c, task_id, ("delivered",))["attempts"][0]["attempt"] == 1
        assert len({h.headers["webhook-id"] for h in hits}) == 5
    finally:
        receiver.release.set()
        live.stop()


# -- the secret: shown once, stored sealed, rotated ----------------------------------------------


def _cli(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reelserve", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "REELSERVE_SECRET_KEY": "test-secret"},
        check=False,
    )


@pytest.mark.slow
def test_keys_create_shows_the_secret_once_and_rotation_replaces_it(
    tmp_path: Path, receiver: Receiver
) -> None:
    data_dir = tmp_path / "data"
    made = _cli("keys", "create", "--test", "--name", "hooks", data_dir=data_dir)
    assert made.returncode == 0, made.stderr
    *before, key = made.stdout.strip().splitlines()
    assert key.startswith("rs_test_")
    (line,) = [x for x in before if "whsec_" in x]
    secret = line.split()[-1]
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32

    async def stored() -> list[str]:
        engine = create_engine(make_settings(data_dir).resolved_database_url)
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.text("SELECT webhook_secret FROM api_keys"))).all()
        await engine.dispose()
        return [str(r[0]) for r in rows]

    (sealed,) = asyncio.run(stored())
    assert sealed.startswith("v1.") and secret not in sealed and secret[6:] not in sealed

    rotated = _cli("keys", "rotate-webhook-secret", key[:12], data_dir=data_dir)
    assert rotated.returncode == 0, rotated.stderr
    new_secret = rotated.stdout.strip()
    assert new_secret.startswith("whsec_") and new_secret != secret
    missing = _cli("keys", "rotate-webhook-secret", "rs_test_nope", data_dir=data_dir)
    assert missing.returncode == 1

    live = LiveServer(make_settings(data_dir, **FAST)).start()
    try:
        with live.client(key) as c:
            task_id = submit(c, {**QUICK, "webhook_url": receiver.url("/rotated")})
            wait_delivery(c, task_id, ("delivered",))
        (hit,) = receiver.wait(1, "/rotated")
        assert verified(new_secret, hit)["data"]["id"] == task_id
        assert not signature_ok(secret, hit)
    finally:
        live.stop()


def test_settings_reject_a_bad_schedule_or_network(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="positive"):
        make_settings(tmp_path, webhook_retry_schedule=[5, 0])
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 network"):
        make_settings(tmp_path, webhook_allow_networks=["10.0.0.0/33"])
    default = make_settings(tmp_path).webhook_retry_schedule
    assert sum(default) >= 3600  # retried for at least an hour by default
