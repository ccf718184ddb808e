"""GET /v1/files/{token}: result bytes behind signed, expiring links, with HTTP Range support.

No Authorization header is needed: the signed token is the credential, so a link works in a
browser or a `<video>` tag. Local files are served by Starlette's FileResponse (sendfile, single
and multiple ranges); remote (S3) objects are streamed with single ranges, or redirected to a
presigned URL when the operator chose that.
"""

from __future__ import annotations

import asyncio
import os
import time
from stat import S_ISREG
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from starlette.responses import StreamingResponse

from reelserve.api import envelope
from reelserve.api.auth import Service
from reelserve.api.errors import error_responses
from reelserve.domain.errors import Gone
from reelserve.storage.base import StorageKeyError

router = APIRouter(tags=["files"])
GONE = "this file is no longer available"
_BYTES: dict[str, Any] = {"video/mp4": {}, "image/jpeg": {}}
FILE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The whole file (MP4 video or JPEG thumbnail)", "content": _BYTES},
    206: {"description": "The requested byte range (`Range: bytes=...`)", "content": _BYTES},
    307: {"description": "A presigned URL of the S3 object (operators' `s3_presign`)"},
}


def parse_range(header: str, size: int) -> tuple[list[tuple[int, int]] | None, Response | None]:
    """The byte ranges a `Range` header asks for (inclusive ends), or the error to answer."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or not spec.strip():
        return None, envelope.error(
            400, f"Range must look like 'bytes=START-END' (got {header!r})", param="Range"
        )
    ranges: list[tuple[int, int]] = []
    for part in spec.split(","):
        start_text, dash, end_text = part.strip().partition("-")
        if not dash or not (start_text.strip() or end_text.strip()):
            return None, envelope.error(400, f"malformed Range {header!r}", param="Range")
        try:
            start = int(start_text) if start_text.strip() else None
            end = int(end_text) if end_text.strip() else None
        except ValueError:
            return None, envelope.error(400, f"malformed Range {header!r}", param="Range")
        if start is not None and end is not None and start > end:
            return None, envelope.error(
                400, f"Range start is after its end in {header!r}", param="Range"
            )
        if start is None:
            if end and size:  # a suffix: the last `end` bytes
                ranges.append((max(0, size - end), size - 1))
        elif start < size:
            ranges.append((start, min(size - 1, end if end is not None else size - 1)))
    if not ranges:
        return None, envelope.error(
            416,
            f"Range {header!r} is outside the file's {size} bytes",
            param="Range",
            headers={"Content-Range": f"bytes */{size}"},
        )
    return ranges, None


@router.head("/v1/files/{token}", include_in_schema=False)
@router.get(
    "/v1/files/{token}",
    summary="Download a result file",
    response_class=FileResponse,
    responses={**FILE_RESPONSES, **error_responses(403, 410, 416)},
    openapi_extra={"security": []},  # the signed token is the credential
)
async def get_file(token: str, request: Request, service: Service) -> Response:
    opened = service.files.open(token)  # the grant's key is well-formed (storage.check_key)
    storage = service.storage
    try:
        path = storage.local_path(opened.key)
    except StorageKeyError:
        raise Gone(GONE) from None
    header = request.headers.get("range")
    cache = {"Cache-Control": "private, max-age=3600", "Accept-Ranges": "bytes"}
    if path is not None:
        try:
            stat = await asyncio.to_thread(os.stat, path)
        except (FileNotFoundError, NotADirectoryError):
            raise Gone(GONE) from None
        if not S_ISREG(stat.st_mode):  # a directory, say: never served (nor listed)
            raise Gone(GONE)
        if header is not None:
            _, problem = parse_range(header, stat.st_size)
            if problem is not None:
                return problem
        return FileResponse(path, media_type=opened.content_type, stat_result=stat, headers=cache)

    size = await asyncio.to_thread(storage.size, opened.key)
    if size is None:
        raise Gone(GONE)
    if service.settings.s3_presign:
        expires_in = min(3600, int(opened.expires_at - time.time()))
        url = await asyncio.to_thread(
            storage.presigned_url, opened.key, expires_in, opened.content_type
        )
        if url is not None:
            return RedirectResponse(url, status_code=307)
    start, end, status = 0, size - 1, 200
    headers = dict(cache)
    if header is not None:
        ranges, problem = parse_range(header, size)
        if problem is not None:
            return problem
        assert ranges is not None
        if len(ranges) == 1:  # several ranges: answer the whole file (allowed by RFC 9110)
            (start, end), status = ranges[0], 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(end - start + 1)
    if request.method == "HEAD" or size == 0:
        return Response(status_code=status, headers=headers, media_type=opened.content_type)
    return StreamingResponse(
        storage.read_range(opened.key, start, end),
        status_code=status,
        headers=headers,
        media_type=opened.content_type,
    )
