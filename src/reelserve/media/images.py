"""Input images: fetching, strict decoding and fitting to the output frame.

Clients name their first/last frame by an http(s) URL, which *this server* fetches, or by a
base64 `data:image/...` URL (the client's own bytes). Fetching a URL for a stranger is an SSRF
risk; `media.netguard` carries the rules (only http(s), every resolved address public unless
the operator allowed it, the connection made to the checked address, no env proxies, redirects
followed by hand, at most `max_redirects`, and every hop checked again). On top of that the
image fetcher streams the body and abandons it as soon as it passes `max_bytes`, refuses
compressed transfer, and runs the whole operation, DNS included, under one `total_timeout`.

Decoding is equally strict, because the bytes are hostile too: the type is sniffed from magic
bytes (the URL's extension and Content-Type are not trusted), only the sniffed format's Pillow
plugin is tried, the pixel count is checked from the header before any pixel is decoded
(decompression bombs), and truncation is detected structurally - independently of Pillow's
process-global `ImageFile.LOAD_TRUNCATED_IMAGES` - so a half-downloaded file is an error, never
a half-grey frame.

Errors are `ImageInputError`, whose message is safe to show the client: it names the field and
says what was wrong, without revealing what *our* resolver thinks internal names resolve to.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import io
import re
from typing import Literal

import httpx
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps

from reelserve.net.guard import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    MIB,
    AddressRefused,
    FetchPolicy,
    IPAddress,
    OutboundError,
    Target,
    check_url,
    follow_redirects,
    parse_http_url,
    pinned_request,
    redirect_location,
)

try:  # Pillow is normally built with LittleCMS; colour management is a nicety, not a must.
    from PIL import ImageCms
except ImportError:  # pragma: no cover - depends on the Pillow build
    ImageCms = None  # type: ignore[assignment]

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "FILL_COLOUR",
    "MIB",
    "SUPPORTED_MIMES",
    "AddressRefused",
    "FetchPolicy",
    "ImageInputError",
    "check_image_source",
    "decode_image",
    "fetch_image",
    "fit_image",
    "load_input_image",
    "sniff_mime",
    "upload_image",
]

ImageInputError = OutboundError
"""An image input is unusable: refused address, failed fetch, not an image, too large...

The same class as `netguard.OutboundError` (so `AddressRefused` and every other URL problem is
one too). `message` is client-safe and starts with the field name; `param` is that field
(`first_frame_image` / `last_frame_image`). At submit the API turns it into a 400
`invalid_request_error` with this `param`; in the worker it fails the task with error code
`invalid_image`.
"""

FILL_COLOUR = (0, 0, 0)
"""Black: the colour of `pad` bars and of transparent pixels once flattened. One colour for both
keeps a transparent logo on a letterboxed frame seamless, and black bars are what video players
show anyway."""

SUPPORTED_MIMES = ("image/jpeg", "image/png", "image/webp")
_PIL_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}
_FORMAT_NAMES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WebP"}
_DATA_URL_RE = re.compile(
    r"^data:(?P<mime>[^,;]*)(?P<params>(?:;[^,;]*)*?);base64,(?P<payload>.*)$",
    re.DOTALL | re.IGNORECASE,
)


# --------------------------------------------------------------------------------------------
# data: URLs and content sniffing


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
        raise ImageInputError(f"{param} must be at most {_size(max_bytes)}", param)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageInputError(
            f"{param} must be a data URL with valid base64 (got invalid base64)", param
        ) from None
    if len(data) > max_bytes:
        raise ImageInputError(f"{param} must be at most {_size(max_bytes)}", param)
    return data


def sniff_mime(data: bytes) -> str | None:
    """`image/jpeg`, `image/png` or `image/webp` from the magic bytes, else None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _looks_like(data: bytes) -> str:
    """A short description of unsupported content, so the client learns what it sent."""
    head = data[:512]
    if not head:
        return "no data"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "a GIF image"
    if head.startswith(b"BM"):
        return "a BMP image"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "a TIFF image"
    if head[4:8] == b"ftyp":
        return "an ISO media file (HEIC, AVIF or video)"
    if head.startswith(b"%PDF"):
        return "a PDF document"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text):
        return "an SVG image"
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "an HTML document"
    if text.startswith((b"{", b"[")):
        return "JSON"
    if text.startswith(b"<"):
        return "markup"
    return "unrecognised data"


def _require_supported(data: bytes, param: str, origin: str) -> str:
    mime = sniff_mime(data)
    if mime is None:
        raise ImageInputError(
            f"{param} must be a JPEG, PNG or WebP image ({origin} {_looks_like(data)})", param
        )
    return mime


