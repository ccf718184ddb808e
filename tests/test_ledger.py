"""The ledger over real HTTP, on SQLite and PostgreSQL: a submit reserves its estimate, a
completed task is settled to what it produced, a failed, cancelled or fully filtered one is
released; a budget refuses with 402 what it cannot cover, also under 50 concurrent submits into
two servers sharing the database; a worker killed mid-task leaves one reserve and one settle."""

from __future__ import annotations

import asyncio
import re
import signal
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from reelserve.cli.keys import mint_key_with_webhook_secret
from tests.databases import database_url
from tests.fakes.google_veo import FakeGoogle, serve
from tests.support import (
    LiveServer,
    free_port,
    make_settings,
    start_worker,
    submit,
    wait_progress,
    wait_task,
)

FAST = "veo3.1-fast-official"
# Veo 3.1 Fast at 720p: the list price is the worst case over the backends, the Gemini API's
# 0.10 per second (always with audio) against Vertex AI's 0.08 without audio.
PER_SECOND = 0.10
KEY_A = "AIzaFakeKeyLedger0001"


def mint(server: LiveServer, mode: str = "test", **limits: Any) -> str:
    """A key with these limits, made as `reelserve keys create` makes it."""
    return asyncio.run(
        mint_key_with_webhook_secret(server.settings, mode, "ledger", changes=limits)
    )[0]


def usage(client: httpx.Client, **params: Any) -> dict[str, Any]:
    response = client.get("/v1/usage", params=params)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def entries(client: httpx.Client, task_id: str) -> list[tuple[str, float]]:
    """The task's ledger entries, oldest first: (kind, amount)."""
    rows = [e for e in usage(client, limit=1000)["entries"] if e["task_id"] == task_id]
    return [(e["kind"], e["amount"]) for e in reversed(rows)]


def balance(client: httpx.Client) -> dict[str, Any]:
    found: dict[str, Any] = usage(client)["balance"]
    return found


def veo(duration: int = 4, samples: int = 1) -> dict[str, Any]:
    return {"model": FAST, "prompt": "ledger", "duration": duration, "sample_count": samples}


@pytest.fixture(params=["sqlite", "postgresql"])
def idle(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[LiveServer, LiveServer]]:
    """Two servers without workers on one database: submitted tasks stay pending."""
    with database_url(request.param, tmp_path) as url:
        settings = make_settings(tmp_path / "data", database_url=url)
        one = LiveServer(settings, run_worker=False).start()
        two = LiveServer(settings, run_worker=False).start()
        yield one, two
        two.stop()
        one.stop()


def test_a_submit_above_the_balance_is_a_402_giving_estimate_and_balance(
    server: LiveServer,
) -> None:
    key = mint(server, budget=1.2)
    with server.client(key) as c:
        first = submit(c, veo(8))  # 0.8 reserved
        refused = c.post("/v1/videos/generations", json=veo(6))  # 0.6 > 0.4 left
        assert refused.status_code == 402, refused.text
        body = refused.json()
        assert body["code"] == 402 and body["error"]["type"] == "payment_required"
        assert body["error"]["message"] == (
            "this request's estimated cost is 0.6 USD, more than this API key has left: "
            "0.4 USD (budget 1.2 USD, reserved 0.8 USD, spent 0 USD)"
        )
        assert wait_task(c, first)["status"] == "completed"
        # Settled at the list price of what it produced: 0.8, and 0.4 is left.
        assert entries(c, first) == [("reserve", 0.8), ("settle", 0.8)]
        assert balance(c) == {
            "budget": 1.2,
            "reserved": 0.0,
            "spent": 0.8,
            "left": 0.4,
            "currency": "USD",
        }
        assert c.post("/v1/videos/generations", json=veo(6)).status_code == 402
        assert c.post("/v1/videos/generations", json=veo(4)).status_code == 200  # 0.4 fits


def test_test_key_entries_are_marked_test_at_the_models_list_price(server: LiveServer) -> None:
    key = mint(server)
    with server.client(key) as c:
        task_id = submit(c, veo(4, samples=2))
        assert wait_task(c, task_id)["status"] == "completed"
        rows = [e for e in usage(c)["entries"] if e["task_id"] == task_id]
        assert {e["kind"] for e in rows} == {"reserve", "settle"}
        assert all(e["test"] and e["model"] == FAST and e["currency"] == "USD" for e in rows)
        settle = next(e for e in rows if e["kind"] == "settle")
        assert settle["amount"] == round(PER_SECOND * 4 * 2, 6) and settle["videos"] == 2
        assert balance(c)["spent"] == settle["amount"] and balance(c)["left"] is None


def test_a_failed_task_leaves_the_balance_where_it_was(server: LiveServer) -> None:
    key = mint(server, budget=5.0)
    with server.client(key) as c:
        body = {**veo(4), "first_frame_image": f"http://127.0.0.1:{free_port()}/gone.png"}
        task_id = submit(c, body)
        final = wait_task(c, task_id)
        assert final["status"] == "failed", final
        assert entries(c, task_id) == [("reserve", 0.4), ("release", 0.4)]
        assert balance(c) == {
            "budget": 5.0,
            "reserved": 0.0,
            "spent": 0.0,
            "left": 5.0,
            "currency": "USD",
        }


def test_a_task_cancelled_while_pending_leaves_the_balance_where_it_was(
    idle: tuple[LiveServer, LiveServer],
) -> None:
    one, _ = idle
    key = mint(one, budget=1.0)
    with one.client(key) as c:
        task_id = submit(c, veo(8))
        assert balance(c)["reserved"] == 0.8 and balance(c)["left"] == pytest.approx(0.2)
        assert c.post("/v1/tasks/" + task_id + "/cancel").status_code == 200
        assert entries(c, task_id) == [("reserve", 0.8), ("release", 0.8)]
        assert balance(c)["left"] == 1.0 and balance(c)["reserved"] == 0.0
        # A second cancel is a 409 and writes nothing more.
        assert c.post("/v1/tasks/" + task_id + "/cancel").status_code == 409
        assert len(entries(c, task_id)) == 2


