"""The baseline: a minimal Starlette app that answers with fixed bytes (the ceiling of the stack).

Run as `python -m bench.bare_app PORT BYTES_FILE`; it serves the file's bytes as JSON on every
GET and POST, under the same uvicorn settings as reelserve.
"""

from __future__ import annotations

import sys
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def make_app(body: bytes) -> Starlette:
    async def endpoint(request: Request) -> Response:
        await request.body()
        return Response(body, media_type="application/json")

    return Starlette(routes=[Route("/{path:path}", endpoint, methods=["GET", "POST"])])


if __name__ == "__main__":
    port = int(sys.argv[1])
    payload = Path(sys.argv[2]).read_bytes()
    uvicorn.run(make_app(payload), host="127.0.0.1", port=port, log_level="warning")
