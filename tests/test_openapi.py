"""The OpenAPI document tells the truth (issue 13), checked by reading it and by schemathesis.

Clients generate code from /openapi.json, so it must say what the server does: every status a
route can answer (with the error envelope's schema; never FastAPI's 422, which this server does
not answer), the exact parameter constraints, and no API key on the routes that take none. Then
schemathesis drives the live server from the document (`--checks all`, a fixed seed): 0 server
errors, 0 response-schema violations, 0 undocumented statuses, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.databases import database_url
from tests.support import LiveServer, make_settings

ENVELOPE = {"$ref": "#/components/schemas/ErrorEnvelope"}
PUBLIC = {
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/v1/files/{token}"),
}
# A fixed seed and a bounded number of cases per operation: about 1,700 cases, 12 s per engine
# (schemathesis.toml stops event streams after their first event).
SCHEMATHESIS_SEED = 1
SCHEMATHESIS_EXAMPLES = 40
# One schemathesis worker: its workers are threads, and on the CPython 3.11 this runs on two
# threads parsing source at once (Hypothesis describing the filters it makes for the schemas'
# anyOf members) can fail with "SystemError: AST constructor recursion depth mismatch" (the AST
# constructor's depth counter is shared; cf. CPython gh-106905): a runtime error of the tool,
# not an answer of the server, that failed two runs in five with 2 workers.
SCHEMATHESIS_WORKERS = 1


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def idle(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LiveServer, str]]:
    """A server without a worker: accepted submits wait, so the run costs no rendering."""
    tmp = tmp_path_factory.mktemp(f"openapi-{request.param}")
    with database_url(request.param, tmp) as url:
        live = LiveServer(make_settings(tmp / "data", database_url=url), run_worker=False)
        live.start()
        yield live, live.mint("test")
        live.stop()


@pytest.fixture(scope="module")
def document(idle: tuple[LiveServer, str]) -> dict[str, Any]:
    live, _ = idle
    response = httpx.get(f"{live.url}/openapi.json")
    assert response.status_code == 200
    schema: dict[str, Any] = response.json()
    return schema


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            yield method, path, operation


def test_every_error_status_has_the_envelope_and_none_is_422(document: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for method, path, operation in _operations(document):
        responses = operation["responses"]
        assert "422" not in responses, (method, path)
        assert "400" in responses, (method, path)  # every route checks its path and query
        for status, response in responses.items():
            if int(status) >= 400:
                schema = response["content"]["application/json"]["schema"]
                assert schema == ENVELOPE, (method, path, status)
    envelope = document["components"]["schemas"]["ErrorEnvelope"]
    assert set(envelope["required"]) == {"code", "error"}


def test_statuses_the_routes_answer_are_documented(document: dict[str, Any]) -> None:
    def statuses(method: str, path: str) -> set[str]:
        return set(document["paths"][path][method]["responses"])

    assert {"200", "400", "401", "409", "413"} <= statuses("post", "/v1/videos/generations")
    assert {"200", "400", "401", "404"} <= statuses("get", "/v1/tasks/{task_id}")
    assert {"404", "409"} <= statuses("post", "/v1/tasks/{task_id}/cancel")
    assert {"200", "206", "403", "410", "416"} <= statuses("get", "/v1/files/{token}")
    assert {"404", "405", "409", "410", "416"} <= statuses("get", "/v1/videos/{video_id}/content")
    assert "503" in statuses("get", "/readyz")
    assert set(document["paths"]["/v1/files/{token}"]["get"]["responses"]["200"]["content"]) == {
        "video/mp4",
        "image/jpeg",
    }


def test_only_the_key_free_routes_declare_no_security(document: dict[str, Any]) -> None:
    assert document["security"] == [{"bearer": []}]
    for method, path, operation in _operations(document):
        if (method, path) in PUBLIC:
            assert operation.get("security") == [], (method, path)
        else:
            assert "security" not in operation, (method, path)


def _parameter(document: dict[str, Any], method: str, path: str, name: str) -> dict[str, Any]:
    for parameter in document["paths"][path][method].get("parameters", []):
        if parameter["name"] == name:
            schema: dict[str, Any] = parameter["schema"]
            return schema
    raise AssertionError(f"{method} {path} has no parameter {name}")


def _enum(schema: dict[str, Any]) -> list[str]:
    for option in schema.get("anyOf", [schema]):
        if "enum" in option:
            values: list[str] = option["enum"]
            return values
        if "const" in option:  # a one-value Literal
            return [option["const"]]
    raise AssertionError(f"no enum in {schema}")


def test_parameter_constraints_are_exact(document: dict[str, Any]) -> None:
    for path in ("/v1/tasks", "/v1/videos"):
        limit = _parameter(document, "get", path, "limit")
        assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, 100, 20)
    assert _enum(_parameter(document, "get", "/v1/tasks", "status")) == [
        "pending",
        "processing",
        "completed",
        "failed",
        "cancelled",
    ]
    language = _parameter(document, "get", "/v1/tasks/{task_id}", "language")
    assert _enum(language) == ["en", "zh", "ko", "ja"]
    variant = _parameter(document, "get", "/v1/videos/{video_id}/content", "variant")
    assert _enum(variant) == ["video", "thumbnail"]
    assert _enum(_parameter(document, "get", "/v1/videos", "order")) == ["desc"]
    since = _parameter(document, "get", "/v1/usage", "since")
    assert any("pattern" in option for option in since["anyOf"])


def test_the_documented_constraints_are_the_enforced_ones(idle: tuple[LiveServer, str]) -> None:
    """The edges of each constraint, as the server answers them (400 names the parameter)."""
    live, key = idle
    with live.client(key) as c:
        for query, param in [
            ({"limit": 0}, "limit"),
            ({"limit": 101}, "limit"),
            ({"status": "done"}, "status"),
        ]:
            response = c.get("/v1/tasks", params=query)
            assert response.status_code == 400, response.text
            assert response.json()["error"]["param"] == param
        assert c.get("/v1/tasks", params={"limit": 100}).status_code == 200
        assert c.get("/v1/usage", params={"since": "1e9"}).status_code == 400
        assert c.get("/v1/usage", params={"since": "1763088289.5"}).status_code == 200
        assert c.get("/v1/videos", params={"order": "asc"}).status_code == 400
        # A 405 names every method of the path, as the document lists them.
        assert c.request("OPTIONS", "/v1/videos").headers["allow"] == "GET, POST"
        assert c.request("PUT", "/v1/videos/x").headers["allow"] == "DELETE, GET"
        assert c.get("/v1/videos/generations").headers["allow"] == "POST"


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_or_undocumented_answer(
    idle: tuple[LiveServer, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("schemathesis")
    live, key = idle
    config = Path(__file__).with_name("schemathesis.toml")
    command = [
        sys.executable,
        "-c",
        "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
        "--no-color",
        "--config-file",
        str(config),
        "run",
        f"{live.url}/openapi.json",
        "--checks",
        "all",
        "--header",
        f"Authorization: Bearer {key}",
        "--seed",
        str(SCHEMATHESIS_SEED),
        "--max-examples",
        str(SCHEMATHESIS_EXAMPLES),
        "--workers",
        str(SCHEMATHESIS_WORKERS),
        "--report-dir",
        str(tmp_path),
    ]
    with caplog.at_level(logging.WARNING):
        done = subprocess.run(
            command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
        )
    # No client input may write a traceback to the server's log (it runs in this process).
    assert not [r for r in caplog.records if r.exc_info], "a request logged a traceback"
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", output)
    assert counts is not None, output[-3000:]
    assert int(counts[1]) == int(counts[2]) > 0  # every generated case passed every check
