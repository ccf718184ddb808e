"""Decoding input images strictly, because their bytes are hostile.

The type is sniffed from magic bytes (a URL's extension and Content-Type are not trusted), only
the sniffed format's Pillow plugin is tried, the pixel count is checked from the header before
any pixel is decoded (decompression bombs), and truncation is detected structurally -
independently of Pillow's process-global `ImageFile.LOAD_TRUNCATED_IMAGES` - so a
half-downloaded file is an error, never a half-grey frame. The decoded image is upright, sRGB
where Pillow has LittleCMS, and flattened onto black.
"""

from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image, ImageOps

from reelserve.net.guard import MIB

try:  # Pillow is normally built with LittleCMS; colour management is a nicety, not a must.
    from PIL import ImageCms
except ImportError:  # pragma: no cover - depends on the Pillow build
    ImageCms = None  # type: ignore[assignment]


class ImageInputError(Exception):
    """An image input is unusable: failed fetch, refused address, not an image, too large...

    `message` is client-safe and starts with the field name; `param` is that field
    (`first_frame_image` / `last_frame_image`). At submit the API turns it into a 400
    `invalid_request_error` with this `param`; in the worker it fails the task with error code
    `invalid_image`. The fetcher raises it for a refused or unusable URL too (the guard's
    `net.guard.OutboundError`, re-raised as this), so one `except` covers an image input;
    it is never an `OutboundError`, which webhook code catches.
    """

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


FILL_COLOUR = (0, 0, 0)
"""Black: the colour of `pad` bars and of transparent pixels once flattened. One colour for both
keeps a transparent logo on a letterboxed frame seamless, and black bars are what video players
show anyway."""

SUPPORTED_MIMES = ("image/jpeg", "image/png", "image/webp")
_PIL_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}
_FORMAT_NAMES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WebP"}


# --------------------------------------------------------------------------------------------
# Content sniffing


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


def require_supported(data: bytes, param: str, origin: str) -> str:
    mime = sniff_mime(data)
    if mime is None:
        raise ImageInputError(
            f"{param} must be a JPEG, PNG or WebP image ({origin} {_looks_like(data)})", param
        )
    return mime


def size_text(n: int) -> str:
    return f"{n / MIB:g} MB" if n >= MIB else f"{n} bytes"


# --------------------------------------------------------------------------------------------
# Decoding


def _truncated(param: str, kind: str) -> ImageInputError:
    return ImageInputError(f"{param} is a truncated or damaged {kind} file", param)


def check_complete(data: bytes, mime: str, param: str) -> None:
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


def check_header(data: bytes, mime: str, param: str, max_pixels: int) -> None:
    _open(data, mime, param, max_pixels).close()


def decode_image(data: bytes, param: str, *, max_pixels: int) -> Image.Image:
    """Decode JPEG/PNG/WebP bytes into a fully loaded, upright RGB image.

    Checks, in order of cost: magic bytes, structural completeness, pixel count from the header
    (before any pixel is decoded), then decodes. EXIF orientation is applied, embedded ICC
    profiles are converted to sRGB where Pillow has LittleCMS, 16-bit greyscale is scaled (not
    clipped) to 8 bits, and transparency is flattened onto black (`FILL_COLOUR`). Blocking and
    CPU-bound: call it in a thread. Animated images give their first frame.
    """
    mime = require_supported(data, param, "got")
    check_complete(data, mime, param)
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
