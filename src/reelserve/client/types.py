"""Typed views of what the server answers: `Task` (with its `Video`s or `TaskError`), `Model`
and `TaskPage`. Each keeps the JSON it came from in `raw`, so fields a newer server adds are
never lost."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FINISHED_STATUSES = frozenset({"completed", "failed", "cancelled"})


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _num(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Video:
    """One result file. `url` is the signed link to the MP4 (no API key needed; it expires at
    `expires_at`, Unix seconds)."""

    url: str
    urls: tuple[str, ...]
    expires_at: int | None
    thumbnail_url: str | None
    duration: float | None
    width: int | None
    height: int | None
    fps: float | None
    has_audio: bool
    seed: int | None
    # The person_generation policy the upstream applied ("allow_all" for Veo text-to-video on
    # the Gemini API), or None where the provider has none.
    person_generation: str | None
    size_bytes: int | None
    content_type: str
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Video:
        raw_urls = data.get("url")
        if isinstance(raw_urls, str):
            urls: tuple[str, ...] = (raw_urls,)
        elif isinstance(raw_urls, list):
            urls = tuple(u for u in raw_urls if isinstance(u, str))
        else:
            urls = ()
        return cls(
            url=urls[0] if urls else "",
            urls=urls,
            expires_at=_int(data.get("expires_at")),
            thumbnail_url=_str(data.get("thumbnail_url")),
            duration=_num(data.get("duration")),
            width=_int(data.get("width")),
            height=_int(data.get("height")),
            fps=_num(data.get("fps")),
            has_audio=data.get("has_audio") is True,
            seed=_int(data.get("seed")),
            person_generation=_str(data.get("person_generation")),
            size_bytes=_int(data.get("size_bytes")),
            content_type=_str(data.get("content_type")) or "video/mp4",
            raw=data,
        )


@dataclass(frozen=True)
class Withheld:
    """Samples the upstream did not deliver (the task completed with the others): a stable
    `code` (`content_filtered`, `upstream_error`, ...), how many, and why."""

    code: str
    count: int
    message: str
    reasons: tuple[str, ...]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Withheld:
        return cls(
            code=str(data.get("code", "")),
            count=_int(data.get("count")) or 0,
            message=str(data.get("message", "")),
            reasons=tuple(r for r in data.get("reasons") or () if isinstance(r, str)),
        )


@dataclass(frozen=True)
class TaskError:
    """Why a task failed: a stable machine `code`, a readable `message`, and whose fault it
    was (`type`: "invalid_request_error", "upstream_error" or "server_error"; None from a
    server that does not send it)."""

    code: str
    message: str
    type: str | None = None


@dataclass(frozen=True)
class Task:
    """A task as `GET /v1/tasks/{id}` shows it.

    `status`: "pending" -> "processing" -> "completed" | "failed" | "cancelled". `progress`:
    0-100, never decreasing. `videos`: one per sample once completed (`withheld`: samples the
    upstream did not deliver, e.g. removed by safety filters). `error`: once failed.
    Times are Unix seconds; `estimated_time` is the model's expected seconds from start to end.
    `route`: which of the model's routes serves it (the server's docs/routing.md)."""

    id: str
    status: str
    progress: int
    model: str
    route: str | None
    created: int | None
    estimated_time: int | None
    queue_position: int | None
    completed: int | None
    actual_time: int | None
    videos: tuple[Video, ...]
    withheld: tuple[Withheld, ...]
    expired: bool
    error: TaskError | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Task:
        result = data.get("result")
        if not isinstance(result, dict):
            result = {}
        videos = tuple(
            Video.from_dict(v) for v in result.get("videos") or () if isinstance(v, dict)
        )
        error = data.get("error")
        return cls(
            id=str(data.get("id", "")),
            status=str(data.get("status", "")),
            progress=_int(data.get("progress")) or 0,
            model=str(data.get("model", "")),
            route=_str(data.get("route")),
            created=_int(data.get("created")),
            estimated_time=_int(data.get("estimated_time")),
            queue_position=_int(data.get("queue_position")),
            completed=_int(data.get("completed")),
            actual_time=_int(data.get("actual_time")),
            videos=videos,
            withheld=tuple(
                Withheld.from_dict(w) for w in result.get("withheld") or () if isinstance(w, dict)
            ),
            expired=result.get("expired") is True,
            error=(
                TaskError(
                    str(error.get("code", "")),
                    str(error.get("message", "")),
                    str(error["type"]) if error.get("type") is not None else None,
                )
                if isinstance(error, dict)
                else None
            ),
            raw=data,
        )


@dataclass(frozen=True)
class Model:
    """A model from `GET /v1/models` and what it can do. `available`: whether this key can run
    it; `runs_on`: the provider that will (a test key runs everything on "sandbox")."""

    id: str
    provider: str
    description: str
    modes: tuple[str, ...]
    durations: tuple[int, ...]
    default_duration: int | None
    resolutions: tuple[str, ...]
    aspect_ratios: tuple[str, ...]
    audio: bool
    fps: int | None
    max_sample_count: int | None
    estimated_time: int | None
    available: bool
    runs_on: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Model:
        def strings(name: str) -> tuple[str, ...]:
            return tuple(v for v in data.get(name) or () if isinstance(v, str))

        return cls(
            id=str(data.get("id", "")),
            provider=str(data.get("provider", "")),
            description=str(data.get("description", "")),
            modes=strings("modes"),
            durations=tuple(d for d in data.get("durations") or () if _int(d) is not None),
            default_duration=_int(data.get("default_duration")),
            resolutions=strings("resolutions"),
            aspect_ratios=strings("aspect_ratios"),
            audio=data.get("audio") is True,
            fps=_int(data.get("fps")),
            max_sample_count=_int(data.get("max_sample_count")),
            estimated_time=_int(data.get("estimated_time")),
            available=data.get("available") is not False,
            runs_on=_str(data.get("runs_on")),
            raw=data,
        )


@dataclass(frozen=True)
class TaskPage:
    """One page of `GET /v1/tasks`: newest first; pass `next_after` as `after` for the next."""

    tasks: list[Task]
    has_more: bool
    next_after: str | None
