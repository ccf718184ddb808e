"""Fetching input images: a base64 `data:image/...` URL (the client's own bytes), or an
http(s) URL, which *this server* fetches for a stranger.

Fetching a URL for a stranger is an SSRF risk; `net.guard` and `net.transport` carry the rules
(only http(s), every resolved address public unless the operator allowed it, the connection
made to the checked address, no env proxies, redirects followed by hand, at most
`max_redirects`, and every hop checked again). On top of that the fetcher streams the body and
abandons it as soon as it passes `max_bytes`, refuses compressed transfer, and runs the whole
operation, DNS included, under one `total_timeout`. The guard's `OutboundError` is re-raised
as `ImageInputError`, whose message is safe to show the client.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re

import httpx
from PIL import Image

from reelserve.media.images.decode import (
    ImageInputError,
    check_complete,
    check_header,
    decode_image,
    require_supported,
    size_text,
)
from reelserve.net.addresses import IPAddress
from reelserve.net.guard import (
    FetchPolicy,
    OutboundError,
    Target,
    check_destination,
    parse_http_url,
)
from reelserve.net.transport import follow_redirects, pinned_request, redirect_location

_DATA_URL_RE = re.compile(
    r"^data:(?P<mime>[^,;]*)(?P<params>(?:;[^,;]*)*?);base64,(?P<payload>.*)$",
    re.DOTALL | re.IGNORECASE,
)


def _is_data_url(source: str) -> bool:
    return source[:5].lower() == "data:"


def _decode_data_url(source: str, param: str, max_bytes: int) -> bytes:
    match = _DATA_URL_RE.match(source)
    if match is None:
        raise ImageInputError(
            f"{param} must be a data:image/...;base64, URL (got a malformed data URL)", param
        )
    payload = match.group("payload")
    if len(payload) > (max_bytes * 4) // 3 + 4:
        raise ImageInputError(f"{param} must be at most {size_text(max_bytes)}", param)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageInputError(
            f"{param} must be a data URL with valid base64 (got invalid base64)", param
        ) from None
    if len(data) > max_bytes:
        raise ImageInputError(f"{param} must be at most {size_text(max_bytes)}", param)
    return data


async def check_image_source(source: str, param: str, policy: FetchPolicy) -> None:
    """Everything about an image input that can be known without downloading it.

    For data URLs: decodes them and checks size, type (magic bytes) and pixel count from the
    header. For http(s): scheme, credentials, and that the host resolves to allowed addresses
    only. Raises `ImageInputError` (a 400 at submit). The fetch itself, and redirects, are
    checked again by `fetch_image`, because DNS and servers can change their answers.
    """
    if _is_data_url(source):
        await asyncio.to_thread(_check_data_url, source, param, policy)
        return
    try:
        await check_destination(source, param, policy)
    except OutboundError as exc:
        raise ImageInputError(exc.message, exc.param) from None


def _check_data_url(source: str, param: str, policy: FetchPolicy) -> None:
    data = _decode_data_url(source, param, policy.max_bytes)
    mime = require_supported(data, param, "the data URL contains")
    check_complete(data, mime, param)
    check_header(data, mime, param, policy.max_pixels)


async def fetch_image(source: str, param: str, policy: FetchPolicy) -> tuple[bytes, str]:
    """The image's bytes and MIME type (sniffed: image/jpeg, image/png or image/webp).

    Does not decode pixels; `decode_image` does (and re-checks everything it relies on).
    """
    if _is_data_url(source):
        data = await asyncio.to_thread(_decode_data_url, source, param, policy.max_bytes)
        return data, require_supported(data, param, "the data URL contains")
    try:
        url = parse_http_url(source, param, policy, redirect=False)
        async with asyncio.timeout(policy.total_timeout):
            return await _fetch_http(url, param, policy)
    except OutboundError as exc:
        raise ImageInputError(exc.message, exc.param) from None
    except TimeoutError:
        raise ImageInputError(
            f"{param} could not be fetched within {policy.total_timeout:g} seconds", param
        ) from None


async def _fetch_http(url: httpx.URL, param: str, policy: FetchPolicy) -> tuple[bytes, str]:
    async def send(target: Target) -> tuple[bytes, str] | httpx.URL:
        return await _request(target, param, policy)

    return await follow_redirects(url, param, policy, send)


async def _request(
    target: Target, param: str, policy: FetchPolicy
) -> tuple[bytes, str] | httpx.URL:
    """GET the target from its checked addresses in turn; the image, or where it redirects."""
    failure = "could not connect"
    for address in target.addresses:
        try:
            return await _request_from(target, address, param, policy)
        except httpx.ConnectError as exc:
            if "certificate" in str(exc).lower():
                failure = "its TLS certificate could not be verified"
            continue
        except httpx.TimeoutException:
            raise ImageInputError(
                f"{param} could not be fetched within {policy.total_timeout:g} seconds", param
            ) from None
        except httpx.HTTPError as exc:
            raise ImageInputError(
                f'{param} could not be fetched from "{target.host}" ({type(exc).__name__})',
                param,
            ) from None
    raise ImageInputError(f'{param} could not be fetched from "{target.host}": {failure}', param)


async def _request_from(
    target: Target, address: IPAddress, param: str, policy: FetchPolicy
) -> tuple[bytes, str] | httpx.URL:
    """One GET of `target` from the checked `address` (`net.transport.pinned_request`)."""
    headers = {
        "User-Agent": policy.user_agent,
        "Accept": "image/png, image/jpeg, image/webp",
        # Compressed transfer would let a small body expand in memory before our size check.
        "Accept-Encoding": "identity",
    }
    async with pinned_request("GET", target, address, policy, headers=headers) as response:
        return await _read_response(response, target, param, policy)


async def _read_response(
    response: httpx.Response, target: Target, param: str, policy: FetchPolicy
) -> tuple[bytes, str] | httpx.URL:
    status = response.status_code
    location = redirect_location(response, target, param, policy)
    if location is not None:
        return location
    if not 200 <= status < 300:
        reason = f" {response.reason_phrase}" if response.reason_phrase else ""
        raise ImageInputError(
            f"{param} URL returned HTTP {status}{reason}; it must return the image (2xx)", param
        )
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise ImageInputError(
            f"{param} URL sent the image with Content-Encoding {encoding}; "
            "it must be sent uncompressed",
            param,
        )
    length = response.headers.get("content-length")
    if length is not None and length.strip().isdigit() and int(length) > policy.max_bytes:
        raise ImageInputError(
            f"{param} is {size_text(int(length))}; the limit is {size_text(policy.max_bytes)}",
            param,
        )
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > policy.max_bytes:
            raise ImageInputError(
                f"{param} is larger than the limit of {size_text(policy.max_bytes)}", param
            )
    data = bytes(body)
    return data, require_supported(data, param, "the URL returned")


async def load_input_image(
    source: str, param: str, policy: FetchPolicy
) -> tuple[bytes, str, Image.Image]:
    """Fetch and decode (in a thread): the original bytes, their MIME type and the RGB image."""
    data, mime = await fetch_image(source, param, policy)
    image = await asyncio.to_thread(decode_image, data, param, max_pixels=policy.max_pixels)
    return data, mime, image
