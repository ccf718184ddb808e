"""The contract's JSON views (core/views.py) and the file links they are handed (core/files.py).

The views are pure functions of typed values, so they are tested here without a server: every
failed task's `error` carries the `type` of its code (one case per row of the table), and every
URL in a view is one the link maker made. The end-to-end forms are in test_tasks_api.py and
test_metrics.py (a failed task's view over HTTP).
"""

from __future__ import annotations

import time

import pytest

from reelserve.core.files import FILES_PATH, file_links
from reelserve.core.views import ERROR_TYPES, task_json
from reelserve.domain.result import StoredVideo, TaskResult, TaskView, Withheld
from reelserve.domain.task import ErrorCode, TaskStatus
from reelserve.storage.signing import FileGrant, Signer

CREATED = 1_763_088_289.0


def _task(status: TaskStatus, **values: object) -> TaskView:
    fields: dict[str, object] = {
        "id": "task_01JD0Z5R8Q4N7X2M3K6V9B1C2D",
        "api_key_id": "key_1",
        "model": "sandbox",
        "provider": "sandbox",
        "status": status,
        "progress": 100 if status.finished else 0,
        "estimated_time": 10,
        "created_at": CREATED,
        "finished_at": CREATED + 18.2 if status.finished else None,
        "result": None,
        "error_code": None,
        "error_message": None,
        "files_expired_at": None,
    }
    fields.update(values)
    return TaskView(**fields)  # type: ignore[arg-type]


def _no_links(key: str, content_type: str, expires_at: int) -> str:
    raise AssertionError("a view without files made a link")


# The hosted API's task-status docs give `error.code`, `error.message` and `error.type`; the
# type is the error envelope's word for whose fault it is.
@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("content_filtered", "invalid_request_error"),
        ("invalid_image", "invalid_request_error"),
        ("upstream_error", "upstream_error"),
        ("timeout", "upstream_error"),
        ("out_of_memory", "server_error"),
        ("provider_not_configured", "server_error"),
        ("internal_error", "server_error"),
    ],
)
def test_a_failed_tasks_error_has_the_type_of_its_code(code: str, expected: str) -> None:
    view = task_json(_task(TaskStatus.FAILED, error_code=code, error_message="why"), _no_links)
    assert view["error"] == {"code": code, "message": "why", "type": expected}


def test_every_error_code_has_a_type() -> None:
    assert set(ERROR_TYPES) == set(ErrorCode)


def test_an_unknown_or_missing_code_is_the_servers_error() -> None:
    unknown = task_json(_task(TaskStatus.FAILED, error_code="gremlins"), _no_links)
    assert unknown["error"] == {"code": "gremlins", "message": "", "type": "server_error"}
    missing = task_json(_task(TaskStatus.FAILED), _no_links)
    assert missing["error"] == {"code": "internal_error", "message": "", "type": "server_error"}


def test_only_a_failed_task_has_an_error() -> None:
    for status in (TaskStatus.PROCESSING, TaskStatus.CANCELLED):
        assert "error" not in task_json(_task(status, error_code="timeout"), _no_links)


def test_every_url_of_a_result_comes_from_the_link_maker() -> None:
    video = StoredVideo("task_x/0.mp4", "task_x/0.jpg", 8.0, 1280, 720, 24.0, False, 7, 1000)
    result = TaskResult((video,), expires_at=1_763_174_708, withheld=(Withheld("timeout", 1, "m"),))
    made: list[tuple[str, str, int]] = []

    def links(key: str, content_type: str, expires_at: int) -> str:
        made.append((key, content_type, expires_at))
        return f"link:{key}"

    view = task_json(_task(TaskStatus.COMPLETED, result=result), links)
    entry = view["result"]["videos"][0]
    assert entry["url"] == ["link:task_x/0.mp4"] and entry["thumbnail_url"] == "link:task_x/0.jpg"
    assert made == [
        ("task_x/0.mp4", "video/mp4", 1_763_174_708),
        ("task_x/0.jpg", "image/jpeg", 1_763_174_708),
    ]
    assert view["result"]["withheld"] == [
        {"code": "timeout", "count": 1, "message": "m", "reasons": []}
    ]
    assert "expired" not in view["result"]
    expired = task_json(_task(TaskStatus.COMPLETED, result=result, files_expired_at=1.0), links)
    assert expired["result"]["expired"] is True


def test_a_pending_task_shows_its_queue_position_and_no_finish() -> None:
    view = task_json(_task(TaskStatus.PENDING, queue_position=3), _no_links)
    assert view["queue_position"] == 3
    assert "completed" not in view and "actual_time" not in view
    finished = task_json(_task(TaskStatus.CANCELLED), _no_links)
    assert "queue_position" not in finished
    assert (finished["completed"], finished["actual_time"]) == (int(CREATED + 18.2), 19)


def test_file_links_are_signed_tokens_under_the_base_url() -> None:
    signer = Signer(b"secret")
    expires_at = int(time.time()) + 3600
    links = file_links(signer, "https://media.example.com/base/")
    link = links("task_x/0.mp4", "video/mp4", expires_at)
    prefix = "https://media.example.com/base" + FILES_PATH
    assert link.startswith(prefix)
    grant = signer.verify(link[len(prefix) :])
    assert grant == FileGrant("task_x/0.mp4", "video/mp4", expires_at)
