"""The OpenAI-compatible Videos API: `/v1/videos` (create, retrieve, list, delete, content).

HTTP translation only: the request is read here (multipart form, as OpenAI's SDKs send it, or
JSON), mapped by `mapping.py`, and run by the same service as the native API, so a video
is a task under its own id. Successes answer OpenAI's bare objects; errors keep reelserve's
envelope, whose `error` member (`message`, `type`, `param`) is where OpenAI's clients read theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import FileResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from reelserve.api.auth import Key, Service
from reelserve.api.envelope import bare
from reelserve.api.errors import IDEMPOTENCY_KEY_SCHEMA, error_responses
from reelserve.api.inputs import parse_json_body
from reelserve.api.openai import mapping as compat
from reelserve.api.routes.files import FILE_RESPONSES, get_file
from reelserve.core import Reelserve
from reelserve.domain.errors import InvalidRequest, ReelserveError, describe
from reelserve.domain.spec import MAX_IMAGE_BYTES
from reelserve.media.images import ImageInputError, check_image_source
from reelserve.store.queue import TaskRecord

router = APIRouter(tags=["openai-compatible"])
REFERENCE = compat.REFERENCE

_CREATE_FIELDS: dict[str, Any] = {
    "model": {"type": "string", "description": "an OpenAI model name or a reelserve model id"},
    "prompt": {"type": "string", "minLength": 1, "maxLength": 8000, "pattern": r"\S"},
    "seconds": {"type": "string", "description": 'a duration the model can do, e.g. "4"'},
    "size": {"type": "string", "description": 'width x height, e.g. "1280x720"'},
}


def _or_null(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


CREATE_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["prompt"],
                "properties": {
                    **_CREATE_FIELDS,
                    REFERENCE: {"type": "string", "format": "binary"},
                },
            }
        },
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["prompt"],
                "properties": {
                    # In JSON, null means "not given" (as on the native route).
                    **{
                        name: field if name == "prompt" else _or_null(field)
                        for name, field in _CREATE_FIELDS.items()
                    },
                    REFERENCE: {
                        "description": 'an image URL, or {"image_url": URL}',
                        "anyOf": [{"type": "string"}, {"type": "object"}, {"type": "null"}],
                    },
                },
            }
        },
    },
}


def _video(task: TaskRecord) -> dict[str, Any]:
    video = task.result.videos[0] if task.result and task.result.videos else None
    return compat.video_object(
        task_id=task.id,
        status=task.status.value,
        progress=task.progress,
        model=task.model,
        spec=task.spec,
        created_at=task.created_at,
        finished_at=task.finished_at,
        error_code=task.error_code,
        error_message=task.error_message,
        expires_at=task.result.expires_at if task.result is not None else None,
        rendered=(video.width, video.height) if video is not None else None,
    )


async def _read_create(request: Request) -> tuple[dict[str, object], str | None]:
    """The request's fields and its `input_reference` as a URL (an upload becomes a data URL)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.form()
        fields: dict[str, object] = {}
        upload: UploadFile | None = None
        for name, value in form.multi_items():
            if name == REFERENCE and isinstance(value, UploadFile):
                upload = value
            elif isinstance(value, str):
                fields[name] = value
        nested = {
            sub: fields.pop(f"{REFERENCE}[{sub}]")
            for sub in ("image_url", "file_id")
            if f"{REFERENCE}[{sub}]" in fields
        }
        if upload is not None:
            data = await upload.read(MAX_IMAGE_BYTES + 1)
            if len(data) > MAX_IMAGE_BYTES:
                raise InvalidRequest(
                    f"input_reference must be at most {MAX_IMAGE_BYTES // (1024 * 1024)} MB",
                    param=REFERENCE,
                )
            if not data:
                raise InvalidRequest("input_reference is an empty file", param=REFERENCE)
            url = await asyncio.to_thread(compat.image_data_url, data, upload.content_type)
            return fields, url
        return fields, compat.reference_source(nested or fields.pop(REFERENCE, None))
    if content_type in ("application/json", ""):
        body = parse_json_body(await request.body())
        if not isinstance(body, dict):
            raise InvalidRequest(
                "the request body must be multipart/form-data (as OpenAI's SDKs send it) or a "
                f"JSON object (got {describe(body)})"
            )
        return body, compat.reference_source(body.pop(REFERENCE, None))
    raise InvalidRequest(
        f"Content-Type must be multipart/form-data or application/json (got {content_type!r})"
    )


