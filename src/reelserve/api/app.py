"""The ASGI application: `create_app(settings)`.

The lifespan opens the service (database, migrations, storage) and, unless disabled, starts the
in-process worker, so one `reelserve serve` is a complete server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi

import reelserve
from reelserve.api import errors
from reelserve.api.fastpath import TaskStatusFastPath
from reelserve.api.inputs import check_path_and_query
from reelserve.api.middleware import BodyLimitMiddleware, MetricsMiddleware
from reelserve.api.openai import routes as openai_videos
from reelserve.api.routes import (
    admin,
    estimates,
    events,
    files,
    generations,
    health,
    models,
    playground,
    tasks,
    usage,
    webhooks,
)
from reelserve.api.watch import TaskWatcher
from reelserve.core import Reelserve
from reelserve.core.heap import freeze_startup_heap
from reelserve.metrics import Metrics
from reelserve.settings import Settings
from reelserve.worker.runner import Worker


def _optional(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional member: JSON null means "not given" (CONTRACT.md), so null is valid too."""
    default = schema.pop("default", None)
    out: dict[str, Any] = {"anyOf": [schema, {"type": "null"}]}
    if default is not None:
        out["default"] = default
    return out


MAX_PROMPT = 8000
GENERATION_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model", "prompt"],
    "description": "Unknown members are ignored. Which durations, resolutions, aspect ratios and "
    "audio a model can do is in GET /v1/models; a request it cannot serve is a 400.",
    "properties": {
        "model": {"type": "string", "description": "a model id from GET /v1/models"},
        # Not blank after trimming: at least one character that is not whitespace.
        "prompt": {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT, "pattern": r"\S"},
        "negative_prompt": _optional({"type": "string", "maxLength": MAX_PROMPT}),
        "duration": _optional(
            {"type": "integer", "default": 8, "description": "seconds (Veo: 4, 6, 8)"}
        ),
        "aspect_ratio": _optional({"type": "string", "enum": ["16:9", "9:16"], "default": "16:9"}),
        "resolution": _optional(
            {
                "type": "string",
                "description": "720p, 1080p or 4K, in any case, surrounding spaces ignored",
                "pattern": r"^\s*(720[pP]|1080[pP]|4[kK])\s*$",
                "default": "720p",
            }
        ),
        "first_frame_image": _optional(
            {"type": "string", "description": "http(s) or data:image/...;base64, URL"}
        ),
        "last_frame_image": _optional(
            {"type": "string", "description": "as first_frame_image; only with it"}
        ),
        "seed": _optional({"type": "integer", "minimum": 0, "maximum": 4294967295}),
        "sample_count": _optional({"type": "integer", "minimum": 1, "maximum": 4, "default": 1}),
        "generate_audio": _optional({"type": "boolean", "default": False}),
        "person_generation": _optional(
            {"type": "string", "enum": ["allow_adult", "disallow"], "default": "allow_adult"}
        ),
        "resize_mode": _optional({"type": "string", "enum": ["pad", "crop"], "default": "pad"}),
        "enhance_prompt": _optional({"type": "boolean", "enum": [True], "default": True}),
        "webhook_url": _optional(
            {"type": "string", "description": "https URL notified when the task is finished"}
        ),
    },
}


def create_app(
    settings: Settings | None = None,
    *,
    run_worker: bool | None = None,
    exit_when_stuck: bool = False,
    freeze_heap: bool = False,
) -> FastAPI:
    """The app; `exit_when_stuck` (for `reelserve serve`) lets the in-process worker end the
    process when a provider thread ignores the shutdown (see `Worker`); `freeze_heap` (for
    `reelserve serve` too) freezes the objects alive after startup (`core.heap`)."""
    settings = settings or Settings()
    start_worker = settings.in_process_worker if run_worker is None else run_worker
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = await Reelserve.open(settings, metrics=metrics)
        app.state.reelserve = service
        watcher = TaskWatcher(service, interval=settings.events_poll_interval, metrics=metrics)
        app.state.task_watcher = watcher
        stop = asyncio.Event()
        worker_task: asyncio.Task[None] | None = None
        if start_worker:
            worker = Worker(service.worker_parts(), exit_when_stuck=exit_when_stuck)
            service.tasks.on_submit(worker.wake)
            worker_task = asyncio.create_task(worker.run(stop))
            app.state.worker = worker
        if freeze_heap:
            freeze_startup_heap()
        try:
            yield
        finally:
            stop.set()
            await watcher.close()
            if worker_task is not None:
                await worker_task
            await service.close()

    app = FastAPI(
        title="reelserve",
        version=reelserve.__version__,
        description="Self-hostable video-generation API (the seed's /v1/videos/generations).",
        lifespan=lifespan,
        dependencies=[Depends(check_path_and_query)],  # client text is checked first (400)
        docs_url="/docs",
        redoc_url=None,
        # No 307 to the path without its trailing slash: an unknown path is a 404 envelope.
        redirect_slashes=False,
    )
    errors.install(app)
    for module in (
        generations,
        estimates,
        tasks,
        events,
        files,
        models,
        health,
        playground,
        webhooks,
    ):
        app.include_router(module.router)
    app.include_router(openai_videos.router)  # after generations: /v1/videos/{id} is a pattern
    app.include_router(usage.router)
    app.include_router(admin.router)

    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(TaskStatusFastPath, owner=app, metrics=metrics)

    def _openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {})["GenerationRequest"] = GENERATION_REQUEST_SCHEMA
        # Invalid input is a 400 with the error envelope (errors.py), never FastAPI's 422.
        for operations in schema["paths"].values():
            for operation in operations.values():
                operation["responses"].pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            components["schemas"].pop(name, None)
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        schema["security"] = [{"bearer": []}]  # routes without a key say `security: []`
        app.openapi_schema = schema
        return schema

    app.openapi = _openapi  # type: ignore[method-assign]
    return app
