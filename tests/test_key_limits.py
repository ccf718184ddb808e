"""Per-key limits at submit, over real HTTP on SQLite and PostgreSQL: allowed models (403),
submits per minute (429 with Retry-After), admin keys that cannot use task routes; and the
schema the migrations build is the one `store/tables.py` declares."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from reelserve.cli.keys import mint_key_with_webhook_secret
from reelserve.store.db import create_engine, upgrade
from reelserve.store.limits import recent_submits_query
from reelserve.store.tables import metadata, tasks
from tests.databases import database_url
from tests.support import LiveServer, make_settings, submit

pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")
BODY = {"model": "sandbox", "prompt": "a limited key", "duration": 1}


def mint(server: LiveServer, mode: str = "test", *, admin: bool = False, **limits: Any) -> str:
    """A key with these limits, made as `reelserve keys create` makes it."""
    return asyncio.run(
        mint_key_with_webhook_secret(server.settings, mode, "limits", changes=limits, admin=admin)
    )[0]


def _error(response: httpx.Response, status: int, type_: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == status and body["error"]["type"] == type_
    error: dict[str, Any] = body["error"]
    return error


@pytest.mark.parametrize("mode", ["test", "live"])
def test_a_model_the_key_may_not_use_is_a_403_naming_it(server: LiveServer, mode: str) -> None:
    key = mint(server, mode, models=["sandbox"])
    with server.client(key) as c:
        veo = {"model": "veo3.1-fast-official", "prompt": "not for this key", "duration": 4}
        error = _error(c.post("/v1/videos/generations", json=veo), 403, "permission_error")
        assert error["param"] == "model"
        assert error["message"] == (
            'model "veo3.1-fast-official" is not allowed for this API key; allowed models: sandbox'
        )
        # An unknown model is still the 400 that lists the configured ones.
        unknown = {"model": "nope", "prompt": "x"}
        assert _error(c.post("/v1/videos/generations", json=unknown), 400, "invalid_request_error")
        if mode == "test":
            submit(c, BODY)  # the allowed one is accepted


def test_rate_is_a_429_with_retry_after_from_the_first_submit(server: LiveServer) -> None:
    key = mint(server, rate_per_minute=2)
    with server.client(key) as c:
        before_first = time.time()
        first = submit(c, BODY)
        after_first = time.time()
        submit(c, BODY)
        before = time.time()
        refused = c.post("/v1/videos/generations", json=BODY)
        after = time.time()
        error = _error(refused, 429, "rate_limit_error")
        assert error["param"] is None
        assert "2 tasks per minute" in error["message"]
        wait = int(refused.headers["Retry-After"])
        # The first submit leaves the 60 s window at its creation + 60: the header is the whole
        # seconds until then, measured by the server between `before` and `after`.
        assert math.ceil(before_first + 60 - after) <= wait <= math.ceil(after_first + 60 - before)
        assert 1 <= wait <= 60
        assert f"in {wait} seconds" in error["message"]
        # An idempotent replay is not a new submit: answered, not refused, not counted.
        replay = c.post("/v1/videos/generations", json=BODY, headers={"Idempotency-Key": "r1"})
        assert replay.status_code == 429  # no task under that key yet: a new submit
        again = c.get(f"/v1/tasks/{first}")
        assert again.status_code == 200  # reads are not rate limited


def test_an_idempotent_replay_is_never_refused_nor_counted(server: LiveServer) -> None:
    key = mint(server, rate_per_minute=1)
    with server.client(key) as c:
        first = submit(c, BODY, headers={"Idempotency-Key": "once"})
        for _ in range(3):
            assert submit(c, BODY, headers={"Idempotency-Key": "once"}) == first
        refused = c.post("/v1/videos/generations", json=BODY, headers={"Idempotency-Key": "new"})
        _error(refused, 429, "rate_limit_error")
        listed = c.get("/v1/tasks").json()["data"]
        assert [t["id"] for t in listed] == [first]


def _backdate(server: LiveServer, task_id: str, seconds: float) -> None:
    """Move a task's creation `seconds` into the past, as if it had been submitted then."""

    async def write() -> None:
        engine = create_engine(server.settings.resolved_database_url)
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    tasks.update()
                    .where(tasks.c.id == task_id)
                    .values(created_at=tasks.c.created_at - seconds)
                )
        finally:
            await engine.dispose()

    asyncio.run(write())


