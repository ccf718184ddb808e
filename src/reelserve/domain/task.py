"""The task state machine: pending -> processing -> completed | failed | cancelled.

A pending task may also be cancelled before any worker claims it. A finished task never changes
again. The store enforces the transitions in its SQL: every update names the state it may leave
(store/queue.py).
"""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})


class ErrorCode(StrEnum):
    """Stable machine codes of a failed task's `error.code`."""

    CONTENT_FILTERED = "content_filtered"
    UPSTREAM_ERROR = "upstream_error"
    TIMEOUT = "timeout"
    INVALID_IMAGE = "invalid_image"
    INTERNAL_ERROR = "internal_error"
    OUT_OF_MEMORY = "out_of_memory"
    PROVIDER_NOT_CONFIGURED = "provider_not_configured"
