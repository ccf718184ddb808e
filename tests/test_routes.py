"""Several routes per model (docs/routing.md): failover, no failover once paid, overflow, weights.

Every test runs the real app under uvicorn on loopback in front of the strict fake Google
(`tests/fakes/google_veo.py`): one Gemini API key and one Vertex AI project, each on a route of
its own. What the fake records (the operations it created, the submits it refused) is the
oracle for "exactly one upstream operation": it knows nothing of reelserve's routes.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reelserve.domain.models import ModelEntry, RouteEntry, default_models
from reelserve.domain.spec import GenerationSpec
from reelserve.providers.base import Clip, ProviderBase, RunContext
from reelserve.providers.sandbox.provider import SandboxProvider
from reelserve.settings import Settings
from tests.databases import database_url
from tests.fakes.google_veo import FakeGoogle, serve
from tests.support import LiveServer, make_settings, submit, wait_task

GEMINI_KEY = "AIzaRoutesKey0001"
VERTEX_TOKEN = "ya29.routes-token"
PROJECT = ("proj-routes", "us-central1")
FAST = "veo3.1-fast-official"
QUICK = {
    "poll_interval": 0.05,
    "poll_max_interval": 0.1,
    "retry_initial_delay": 0.05,
    "retry_max_delay": 0.2,
    "retry_attempts": 2,
    "request_timeout": 30,
    "deadline": 120,
}
BODY = {"model": FAST, "prompt": "a lighthouse at dusk", "duration": 4, "resolution": "720p"}


def google_settings(fake: FakeGoogle) -> dict[str, Any]:
    project, location = PROJECT
    return {
        "base_url": fake.url,
        "vertex_base_url": fake.url,
        "api_keys": [{"key": GEMINI_KEY, "id": "gemini-a"}],
        "vertex": [{"project": project, "location": location, "access_token": VERTEX_TOKEN}],
        **QUICK,
    }


def routed(routes: list[dict[str, Any]]) -> list[ModelEntry]:
    """The default catalog, with the Veo Fast model served by `routes`."""
    out = []
    for entry in default_models():
        if entry.id == FAST:
            data = entry.model_dump()
            data["routes"] = [RouteEntry(**r).model_dump() for r in routes]
            entry = ModelEntry(**data)
        out.append(entry)
    return out


GEMINI_THEN_VERTEX = [
    {"provider": "google_veo", "name": "gemini", "options": {"credentials": ["gemini-a"]}},
    {"provider": "google_veo", "name": "vertex", "options": {"credentials": ["vertex"]}},
]


@pytest.fixture(scope="module")
def google() -> Iterator[FakeGoogle]:
    fake = FakeGoogle(
        api_keys=(GEMINI_KEY,), vertex_projects=(PROJECT,), static_tokens=(VERTEX_TOKEN,)
    )
    with serve(fake) as running:
        yield running


@pytest.fixture()
def fake(google: FakeGoogle) -> FakeGoogle:
    google.reset()
    return google


@pytest.fixture(scope="module")
def gateway(
    google: FakeGoogle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LiveServer, str]]:
    data = tmp_path_factory.mktemp("routes") / "data"
    settings = make_settings(
        data, google=google_settings(google), models=routed(GEMINI_THEN_VERTEX)
    )
    live = LiveServer(settings).start()
    try:
        yield live, live.mint("live", "routes")
    finally:
        live.stop()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text `text` (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(
            part.split("=", 1) for part in line[len(name) + 1 : line.index("}")].split(",")
        )
        if all(found.get(k, "").strip('"') == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_quota_at_submit_fails_over_to_the_next_route(
    gateway: tuple[LiveServer, str], fake: FakeGoogle
) -> None:
    live, key = gateway
    fake.exhausted = {GEMINI_KEY}
    with live.client(key) as client:
        before = client.get("/metrics").text
        task_id = submit(client, BODY)
        assert client.get(f"/v1/tasks/{task_id}").json()["data"]["route"] in ("gemini", "vertex")
        task = wait_task(client, task_id)
        after = client.get("/metrics").text
    assert task["status"] == "completed", task
    assert task["route"] == "vertex"
    assert len(task["result"]["videos"]) == 1
    # Exactly one operation exists upstream, on Vertex AI; the Gemini API refused the one
    # submit it got with 429, so nothing was created (or paid) there.
    assert [name.startswith("projects/proj-routes/") for name in fake.operations] == [True]
    refused = [s for s in fake.submits() if s.credential == GEMINI_KEY]
    assert len(refused) == 1
    labels = {"model": FAST, "from_route": "gemini", "to_route": "vertex"}
    failovers = metric(after, "reelserve_route_failovers_total", **labels)
    assert failovers == metric(before, "reelserve_route_failovers_total", **labels) + 1
    assert metric(after, "reelserve_route_attempts_total", route="vertex", outcome="completed") >= 1
    assert (
        metric(after, "reelserve_route_attempts_total", route="gemini", outcome="failed_over") >= 1
    )
    with live.client(key) as client:
        usage = client.get("/v1/usage").json()["data"]
    # The usage per route says which route served (and was paid for) the video.
    assert {(r["model"], r["route"]) for r in usage["routes"]} >= {(FAST, "vertex")}
    assert all(r["route"] != "gemini" or r["tasks"] == 0 for r in usage["routes"])


def test_no_failover_once_an_operation_exists(
    gateway: tuple[LiveServer, str], fake: FakeGoogle
) -> None:
    live, key = gateway
    fake.operation_errors = [{"code": 13, "message": "Veo hit an internal error (scripted)"}]
    with live.client(key) as client:
        task = wait_task(client, submit(client, BODY))
    assert task["status"] == "failed", task
    assert task["route"] == "gemini"
    assert "internal error (scripted)" in task["error"]["message"]
    # One operation, the first route's; nothing was sent to the second.
    assert len(fake.operations) == 1
    assert all(s.credential == GEMINI_KEY for s in fake.submits())


def test_a_refusal_with_no_route_left_fails_with_the_last_routes_reason(
    gateway: tuple[LiveServer, str], fake: FakeGoogle
) -> None:
    live, key = gateway
    fake.exhausted = {GEMINI_KEY, f"vertex:{PROJECT[0]}/{PROJECT[1]}"}
    fake.exhausted_retry_delay = "0.05s"
    with live.client(key) as client:
        # The last route has no route after it: its quota is a queue, waited out until the
        # quota frees (here: once the test lifts it).
        task_id = submit(client, BODY)
        deadline = time.monotonic() + 30
        while len([s for s in fake.submits() if s.credential != GEMINI_KEY]) < 2:
            assert time.monotonic() < deadline, "the last route did not keep trying"
            time.sleep(0.05)
        fake.exhausted = set()
        task = wait_task(client, task_id)
    assert task["status"] == "completed", task
    assert task["route"] == "vertex"
    assert len(fake.operations) == 1


class Held(ProviderBase):
    """A local GPU stand-in (a compute route): each task holds its one slot until the test
    lets it go, then renders its clip as the sandbox does."""

    kind = "compute"

    def __init__(self, name: str) -> None:
        self.name = name
        self.release = threading.Event()
        self.started: list[str] = []

    async def run(self, spec: GenerationSpec, ctx: RunContext) -> list[Clip]:
        self.started.append(ctx.task_id)
        while not self.release.is_set():
            await ctx.sleep(0.05)
        return await SandboxProvider().run(spec, ctx)


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_overflow_spills_a_waiting_task_to_the_next_route(
    google: FakeGoogle, fake: FakeGoogle, tmp_path: Path, engine: str
) -> None:
    """The spill claim is its own SQL (store/task_claims.py): on both engines."""
    with database_url(engine, tmp_path) as url:
        overflow(google, fake, tmp_path, url)


def overflow(google: FakeGoogle, fake: FakeGoogle, tmp_path: Path, url: str) -> None:
    routes = [
        {"provider": "sandbox", "name": "gpu", "max_wait": 2},
        {"provider": "google_veo", "name": "gemini", "options": {"credentials": ["gemini-a"]}},
    ]
    settings = make_settings(
        tmp_path / "data",
        database_url=url,
        google=google_settings(google),
        models=routed(routes),
        worker_concurrency=1,
    )
    live = LiveServer(settings).start()
    gpu = Held("gpu")
    live.app.state.reelserve.providers["gpu"] = gpu
    try:
        key = live.mint("live", "overflow")
        with live.client(key) as client:
            first = submit(client, BODY)
            deadline = time.monotonic() + 30
            while first not in gpu.started:
                assert time.monotonic() < deadline, "the first task did not start"
                time.sleep(0.05)
            second = submit(client, BODY)
            queued = client.get(f"/v1/tasks/{second}").json()["data"]
            assert queued["status"] == "pending" and queued["route"] == "gpu"
            spilled = wait_task(client, second, timeout=60)
            waited = client.get("/metrics").text
            assert spilled["status"] == "completed", spilled
            assert spilled["route"] == "gemini"
            assert second not in gpu.started
            assert len(fake.operations) == 1
            labels = {"model": FAST, "from_route": "gpu", "to_route": "gemini"}
            assert metric(waited, "reelserve_route_spills_total", **labels) == 1
            gpu.release.set()
            done = wait_task(client, first, timeout=60)
        assert done["status"] == "completed" and done["route"] == "gpu"
        # Not taken before its route's max_wait: its claim came at least 2 s after its submit.
        record = asyncio.run(_record(settings, second))
        assert record.started_at is not None
        assert record.started_at - record.created_at >= 2.0
    finally:
        live.stop()


async def _record(settings: Settings, task_id: str) -> Any:
    from reelserve.store.db import create_engine
    from reelserve.store.queue import TaskQueue

    engine = create_engine(settings.resolved_database_url)
    try:
        record = await TaskQueue(engine).get(task_id)
    finally:
        await engine.dispose()
    return record


def test_weighted_routes_share_new_tasks(google: FakeGoogle, tmp_path: Path) -> None:
    routes = [
        {**GEMINI_THEN_VERTEX[0], "weight": 3},
        {**GEMINI_THEN_VERTEX[1], "weight": 1},
    ]
    settings = make_settings(
        tmp_path / "data",
        google=google_settings(google),
        models=routed(routes),
        in_process_worker=False,
    )
    live = LiveServer(settings, run_worker=False).start()
    try:
        key = live.mint("live", "weights")
        with live.client(key) as client:
            ids = [submit(client, BODY) for _ in range(8)]
            chosen = [client.get(f"/v1/tasks/{i}").json()["data"]["route"] for i in ids]
            # 3:1, dealt smoothly (never four of one in a row for a 3:1 split).
            assert chosen.count("gemini") == 6 and chosen.count("vertex") == 2
            assert "vertex" in chosen[:4] and "vertex" in chosen[4:]
            # An estimate only looks: the deal goes on where the submits left it.
            again = []
            for _ in range(4):
                estimate = client.post("/v1/videos/estimates", json=BODY)
                assert estimate.status_code == 200, estimate.text
                task_id = submit(client, BODY)
                again.append(client.get(f"/v1/tasks/{task_id}").json()["data"]["route"])
            assert again == chosen[:4]
            # A request one route cannot serve goes to the one that can: 4K is the Gemini
            # API's alone here (this Vertex project has no 4K).
            four_k = {**BODY, "resolution": "4K", "duration": 8}
            picked = [
                client.get(f"/v1/tasks/{submit(client, four_k)}").json()["data"]["route"]
                for _ in range(4)
            ]
            assert picked == ["gemini"] * 4
            listed = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        assert listed[FAST]["routes"] == [
            {"name": "gemini", "provider": "google_veo"},
            {"name": "vertex", "provider": "google_veo"},
        ]
    finally:
        live.stop()


def test_route_settings_are_checked_at_startup(tmp_path: Path) -> None:
    from reelserve.providers.registry import build_providers

    with pytest.raises(ValueError, match="two routes are named 'x'"):
        ModelEntry(
            id="m",
            routes=[
                RouteEntry(provider="sandbox", name="x"),
                RouteEntry(provider="sandbox", name="x"),
            ],
        )
    with pytest.raises(ValueError, match="expected a provider"):
        ModelEntry(id="m")
    # Test keys' tasks of every model wait on the route "sandbox": it never overflows.
    with pytest.raises(ValueError, match="where test keys' tasks run"):
        ModelEntry(
            id="m",
            routes=[RouteEntry(provider="sandbox", max_wait=5), RouteEntry(provider="relay")],
        )
    google = {"api_keys": [{"key": "AIzaStartup", "id": "gemini-a"}]}
    unknown = [{"provider": "google_veo", "options": {"credentials": ["gemini-b"]}}]
    settings = make_settings(tmp_path, google=google, models=routed(unknown))
    with pytest.raises(ValueError, match=r"options\.credentials: .*'gemini-b'"):
        build_providers(settings)
    clash = routed([{"provider": "google_veo", "name": "sandbox"}])
    with pytest.raises(ValueError, match="route 'sandbox'"):
        build_providers(make_settings(tmp_path, google=google, models=clash))


def test_routes_from_the_environment_as_json(tmp_path: Path) -> None:
    """`REELSERVE_MODELS` takes the same forms as the TOML file (docs/routing.md)."""
    import json
    import os
    import subprocess
    import sys

    models = [
        {
            "id": "clips",
            "routes": [
                {"provider": "sandbox", "name": "local", "max_wait": 30},
                {
                    "provider": "relay",
                    "options": {
                        "api": "seed",
                        "base_url": "http://127.0.0.1:9",
                        "api_key": "sk-upstream",
                        "model": "veo3.1-fast-official",
                    },
                },
            ],
        }
    ]
    script = (
        "from reelserve.settings import Settings\n"
        "m = Settings().model_map()['clips']\n"
        "print([(r.name, r.provider, r.max_wait) for r in m.resolved_routes()])\n"
    )
    env = {
        **os.environ,
        "REELSERVE_MODELS": json.dumps(models),
        "REELSERVE_DATA_DIR": str(tmp_path),
    }
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[('local', 'sandbox', 30.0), ('relay:clips:2', 'relay', None)]"


def test_routes_from_a_toml_file(tmp_path: Path) -> None:
    """The TOML form of docs/routing.md, read by `reelserve` from `REELSERVE_CONFIG`."""
    import os
    import subprocess
    import sys

    config = tmp_path / "reelserve.toml"
    config.write_text(
        """
