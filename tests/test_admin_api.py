"""The admin API over real HTTP on SQLite and PostgreSQL: only an admin key may use it; keys are
listed (never a secret), created (secrets answered once), updated (null clears a limit) and
revoked; usage by day and model; and a limit set over HTTP is what `reelserve keys show`
prints, one set by `reelserve keys update` what HTTP answers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from reelserve.cli.keys import mint_key_with_webhook_secret
from tests.support import LiveServer, submit, wait_task

ADMIN_ROUTES = [
    ("GET", "/v1/admin/keys", None),
    ("POST", "/v1/admin/keys", {"mode": "test"}),
    ("PATCH", "/v1/admin/keys/key_x", {"rate_per_minute": 1}),
    ("DELETE", "/v1/admin/keys/key_x", None),
    ("GET", "/v1/admin/usage", None),
]


@pytest.fixture(scope="module")
def admin_key(server: LiveServer) -> str:
    return asyncio.run(mint_key_with_webhook_secret(server.settings, "live", "ops", admin=True))[0]


@pytest.fixture()
def admin(server: LiveServer, admin_key: str) -> Any:
    with server.client(admin_key) as c:
        yield c


def _ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["code"] == 200
    return body["data"]


def _error(response: httpx.Response, status: int, param: str | None = None) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert response.json()["code"] == status
    assert error["param"] == param, error
    message: str = error["message"]
    return message


def test_only_an_admin_key_may_use_the_admin_routes(
    server: LiveServer, test_key: str, live_key: str
) -> None:
    for key in (test_key, live_key, None):
        with server.client(key) as c:
            for method, path, body in ADMIN_ROUTES:
                response = c.request(method, path, json=body)
                if key is None:
                    assert response.status_code == 401, (method, path)
                    assert response.json()["error"]["type"] == "authentication_error"
                else:
                    message = _error(response, 403)
                    assert response.json()["error"]["type"] == "permission_error"
                    assert "admin API key" in message


def test_create_list_update_revoke(server: LiveServer, admin: httpx.Client) -> None:
    made = _ok(
        admin.post(
            "/v1/admin/keys",
            json={
                "mode": "test",
                "name": "tenant",
                "max_running": 2,
                "rate_per_minute": 30,
                "budget": 12.5,
                "models": ["sandbox"],
            },
        )
    )
    assert made["secret"].startswith("rs_test_") and made["webhook_secret"].startswith("whsec_")
    assert (made["max_running"], made["rate_per_minute"], made["budget"], made["models"]) == (
        2,
        30,
        12.5,
        ["sandbox"],
    )
    listed = admin.get("/v1/admin/keys")
    assert made["secret"] not in listed.text and "webhook_secret" not in listed.text
    (row,) = [k for k in _ok(listed) if k["id"] == made["id"]]
    assert row == {k: v for k, v in made.items() if k not in ("secret", "webhook_secret")}

    with server.client(made["secret"]) as tenant:
        submit(tenant, {"model": "sandbox", "prompt": "allowed", "duration": 1})
        veo = {"model": "veo3.1-fast-official", "prompt": "not yet", "duration": 4}
        assert tenant.post("/v1/videos/generations", json=veo).status_code == 403
        # The change applies at once in this process (its key cache forgets the key).
        patched = _ok(admin.patch(f"/v1/admin/keys/{made['id']}", json={"models": None}))
        assert patched["models"] is None and patched["budget"] == 12.5  # the others stay
        submit(tenant, veo)
        patched = _ok(admin.patch(f"/v1/admin/keys/{made['prefix']}", json={"rate_per_minute": 2}))
        assert patched["rate_per_minute"] == 2 and patched["max_running"] == 2
        refused = tenant.post("/v1/videos/generations", json=veo)
        assert refused.status_code == 429 and refused.headers["Retry-After"].isdigit()
        revoked = _ok(admin.delete(f"/v1/admin/keys/{made['id']}"))
        assert revoked["revoked"] is not None and revoked["revoked"] <= time.time()
        assert tenant.get("/v1/tasks").status_code == 401

    made_admin = _ok(admin.post("/v1/admin/keys", json={"admin": True, "name": "ops-2"}))
    assert made_admin["admin"] is True and made_admin["secret"].startswith("rs_admin_")


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"mode": "prod"}, "mode", 'string "prod"'),
        ({"mode": "test", "budget": -1}, "budget", "between 0"),
        ({"mode": "test", "budget": "5"}, "budget", 'string "5"'),
        ({"mode": "test", "max_running": 0}, "max_running", "got 0"),
        ({"mode": "test", "rate_per_minute": 1.5}, "rate_per_minute", "number 1.5"),
        ({"mode": "test", "models": ["nope"]}, "models", "configured models: sandbox"),
        ({"mode": "test", "models": []}, "models", "non-empty"),
        ({"mode": "test", "max_runing": 2}, "max_runing", "unknown member"),
        ({"admin": True, "rate_per_minute": 2}, "rate_per_minute", "admin key has no limits"),
        ({"mode": "test", "admin": "yes"}, "admin", 'string "yes"'),
    ],
)
def test_bad_input_is_a_400_naming_the_member(
    admin: httpx.Client, body: dict[str, Any], param: str, words: str
) -> None:
    assert words in _error(admin.post("/v1/admin/keys", json=body), 400, param)


def test_patch_and_delete_of_unknown_keys_and_bad_bodies(admin: httpx.Client) -> None:
    assert "key_nope" in _error(admin.patch("/v1/admin/keys/key_nope", json={}), 404, "key_id")
    assert _error(admin.delete("/v1/admin/keys/key_nope"), 404, "key_id")
    made = _ok(admin.post("/v1/admin/keys", json={"mode": "live"}))
    _error(admin.patch(f"/v1/admin/keys/{made['id']}", json=[1]), 400)
    _error(admin.patch(f"/v1/admin/keys/{made['id']}", json={"mode": "test"}), 400, "mode")
    response = admin.patch(
        f"/v1/admin/keys/{made['id']}", content=b"{", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400


def test_usage_of_every_key_by_day_and_model(server: LiveServer, admin: httpx.Client) -> None:
    tenant = _ok(admin.post("/v1/admin/keys", json={"mode": "test", "name": "usage"}))
    with server.client(tenant["secret"]) as c:
        task = submit(c, {"model": "sandbox", "prompt": "counted", "duration": 2})
        assert wait_task(c, task)["status"] == "completed"
    data = _ok(admin.get("/v1/admin/usage"))
    assert data["object"] == "admin.usage" and data["since"] is None
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    (row,) = [d for d in data["days"] if d["api_key_id"] == tenant["id"]]
    assert row == {
        "day": today,
        "api_key_id": tenant["id"],
        "model": "sandbox",
        "tasks": 1,
        "videos": 1,
        "video_seconds": 2.0,
        "cost": 0.0,
        "currency": "USD",
    }
    assert data["totals"][0]["tasks"] >= 1
    later = _ok(admin.get("/v1/admin/usage", params={"since": str(int(time.time()) + 3600)}))
    assert later["days"] == [] and later["totals"] == []
    _error(admin.get("/v1/admin/usage", params={"since": "10", "until": "5"}), 400, "until")
    _error(admin.get("/v1/admin/usage", params={"since": "soon"}), 400, "since")


def _cli(server: LiveServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "REELSERVE_SECRET_KEY": "test-secret",
        "REELSERVE_DATABASE_URL": server.settings.resolved_database_url,
    }
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "reelserve",
            "keys",
            *args,
            "--data-dir",
            str(server.settings.data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def _shown(output: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in output.strip().splitlines())


@pytest.mark.slow
def test_limits_set_over_http_are_what_the_cli_shows_and_back(
    server: LiveServer, admin: httpx.Client
) -> None:
    made = _ok(
        admin.post(
            "/v1/admin/keys",
            json={
                "mode": "test",
                "name": "both",
                "max_running": 3,
                "rate_per_minute": 7,
                "budget": 4.25,
                "models": ["sandbox", "veo3.1-fast-official"],
            },
        )
    )
    shown = _cli(server, "show", made["id"])
    assert shown.returncode == 0, shown.stderr
    fields = _shown(shown.stdout)
    assert fields["id"] == made["id"] and fields["mode"] == "test" and fields["admin"] == "no"
    assert fields["max running"] == "3" and fields["rate per minute"] == "7"
    assert fields["budget"] == "4.25" and fields["models"] == "sandbox,veo3.1-fast-official"
    assert fields["spent"] == "0" and fields["left"] == "4.25"
    assert fields["reserved"] == "0" and fields["currency"] == "USD"

    updated = _cli(
        server,
        "update",
        made["prefix"],
        "--rate",
        "9",
        "--budget",
        "1",
        "--clear",
        "max-running,models",
    )
    assert updated.returncode == 0, updated.stderr
    (row,) = [k for k in _ok(admin.get("/v1/admin/keys")) if k["id"] == made["id"]]
    assert (row["max_running"], row["rate_per_minute"], row["budget"], row["models"]) == (
        None,
        9,
        1.0,
        None,
    )
    listed = _cli(server, "list")
    assert "rate=9/min budget=1" in listed.stdout, listed.stdout

    for args, words in [
        (("update", made["id"], "--rate", "0"), "--rate"),
        (("update", made["id"], "--budget", "-2"), "--budget"),
        (("update", made["id"], "--models", "sandbox,nope"), "not a configured model"),
        (("update", made["id"], "--clear", "speed"), "--clear"),
        (("update", made["id"]), "nothing to change"),
        (("create", "--test", "--max-running", "-1"), "--max-running"),
    ]:
        refused = _cli(server, *args)
        assert refused.returncode == 2 and words in refused.stderr, (args, refused.stderr)


def _answer_schema(server: LiveServer, method: str, path: str) -> Draft202012Validator:
    """A validator of the 200 answer of `method path`, as the OpenAPI document describes it."""
    document = httpx.get(f"{server.url}/openapi.json").json()
    answer = document["paths"][path][method]["responses"]["200"]["content"]["application/json"]
    schema = {**answer["schema"], "components": document["components"]}
    return Draft202012Validator(schema)


@pytest.mark.slow
def test_the_admin_api_and_keys_show_agree_on_the_ledger(
    server: LiveServer, admin: httpx.Client
) -> None:
    """A test key's completed task, charged at the model's list price: the admin key listing,
    the admin usage's balances, the key's own GET /v1/usage and `reelserve keys show` give the
    same reserved, spent and left; and the admin answers are what the document says."""
    made = _ok(admin.post("/v1/admin/keys", json={"mode": "test", "name": "agree", "budget": 10}))
    assert made["balance"] == {
        "budget": 10.0,
        "reserved": 0.0,
        "spent": 0.0,
        "left": 10.0,
        "currency": "USD",
    }
    body = {"model": "veo3.1-fast-official", "prompt": "a charged task", "duration": 4}
    with server.client(made["secret"]) as tenant:
        estimate = _ok(tenant.post("/v1/videos/estimates", json=body))["estimated_cost"]
        assert estimate > 0  # a test key pays the model's list price
        task = submit(tenant, body)
        assert wait_task(tenant, task)["status"] == "completed"
        own = _ok(tenant.get("/v1/usage"))["balance"]
    assert own == {
        "budget": 10.0,
        "reserved": 0.0,
        "spent": estimate,
        "left": round(10 - estimate, 6),
        "currency": "USD",
    }

    listed = admin.get("/v1/admin/keys")
    _answer_schema(server, "get", "/v1/admin/keys").validate(listed.json())
    (row,) = [k for k in _ok(listed) if k["id"] == made["id"]]
    assert row["balance"] == own

    usage = admin.get("/v1/admin/usage")
    _answer_schema(server, "get", "/v1/admin/usage").validate(usage.json())
    (balance,) = [b for b in _ok(usage)["keys"] if b["api_key_id"] == made["id"]]
    assert balance == {"api_key_id": made["id"], **own}
    admin_ids = {k["id"] for k in _ok(listed) if k["admin"]}
    assert admin_ids and not admin_ids & {b["api_key_id"] for b in _ok(usage)["keys"]}

    shown = _cli(server, "show", made["id"])
    assert shown.returncode == 0, shown.stderr
    fields = _shown(shown.stdout)
    assert (fields["spent"], fields["reserved"], fields["left"]) == (
        f"{own['spent']:g}",
        f"{own['reserved']:g}",
        f"{own['left']:g}",
    )

    patched = admin.patch(f"/v1/admin/keys/{made['id']}", json={"budget": 20})
    _answer_schema(server, "patch", "/v1/admin/keys/{key_id}").validate(patched.json())
    assert _ok(patched)["balance"]["left"] == round(20 - estimate, 6)
    revoked = admin.delete(f"/v1/admin/keys/{made['id']}")
    _answer_schema(server, "delete", "/v1/admin/keys/{key_id}").validate(revoked.json())
    assert _ok(revoked)["balance"]["spent"] == estimate
    created = admin.post("/v1/admin/keys", json={"mode": "live", "rate_per_minute": 3})
    _answer_schema(server, "post", "/v1/admin/keys").validate(created.json())