def _size(n: int) -> str:
    return f"{n / MIB:g} MB" if n >= MIB else f"{n} bytes"


# --------------------------------------------------------------------------------------------
# Submit-time check and fetching


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
    url = parse_http_url(source, param, policy, redirect=False)
    try:
        async with asyncio.timeout(policy.total_timeout):
            await check_url(url, param, policy, hop=0)
    except TimeoutError:
        raise ImageInputError(f"{param} host could not be resolved in time", param) from None


def _check_data_url(source: str, param: str, policy: FetchPolicy) -> None:
    data = _decode_data_url(source, param, policy.max_bytes)
    mime = _require_supported(data, param, "the data URL contains")
    _check_complete(data, mime, param)
    _check_header(data, mime, param, policy.max_pixels)


async def fetch_image(source: str, param: str, policy: FetchPolicy) -> tuple[bytes, str]:
    """The image's bytes and MIME type (sniffed: image/jpeg, image/png or image/webp).

    Does not decode pixels; `decode_image` does (and re-checks everything it relies on).
    """
    if _is_data_url(source):
        data = await asyncio.to_thread(_decode_data_url, source, param, policy.max_bytes)
        return data, _require_supported(data, param, "the data URL contains")
    url = parse_http_url(source, param, policy, redirect=False)
    try:
        async with asyncio.timeout(policy.total_timeout):
            return await _fetch_http(url, param, policy)
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
    """One GET of `target` from the checked `address` (`netguard.pinned_request`)."""
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
            f"{param} is {_size(int(length))}; the limit is {_size(policy.max_bytes)}", param
        )
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > policy.max_bytes:
            raise ImageInputError(
                f"{param} is larger than the limit of {_size(policy.max_bytes)}", param
            )
    data = bytes(body)
    return data, _require_supported(data, param, "the URL returned")


# --------------------------------------------------------------------------------------------
# Decoding


def _truncated(param: str, kind: str) -> ImageInputError:
    return ImageInputError(f"{param} is a truncated or damaged {kind} file", param)


def _check_complete(data: bytes, mime: str, param: str) -> None:
    """Refuse files that end early, by walking their structure to the end marker.

    Pillow refuses truncated files only while the process-global `LOAD_TRUNCATED_IMAGES` is
    False, and any library in the process may set it; this check does not depend on it.
    """
    n = len(data)
    if mime == "image/png":
        pos = 8
        while True:
            if pos + 12 > n:
                raise _truncated(param, "PNG")
            length = int.from_bytes(data[pos : pos + 4], "big")
            kind = data[pos + 4 : pos + 8]
            pos += 12 + length
            if pos > n:
                raise _truncated(param, "PNG")
            if kind == b"IEND":
                return
    elif mime == "image/webp":
        riff_size = int.from_bytes(data[4:8], "little")
        if riff_size < 4 or n < 8 + riff_size:
            raise _truncated(param, "WebP")
    else:
        _check_jpeg_complete(data, param)


def _check_jpeg_complete(data: bytes, param: str) -> None:
    """Walk JPEG segments (skipping entropy-coded scan data) until EOI.

    Data after the first EOI (e.g. a Motion Photo's video) is ignored; an EXIF thumbnail's EOI
    lives inside its APP1 segment and is skipped with it.
    """
    n = len(data)
    pos = 2
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0:
            raise _truncated(param, "JPEG")
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            raise _truncated(param, "JPEG")
        marker = data[pos]
        pos += 1
        if marker == 0xD9:  # EOI
            return
        if marker in (0x00, 0x01) or 0xD0 <= marker <= 0xD7:  # standalone markers
            continue
        if pos + 2 > n:
            raise _truncated(param, "JPEG")
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2:
            raise _truncated(param, "JPEG")
        pos += length
        if pos > n:
            raise _truncated(param, "JPEG")
        if marker == 0xDA:  # SOS: scan data runs to the next marker that is not 00 or RSTn
            while True:
                pos = data.find(b"\xff", pos)
                if pos < 0 or pos + 1 >= n:
                    raise _truncated(param, "JPEG")
                following = data[pos + 1]
                if following == 0x00 or 0xD0 <= following <= 0xD7:
                    pos += 2
                elif following == 0xFF:
                    pos += 1
                else:
                    break