[google]
api_keys = [{ key = "AIzaToml", id = "gemini-main" }]
vertex = [{ project = "p", location = "us-central1", access_token = "ya29.t", id = "p" }]

[[models]]
id = "veo3.1-fast-official"
durations = [4, 6, 8]
resolution_durations = { "1080p" = [8], "4K" = [8] }
routes = [
  { provider = "google_veo", name = "gemini", options = { credentials = ["gemini-main"] } },
  { provider = "google_veo", name = "vertex", max_wait = 5, options = { credentials = ["p"] } },
]

[models.options]
upstream_model = "veo-3.1-fast-generate-preview"
vertex_model = "veo-3.1-fast-generate-001"
"""
    )
    script = (
        "from reelserve.settings import Settings\n"
        "from reelserve.providers.registry import build_providers\n"
        "s = Settings()\n"
        "m = s.model_map()['veo3.1-fast-official']\n"
        "print([(r.name, r.max_wait) for r in m.resolved_routes()])\n"
        "p = build_providers(s)\n"
        "print(sorted(c.id for c in p['gemini'].pool.credentials),"
        " sorted(c.backend for c in p['vertex'].pool.credentials))\n"
    )
    env = {**os.environ, "REELSERVE_CONFIG": str(config), "REELSERVE_DATA_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "[('gemini', None), ('vertex', 5.0)]",
        "['gemini-main'] ['vertex']",
    ]


def test_a_test_key_runs_on_the_sandbox_route(gateway: tuple[LiveServer, str]) -> None:
    live, _ = gateway
    with live.client(live.mint("test", "routes-test")) as client:
        task = wait_task(client, submit(client, {**BODY, "duration": 4}))
    assert task["status"] == "completed" and task["route"] == "sandbox"
