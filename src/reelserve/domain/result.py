"""What a finished task holds, typed: its stored videos, what was withheld, and the subset of a
task that its public view is made from.

The worker builds a `TaskResult`; the store keeps it as JSON (`to_json`, the same shape rows have
always had) and reads it back with `from_json`; the views render a `TaskView`. Nothing else reads
a result by string key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reelserve.domain.task import TaskStatus


@dataclass(frozen=True)
class Withheld:
    """Samples of a task that the upstream did not deliver, and why: the task still completes
    with the others, and its result lists these (`withheld`)."""

    code: str  # an ErrorCode value: content_filtered, upstream_error, timeout, ...
    count: int
    message: str
    reasons: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "count": self.count,
            "message": self.message,
            "reasons": list(self.reasons),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Withheld:
        return cls(
            code=str(data["code"]),
            count=int(data["count"]),
            message=str(data.get("message", "")),
            reasons=tuple(str(r) for r in data.get("reasons", ())),
        )


@dataclass(frozen=True)
class StoredVideo:
    """One delivered video: where its file and thumbnail are stored, and what probing found."""

    video_key: str
    thumbnail_key: str
    duration: float
    width: int
    height: int
    fps: float
    has_audio: bool
    seed: int | None
    size_bytes: int
    person_generation: str | None = None  # what the upstream applied (Veo); None elsewhere

    def to_json(self) -> dict[str, Any]:
        return {
            "video_key": self.video_key,
            "thumbnail_key": self.thumbnail_key,
            "duration": self.duration,
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
            "has_audio": self.has_audio,
            "seed": self.seed,
            "person_generation": self.person_generation,
            "size_bytes": self.size_bytes,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StoredVideo:
        seed = data.get("seed")
        return cls(
            video_key=str(data["video_key"]),
            thumbnail_key=str(data["thumbnail_key"]),
            duration=float(data["duration"]),
            width=int(data["width"]),
            height=int(data["height"]),
            fps=float(data["fps"]),
            has_audio=bool(data["has_audio"]),
            seed=int(seed) if seed is not None else None,
            size_bytes=int(data["size_bytes"]),
            # Rows written before Veo reported it have no such member.
            person_generation=data.get("person_generation"),
        )


@dataclass(frozen=True)
class TaskResult:
    """A completed task's outcome: its videos (in sample order), when their links stop working,
    and the samples the upstream withheld."""

    videos: tuple[StoredVideo, ...]
    expires_at: int  # Unix seconds
    withheld: tuple[Withheld, ...] = ()

    @property
    def video_seconds(self) -> float:
        return round(sum(v.duration for v in self.videos), 3)

    @property
    def has_audio(self) -> bool:
        return any(v.has_audio for v in self.videos)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "videos": [v.to_json() for v in self.videos],
            "expires_at": self.expires_at,
        }
        if self.withheld:
            data["withheld"] = [w.to_json() for w in self.withheld]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskResult:
        return cls(
            videos=tuple(StoredVideo.from_json(v) for v in data["videos"]),
            expires_at=int(data["expires_at"]),
            withheld=tuple(Withheld.from_json(w) for w in data.get("withheld") or ()),
        )


@dataclass(frozen=True)
class TaskView:
    """What a task's public view is made from: no spec (it can hold megabytes of data-URL
    images), no checkpoint, no lease. `queue_position` is set for a pending task when the read
    that made this counted it."""

    id: str
    api_key_id: str
    model: str
    provider: str  # the task's route (docs/routing.md): the answer's `route`
    status: TaskStatus
    progress: int
    estimated_time: int
    created_at: float
    finished_at: float | None
    result: TaskResult | None
    error_code: str | None
    error_message: str | None
    files_expired_at: float | None
    queue_position: int | None = None