def _not_the_submit_route(video_id: str) -> None:
    """`/v1/videos/generations` is the native submit route (POST only), not a video: other
    methods on it answer 405, as they did before this router existed."""
    if video_id == "generations":
        raise StarletteHTTPException(405, headers={"Allow": "POST"})


@contextlib.contextmanager
def _openai_names(video_id: str | None = None) -> Iterator[None]:
    """Errors of the shared service, named as the OpenAI client sent them (`video_id`: the one
    this request names)."""
    try:
        yield
    except ReelserveError as exc:
        raise compat.openai_error(exc, video_id) from None


async def _check_reference(service: Reelserve, url: str) -> None:
    """The image checks of a submit (address, data URL contents), made here under the name the
    client sent, `input_reference` (the service makes them again, as `first_frame_image`)."""
    try:
        await check_image_source(url, REFERENCE, service.admission.image_policy)
    except ImageInputError as exc:
        raise InvalidRequest(exc.message, param=REFERENCE) from None


def _submit_body(
    service: Reelserve, fields: Mapping[str, object], reference: str | None
) -> dict[str, Any]:
    return compat.generation_body(
        fields,
        reference=reference,
        models=service.models,
        aliases=service.settings.openai_models,
        default_model=service.settings.openai_default_model,
    )


@router.post(
    "/v1/videos",
    summary="Create a video (OpenAI-compatible)",
    responses=error_responses(401, 403, 409, 413, 429),
    openapi_extra={"requestBody": CREATE_BODY},
)
async def create_video(
    request: Request,
    key: Key,
    service: Service,
    idempotency_key: str | None = Header(
        None, alias="Idempotency-Key", json_schema_extra=IDEMPOTENCY_KEY_SCHEMA
    ),
) -> Response:
    fields, reference = await _read_create(request)
    body = _submit_body(service, fields, reference)
    if reference is not None:
        await _check_reference(service, reference)
    with _openai_names():
        task = await service.tasks.submit(
            key, body, idempotency_key=idempotency_key, base_url=str(request.base_url)
        )
    return bare(_video(task))


@router.get(
    "/v1/videos",
    summary="List videos, newest first (OpenAI-compatible)",
    responses=error_responses(401, 403),
)
async def list_videos(
    key: Key,
    service: Service,
    limit: int = Query(20, ge=1, le=compat.MAX_LIST_LIMIT),
    after: str | None = Query(None, description="the last id of the previous page"),
    order: Literal["desc"] | None = Query(None, description="newest first (the only order)"),
) -> Response:
    compat.check_list_query(limit, order)
    rows, has_more = await service.tasks.page(
        key, status=None, model=None, limit=limit, after=after
    )
    return bare(compat.list_object([_video(t) for t in rows], has_more))


@router.get(
    "/v1/videos/{video_id}",
    summary="Retrieve a video (OpenAI-compatible)",
    responses=error_responses(401, 403, 404, 405),
)
async def retrieve_video(video_id: str, key: Key, service: Service) -> Response:
    _not_the_submit_route(video_id)
    with _openai_names(video_id):
        task = await service.tasks.get(key, video_id)
    return bare(_video(task))


@router.delete(
    "/v1/videos/{video_id}",
    summary="Delete a video and its files (OpenAI-compatible)",
    responses=error_responses(401, 403, 404, 405, 409),
)
async def delete_video(video_id: str, key: Key, service: Service) -> Response:
    _not_the_submit_route(video_id)
    with _openai_names(video_id):
        task = await service.tasks.delete(key, video_id)
    return bare({"id": task.id, "object": "video.deleted", "deleted": True})


@router.head("/v1/videos/{video_id}/content", include_in_schema=False)
@router.get(
    "/v1/videos/{video_id}/content",
    summary="Download a video's MP4 or thumbnail",
    response_class=FileResponse,
    responses={**FILE_RESPONSES, **error_responses(401, 403, 404, 405, 409, 410, 416)},
)
async def video_content(
    video_id: str,
    request: Request,
    key: Key,
    service: Service,
    variant: Literal["video", "thumbnail"] | None = Query(
        None, description="video (MP4, the default) or thumbnail (JPEG)"
    ),
) -> Response:
    chosen = compat.check_variant(variant)
    with _openai_names(video_id):
        task = await service.tasks.get(key, video_id)
        token = service.files.token(task, chosen)
    return await get_file(token, request, service)