def test_after_waiting_retry_after_the_submit_is_accepted(server: LiveServer) -> None:
    """Retry-After is enough: waited out on the clock, the next submit is accepted. The first
    submit is moved 56 s into the past, so that the wait is seconds, not a minute."""
    key = mint(server, rate_per_minute=1)
    with server.client(key) as c:
        _backdate(server, submit(c, BODY), 56)
        refused = c.post("/v1/videos/generations", json=BODY)
        wait = int(_error(refused, 429, "rate_limit_error") and refused.headers["Retry-After"])
        assert 1 <= wait <= 5
        time.sleep(wait)
        submit(c, BODY)
        again = c.post("/v1/videos/generations", json=BODY)
        assert again.status_code == 429 and int(again.headers["Retry-After"]) >= 59


@pytest.fixture(params=["sqlite", "postgresql"])
def two_servers(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[LiveServer, LiveServer]]:
    """Two server processes' worth of app (each its own service, caches and locks) on one
    database, without workers."""
    with database_url(request.param, tmp_path) as url:
        settings = make_settings(tmp_path / "data", database_url=url)
        one = LiveServer(settings, run_worker=False).start()
        two = LiveServer(settings, run_worker=False).start()
        yield one, two
        two.stop()
        one.stop()


def test_the_rate_holds_across_servers_sharing_the_database(
    two_servers: tuple[LiveServer, LiveServer],
) -> None:
    one, two = two_servers
    key = mint(one, rate_per_minute=3)
    with one.client(key) as a, two.client(key) as b:
        submit(a, BODY)
        submit(b, BODY)
        submit(a, BODY)
        for c in (a, b):
            refused = c.post("/v1/videos/generations", json=BODY)
            assert (
                1
                <= int(_error(refused, 429, "rate_limit_error") and refused.headers["Retry-After"])
                <= 60
            )


def test_an_admin_key_cannot_use_task_routes(server: LiveServer, test_key: str) -> None:
    admin = mint(server, admin=True)
    assert admin.startswith("rs_admin_")
    with server.client(test_key) as c:
        task = submit(c, BODY)
    with server.client(admin) as c:
        for response in (
            c.post("/v1/videos/generations", json=BODY),
            c.get("/v1/tasks"),
            c.get(f"/v1/tasks/{task}"),  # the status fast path
            c.post(f"/v1/tasks/{task}/cancel"),
            c.get(f"/v1/tasks/{task}/events"),
            c.get(f"/v1/tasks/{task}/webhooks"),
            c.get("/v1/usage"),
            c.post("/v1/videos", json={"prompt": "p", "model": "sandbox"}),
            c.get("/v1/videos"),
        ):
            error = _error(response, 403, "permission_error")
            assert "admin API key" in error["message"], error
        assert c.get("/v1/models").status_code == 200


def test_the_openai_facade_answers_403_and_429_in_its_style(server: LiveServer) -> None:
    key = mint(server, models=["sandbox"], rate_per_minute=1)
    oa = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
    try:
        with pytest.raises(openai.PermissionDeniedError) as denied:
            oa.videos.create(prompt="p", model="sora-2", seconds="4")  # sora-2 -> a Veo model
        assert denied.value.status_code == 403 and denied.value.type == "permission_error"
        assert denied.value.param == "model" and "allowed models: sandbox" in denied.value.message
        oa.videos.create(prompt="p", model="sandbox", seconds="1")
        with pytest.raises(openai.RateLimitError) as limited:
            oa.videos.create(prompt="p", model="sandbox", seconds="1")
        assert limited.value.type == "rate_limit_error"
        assert 1 <= int(limited.value.response.headers["Retry-After"]) <= 60
    finally:
        oa.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_the_migrations_build_the_declared_schema(kind: str, tmp_path: Path) -> None:
    """`store/tables.py` and the migrations agree (columns, types, nullability, indexes), and
    the rate check's read uses its index."""

    async def check(url: str) -> tuple[list[Any], str]:
        engine = create_engine(url)
        try:
            await upgrade(engine)
            async with engine.connect() as conn:

                def diff(sync: sa.Connection) -> list[Any]:
                    context = MigrationContext.configure(
                        sync, opts={"compare_type": True, "compare_server_default": False}
                    )
                    return list(compare_metadata(context, metadata))

                found = await conn.run_sync(diff)
                query = recent_submits_query("key_x", 0.0, 5)
                compiled = str(
                    query.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True})
                )
                if kind == "postgresql":
                    await conn.execute(sa.text("SET enable_seqscan = off"))
                    plan = await conn.execute(sa.text(f"EXPLAIN {compiled}"))
                else:
                    plan = await conn.execute(sa.text(f"EXPLAIN QUERY PLAN {compiled}"))
                return found, " ".join(str(row) for row in plan.all())
        finally:
            await engine.dispose()

    with database_url(kind, tmp_path) as url:
        found, plan = asyncio.run(check(url))
    assert found == [], found
    assert "ix_tasks_key_created" in plan, plan