def _open(data: bytes, mime: str, param: str, max_pixels: int) -> Image.Image:
    """Open (header only) with the sniffed format's plugin alone, and refuse too many pixels."""
    try:
        image = Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[mime]])
    except Image.DecompressionBombError:
        raise _too_many_pixels(param, None, max_pixels) from None
    except MemoryError:
        raise
    except Exception:
        raise ImageInputError(
            f"{param} is not a readable {_FORMAT_NAMES[mime]} image", param
        ) from None
    width, height = image.size
    if width < 1 or height < 1:
        image.close()
        raise ImageInputError(f"{param} has no pixels", param)
    if width * height > max_pixels:
        image.close()
        raise _too_many_pixels(param, (width, height), max_pixels)
    return image


def _too_many_pixels(param: str, size: tuple[int, int] | None, max_pixels: int) -> ImageInputError:
    limit = f"the limit is {max_pixels / 1e6:g} megapixels"
    if size is None:
        return ImageInputError(f"{param} has too many pixels; {limit}", param)
    width, height = size
    return ImageInputError(
        f"{param} is {width}x{height} pixels ({width * height / 1e6:.1f} megapixels); {limit}",
        param,
    )


def _check_header(data: bytes, mime: str, param: str, max_pixels: int) -> None:
    _open(data, mime, param, max_pixels).close()


def decode_image(data: bytes, param: str, *, max_pixels: int) -> Image.Image:
    """Decode JPEG/PNG/WebP bytes into a fully loaded, upright RGB image.

    Checks, in order of cost: magic bytes, structural completeness, pixel count from the header
    (before any pixel is decoded), then decodes. EXIF orientation is applied, embedded ICC
    profiles are converted to sRGB where Pillow has LittleCMS, 16-bit greyscale is scaled (not
    clipped) to 8 bits, and transparency is flattened onto black (`FILL_COLOUR`). Blocking and
    CPU-bound: call it in a thread. Animated images give their first frame.
    """
    mime = _require_supported(data, param, "got")
    _check_complete(data, mime, param)
    image = _open(data, mime, param, max_pixels)
    try:
        with image:
            image.load()
            return _to_rgb(image)
    except ImageInputError:
        raise
    except Image.DecompressionBombError:
        raise _too_many_pixels(param, image.size, max_pixels) from None
    except MemoryError:
        raise
    except Exception:
        raise _truncated(param, _FORMAT_NAMES[mime]) from None


@functools.cache
def _srgb_profile() -> ImageCms.ImageCmsProfile:
    assert ImageCms is not None
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _apply_icc(image: Image.Image) -> Image.Image:
    """Convert from the embedded ICC profile to sRGB (e.g. Display P3 photos from phones).

    Best effort: a missing LittleCMS or a broken profile leaves the pixels as they are, which is
    what every viewer without colour management shows anyway.
    """
    icc = image.info.get("icc_profile")
    if not icc or ImageCms is None or image.mode not in ("RGB", "RGBA", "CMYK"):
        return image
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        output = "RGBA" if image.mode == "RGBA" else "RGB"
        converted = ImageCms.profileToProfile(
            image,
            source,
            _srgb_profile(),
            outputMode=output,
        )
    except Exception:
        return image
    return converted if converted is not None else image


def _to_rgb(image: Image.Image) -> Image.Image:
    try:
        upright = ImageOps.exif_transpose(image)
    except Exception:  # malformed EXIF: keep the stored orientation rather than fail
        upright = image
    if upright is None:  # pragma: no cover - only with in_place=True
        upright = image
    if upright.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit greyscale PNG: Pillow's convert() clips at 255, turning most of it white.
        values = np.asarray(upright).astype(np.uint32)
        upright = Image.fromarray((np.clip(values, 0, 65535) >> 8).astype(np.uint8), "L")
    upright = _apply_icc(upright)
    has_alpha = upright.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        "transparency" in upright.info
    )
    if has_alpha:
        rgba = upright.convert("RGBA")
        flat = Image.new("RGB", rgba.size, FILL_COLOUR)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    result = upright.convert("RGB") if upright.mode != "RGB" else upright
    # `image` is closed by the caller, which frees its pixels: never hand it out itself.
    return result.copy() if result is image else result


async def load_input_image(
    source: str, param: str, policy: FetchPolicy
) -> tuple[bytes, str, Image.Image]:
    """Fetch and decode (in a thread): the original bytes, their MIME type and the RGB image."""
    data, mime = await fetch_image(source, param, policy)
    image = await asyncio.to_thread(decode_image, data, param, max_pixels=policy.max_pixels)
    return data, mime, image


# --------------------------------------------------------------------------------------------
# Fitting