def test_50_concurrent_submits_into_two_servers_against_a_budget_for_10(
    idle: tuple[LiveServer, LiveServer],
) -> None:
    one, two = idle
    key = mint(one, budget=round(10 * PER_SECOND * 4, 6))
    with one.client(key) as a, two.client(key) as b:

        def post(i: int) -> int:
            client = a if i % 2 else b
            return client.post("/v1/videos/generations", json=veo(4)).status_code

        with ThreadPoolExecutor(max_workers=50) as pool:
            statuses = Counter(pool.map(post, range(50)))
        assert statuses == {200: 10, 402: 40}
        left = balance(a)
        assert left["reserved"] == pytest.approx(4.0) and left["left"] == pytest.approx(0.0)
        assert left["left"] >= 0
        reserves = [e for e in usage(a)["entries"] if e["kind"] == "reserve"]
        assert len(reserves) == 10


def test_an_idempotent_replay_reserves_nothing_more(idle: tuple[LiveServer, LiveServer]) -> None:
    one, two = idle
    key = mint(one, budget=0.4)
    headers = {"Idempotency-Key": "ledger-replay"}
    with one.client(key) as a, two.client(key) as b:
        first = submit(a, veo(4), headers=headers)
        # The budget is spoken for, yet the replay is answered with the first task.
        assert submit(b, veo(4), headers=headers) == first
        assert entries(a, first) == [("reserve", 0.4)]
        assert a.post("/v1/videos/generations", json=veo(4)).status_code == 402


# -- the Veo provider: charged what Google delivered ---------------------------------------


@pytest.fixture(scope="module")
def google() -> Iterator[FakeGoogle]:
    with serve(FakeGoogle(api_keys=(KEY_A,))) as fake:
        yield fake


@pytest.fixture(params=["sqlite", "postgresql"])
def veo_server(
    request: pytest.FixtureRequest, google: FakeGoogle, tmp_path: Path
) -> Iterator[LiveServer]:
    google.reset()
    quick = {"poll_interval": 0.05, "poll_max_interval": 0.2, "deadline": 60}
    with database_url(request.param, tmp_path) as url:
        settings = make_settings(
            tmp_path / "data",
            database_url=url,
            google={"api_keys": [{"key": KEY_A, "id": "key-a"}], "base_url": google.url, **quick},
        )
        live = LiveServer(settings).start()
        yield live
        live.stop()


def test_veo_charges_each_delivered_video_and_releases_a_filtered_task(
    veo_server: LiveServer, google: FakeGoogle
) -> None:
    key = mint(veo_server, "live", budget=10.0)
    with veo_server.client(key) as c:
        # One of three samples filtered: charged the two delivered.
        google.filter_submits = {1}
        partial = submit(c, veo(4, samples=3))
        final = wait_task(c, partial, timeout=90)
        assert final["status"] == "completed", final.get("error")
        assert len(final["result"]["videos"]) == 2
        assert entries(c, partial) == [("reserve", 1.2), ("settle", 0.8)]
        # The charge is the provider's usage cost, exactly.
        assert usage(c)["totals"][0]["cost"] == 0.8
        assert balance(c)["spent"] == 0.8 and balance(c)["left"] == pytest.approx(9.2)

        # Every sample filtered: the task fails and nothing is charged.
        google.filter_submits = set()
        google.filter_next = (1, ["filtered: it may depict a public figure"])
        filtered = submit(c, veo(8))
        final = wait_task(c, filtered, timeout=90)
        assert final["status"] == "failed" and final["error"]["code"] == "content_filtered"
        assert entries(c, filtered) == [("reserve", 0.8), ("release", 0.8)]
        # An upstream operation error: failed, released.
        google.filter_next = None
        google.operation_errors = [{"code": 500, "message": "internal"}]
        broken = submit(c, veo(4))
        assert wait_task(c, broken, timeout=90)["status"] == "failed"
        assert entries(c, broken) == [("reserve", 0.4), ("release", 0.4)]
        assert balance(c) == {
            "budget": 10.0,
            "reserved": 0.0,
            "spent": 0.8,
            "left": 9.2,
            "currency": "USD",
        }


# -- crash safety ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_worker_killed_mid_task_leaves_one_reserve_and_one_settle(
    kind: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    with database_url(kind, tmp_path) as url:
        live = LiveServer(make_settings(data_dir, database_url=url), run_worker=False).start()
        env = {"REELSERVE_DATABASE_URL": url}
        first = second = None
        try:
            key = mint(live, budget=2.0)
            with live.client(key) as c:
                task_id = submit(c, veo(6))  # the sandbox renders it: 6 s takes a while
                first = start_worker(data_dir, tmp_path / "w1.log", **env)
                wait_progress(c, task_id, 10)
                first.send_signal(signal.SIGKILL)
                first.wait(timeout=10)
                assert entries(c, task_id) == [("reserve", 0.6)]
                second = start_worker(data_dir, tmp_path / "w2.log", **env)
                final = wait_task(c, task_id, timeout=180)
                assert final["status"] == "completed", final
                assert entries(c, task_id) == [("reserve", 0.6), ("settle", 0.6)]
                assert balance(c)["left"] == pytest.approx(1.4)
        finally:
            for proc in (first, second):
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=30)
            live.stop()
    logs = (tmp_path / "w1.log").read_text() + (tmp_path / "w2.log").read_text()
    assert Counter(re.findall(r"task (task_\w+) completed", logs))[task_id] == 1
