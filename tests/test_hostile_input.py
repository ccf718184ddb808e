"""Hostile input costs no worker, no 500 and no log flood (issue 13).

Each test here reproduces one finding of the adversarial pass over the running server, over real
HTTP on loopback against SQLite and PostgreSQL (the `server` fixture), or against the real queue.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from reelserve.domain.ids import task_id
from reelserve.domain.spec import MAX_PROMPT_CHARS
from reelserve.domain.task import TaskStatus
from reelserve.providers.sandbox import _font, _wrap
from reelserve.store.db import create_engine, upgrade
from reelserve.store.queue import FREE_RELEASES, TaskQueue
from tests.databases import database_url
from tests.support import submit, wait_task

# -- 1. one legal prompt must not stall a sandbox worker ----------------------------------------


def test_caption_wrap_of_an_unbroken_max_length_prompt() -> None:
    """The wrap was cubic in a word without spaces (8,000 characters: about 3 hours)."""
    font = _font(42)
    lines = _wrap("a" * MAX_PROMPT_CHARS, font, 1058, max_lines=3)
    assert len(lines) == 3 and lines[-1].endswith("...")
    assert all(font.getlength(line) <= 1058 for line in lines)
    assert len(lines[0]) > 10  # lines are filled, not cut into single characters


@pytest.mark.parametrize(
    "text",
    [
        "\u0301" * MAX_PROMPT_CHARS,  # zero-width combining marks: one "line" holds them all
        " ".join(["\u0301"] * (MAX_PROMPT_CHARS // 2)),
        "a " * (MAX_PROMPT_CHARS // 2),
        "W" * 40 + " tail",
    ],
)
def test_caption_wrap_fits_whatever_the_text(text: str) -> None:
    font = _font(42)
    lines = _wrap(text, font, 1058, max_lines=3)
    assert 1 <= len(lines) <= 3
    assert all(font.getlength(line) <= 1058 for line in lines)


def test_caption_wrap_keeps_short_prompts_whole() -> None:
    font = _font(42)
    assert _wrap("a red kite  over\tgreen hills", font, 1058, max_lines=3) == [
        "a red kite over green hills"
    ]
    assert _wrap("a red kite over green hills", font, 200, max_lines=3) == [
        "a red kite",
        "over",
        "green hills",
    ]
    assert _wrap("a red kite over green hills", font, 150, max_lines=2) == ["a red", "kite..."]


def test_max_length_unbroken_prompt_renders(client: httpx.Client) -> None:
    """Two such submits used to fill a worker for hours; now each finishes like any other."""
    ids = [
        submit(client, {"model": "sandbox", "prompt": "a" * MAX_PROMPT_CHARS, "duration": 4})
        for _ in range(2)
    ]
    for tid in ids:
        assert wait_task(client, tid, timeout=90)["status"] == "completed"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture()
async def queue(db_url: str) -> AsyncIterator[TaskQueue]:
    engine: AsyncEngine = create_engine(db_url)
    await upgrade(engine)
    yield TaskQueue(engine)
    await engine.dispose()


async def test_releases_are_bounded(queue: TaskQueue) -> None:
    """A released attempt is refunded a few times only: a task that every worker must hand back
    (its provider ignores the stop) fails after max_attempts instead of circling forever."""
    tid = task_id()
    await queue.submit(
        task_id=tid,
        api_key_id="key_a",
        model="sandbox",
        provider="sandbox",
        spec={"prompt": "x"},
        estimated_time=5,
    )
    max_attempts = 2
    claims = 0
    while task := await queue.claim(f"w{claims}", lease_seconds=30, max_attempts=max_attempts):
        claims += 1
        assert claims <= FREE_RELEASES + max_attempts, "the task is claimed forever"
        assert await queue.release(task.id, f"w{claims - 1}")
    assert claims == FREE_RELEASES + max_attempts
    assert await queue.fail_exhausted(max_attempts) == [tid]
    failed = await queue.get(tid)
    assert failed is not None and failed.status is TaskStatus.FAILED
    assert failed.releases == claims and "interrupted" in (failed.error_message or "")