def fit_image(
    image: Image.Image, width: int, height: int, mode: Literal["pad", "crop"]
) -> NDArray[np.uint8]:
    """Fit `image` to exactly `width`x`height` without distorting it; an HxWx3 uint8 array.

    `pad` scales the whole image to fit inside and centres it on black bars (letterbox or
    pillarbox); `crop` scales it to cover the frame and cuts the overflow equally from both
    sides. Lanczos with `reducing_gap` keeps large downscales sharp and fast.
    """
    if width < 1 or height < 1:
        raise ValueError(f"width and height must be positive (got {width}x{height})")
    if mode not in ("pad", "crop"):
        raise ValueError(f'mode must be "pad" or "crop" (got {mode!r})')
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    src_w, src_h = rgb.size
    if (src_w, src_h) == (width, height):
        return np.array(rgb, dtype=np.uint8)
    resample = Image.Resampling.LANCZOS
    if mode == "crop":
        # The largest centred box of the output's aspect ratio, resized straight to the output.
        if src_w * height > width * src_h:  # source wider than the frame
            box_w, box_h = src_h * width / height, float(src_h)
        else:
            box_w, box_h = float(src_w), src_w * height / width
        left, top = (src_w - box_w) / 2, (src_h - box_h) / 2
        fitted = rgb.resize(
            (width, height),
            resample,
            box=(left, top, left + box_w, top + box_h),
            reducing_gap=3.0,
        )
        return np.array(fitted, dtype=np.uint8)
    scale = min(width / src_w, height / src_h)
    new_w = min(width, max(1, round(src_w * scale)))
    new_h = min(height, max(1, round(src_h * scale)))
    scaled = rgb.resize((new_w, new_h), resample, reducing_gap=3.0)
    canvas = Image.new("RGB", (width, height), FILL_COLOUR)
    canvas.paste(scaled, ((width - new_w) // 2, (height - new_h) // 2))
    return np.array(canvas, dtype=np.uint8)


# --------------------------------------------------------------------------------------------
# Re-encoding for an upstream that takes the image itself

SMALL_PNG_BYTES = 1 * MIB
SMALL_PNG_PIXELS = 1280 * 720
UPLOAD_JPEG_QUALITY = 95


def upload_image(
    data: bytes,
    width: int,
    height: int,
    mode: Literal["pad", "crop"] | None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = 20 * MIB,
    types: tuple[str, ...] = ("image/jpeg", "image/png"),
) -> tuple[bytes, str]:
    """An input image as an upstream model should receive it: (bytes, MIME type).

    With `mode` ("pad" or "crop"), the image is fitted to the output's aspect ratio here (for
    an upstream that takes no resize mode); without, only its size changes and the upstream
    fits it. Either way it is never larger than the output (`width` x `height`: a 4K frame
    holds no more detail than the output can show) and never upscaled (a small image stays
    small, and the upstream scales it). The original bytes go as they are when nothing needs
    changing and their type is one of `types`; anything re-encoded is a PNG when that is small
    (flat graphics), else a JPEG at quality 95. Blocking: call it in a thread.
    """
    mime = sniff_mime(data)
    image = decode_image(data, "image", max_pixels=max_pixels)
    src_w, src_h = image.size
    if mode is None:
        # Keep the aspect ratio; shrink so that the image still covers the output frame.
        scale = min(1.0, max(width / src_w, height / src_h))
        size = (max(1, round(src_w * scale)), max(1, round(src_h * scale)))
        if size == (src_w, src_h) and mime in types and len(data) <= max_bytes:
            return data, str(mime)
        fitted = image if size == (src_w, src_h) else image.resize(size, Image.Resampling.LANCZOS)
    else:
        # The output's aspect ratio at the largest size <= the output that needs no upscaling.
        if mode == "crop":
            k = min(1.0, min(src_w / width, src_h / height))
        else:
            k = min(1.0, max(src_w / width, src_h / height))
        box = (max(1, round(width * k)), max(1, round(height * k)))
        if box == (src_w, src_h) and mime in types and len(data) <= max_bytes:
            return data, str(mime)
        fitted = Image.fromarray(fit_image(image, box[0], box[1], mode))
    if fitted.width * fitted.height <= SMALL_PNG_PIXELS:
        buffer = io.BytesIO()
        fitted.save(buffer, format="PNG", optimize=False)
        if buffer.tell() <= SMALL_PNG_BYTES:
            return buffer.getvalue(), "image/png"
    buffer = io.BytesIO()
    fitted.save(buffer, format="JPEG", quality=UPLOAD_JPEG_QUALITY)
    if buffer.tell() > max_bytes:
        raise ImageInputError(
            f"the image is {_size(buffer.tell())} even as a JPEG; the upstream takes at most "
            f"{_size(max_bytes)}",
            "image",
        )
    return buffer.getvalue(), "image/jpeg"
