"""The web playground at `/`: one self-contained page to try the API from a browser.

The page is three static files shipped as package data (`api/static/`): HTML, vanilla JavaScript
and CSS, no build step, nothing loaded from another host. It talks to the same `/v1/*` routes as
every other client, with the API key the user pastes (kept in the browser's local storage), so
this router only serves bytes; it holds no business rules and needs no key.

The page is answered with a Content-Security-Policy that allows exactly what it uses: its own
script and style, JSON calls to its own origin, and images and video from its own origin (file
links), `data:` (the first/last frame previews) and `blob:`; plus the origin that file links
point to when the operator moved them elsewhere (`public_url`, presigned S3 links).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import Response

from reelserve.api.auth import Service
from reelserve.domain.errors import NotFound
from reelserve.settings import Settings

router = APIRouter(tags=["playground"])

# The files the page is made of, by the name they are served under, with their media types.
ASSET_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
ASSET_PREFIX = "/playground/"


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def _load_assets() -> dict[str, Asset]:
    """Read the page's files once, when the app is built (not on the event loop)."""
    folder = resources.files("reelserve.api").joinpath("static")
    assets = {}
    for name, media_type in ASSET_TYPES.items():
        body = folder.joinpath(name).read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        assets[name] = Asset(body, media_type, etag)
    return assets


ASSETS = _load_assets()


def _origin(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}"


def file_origins(settings: Settings) -> list[str]:
    """Origins other than the page's own that result and thumbnail links may point to."""
    origins: list[str] = []
    if settings.public_url:
        origin = _origin(settings.public_url)
        if origin:
            origins.append(origin)
    if settings.storage == "s3" and settings.s3_presign:
        if settings.s3_endpoint_url:
            origin = _origin(settings.s3_endpoint_url)
            if origin:
                scheme, _, host = origin.partition("://")
                origins += [origin, f"{scheme}://*.{host}"]  # path- and virtual-hosted styles
        else:
            origins.append("https://*.amazonaws.com")
    return origins


def content_security_policy(settings: Settings) -> str:
    extra = " ".join(file_origins(settings))
    media = f"'self' data: blob: {extra}".strip()
    directives = [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        f"img-src {media}",
        f"media-src {media}",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
    return "; ".join(directives)


def _answer(request: Request, asset: Asset, extra: dict[str, str] | None = None) -> Response:
    headers = {
        "ETag": asset.etag,
        "Cache-Control": "no-cache",  # revalidate: an upgraded server serves its own page
        "X-Content-Type-Options": "nosniff",
        **(extra or {}),
    }
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    body = b"" if request.method == "HEAD" else asset.body
    headers["Content-Length"] = str(len(asset.body))
    return Response(body, media_type=asset.media_type, headers=headers)


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
async def playground_page(request: Request, service: Service) -> Response:
    page_headers = {
        "Content-Security-Policy": content_security_policy(service.settings),
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
    }
    return _answer(request, ASSETS["index.html"], page_headers)


@router.api_route(ASSET_PREFIX + "{name}", methods=["GET", "HEAD"], include_in_schema=False)
async def playground_asset(name: str, request: Request) -> Response:
    asset = ASSETS.get(name) if name != "index.html" else None
    if asset is None:
        raise NotFound(f"no playground file {name[:64]!r}; the page is served at /")
    return _answer(request, asset)
