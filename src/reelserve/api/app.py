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
from reelserve.api.routes import (
    events,
    files,
    generations,
    health,
    models,
    openai_videos,
    playground,
    tasks,
    usage,
    webhooks,
)
from reelserve.metrics import Metrics
from reelserve.service import Reelserve
from reelserve.settings import Settings
from reelserve.watch import TaskWatcher
from reelserve.worker.runner import Worker

GENERATION_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model", "prompt"],
    "properties": {
        "model": {"type": "string", "description": "a model id from GET /v1/models"},
        "prompt": {"type": "string", "maxLength": 8000},
        "negative_prompt": {"type": "string", "maxLength": 8000},
        "duration": {"type": "integer", "default": 8, "description": "seconds (Veo: 4, 6, 8)"},
        "aspect_ratio": {"type": "string", "enum": ["16:9", "9:16"], "default": "16:9"},
        "resolution": {"type": "string", "enum": ["720p", "1080p", "4K"], "default": "720p"},
        "first_frame_image": {"type": "string", "description": "http(s) or data:image URL"},
        "last_frame_image": {"type": "string", "description": "only with first_frame_image"},
        "seed": {"type": "integer", "minimum": 0, "maximum": 4294967295},
        "sample_count": {"type": "integer", "minimum": 1, "maximum": 4, "default": 1},
        "generate_audio": {"type": "boolean", "default": False},
        "person_generation": {
            "type": "string",
            "enum": ["allow_adult", "disallow"],
            "default": "allow_adult",
        },
        "resize_mode": {"type": "string", "enum": ["pad", "crop"], "default": "pad"},
        "enhance_prompt": {"type": "boolean", "enum": [True], "default": True},
        "webhook_url": {"type": "string", "description": "https URL notified when finished"},
    },
}


def create_app(
    settings: Settings | None = None,
    *,
    run_worker: bool | None = None,
    exit_when_stuck: bool = False,
) -> FastAPI:
    """The app; `exit_when_stuck` (for `reelserve serve`) lets the in-process worker end the
    process when a provider thread ignores the shutdown (see `Worker`)."""
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
            worker = Worker(service, exit_when_stuck=exit_when_stuck)
            service.on_submit(worker.wake)
            worker_task = asyncio.create_task(worker.run(stop))
            app.state.worker = worker
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
    for module in (generations, tasks, events, files, models, health, playground, webhooks):
        app.include_router(module.router)
    app.include_router(openai_videos.router)  # after generations: /v1/videos/{id} is a pattern
    app.include_router(usage.router)

    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(TaskStatusFastPath, owner=app, metrics=metrics)

    def _openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        schema.setdefault("components", {}).setdefault("schemas", {})["GenerationRequest"] = (
            GENERATION_REQUEST_SCHEMA
        )
        schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        schema["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = _openapi  # type: ignore[method-assign]
    return app
