"""Fitting input images to the output frame (pad or crop), and re-encoding them for an
upstream that takes the image itself."""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from reelserve.media.images.decode import (
    FILL_COLOUR,
    ImageInputError,
    decode_image,
    size_text,
    sniff_mime,
)
from reelserve.net.guard import DEFAULT_MAX_PIXELS, MIB


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
            f"the image is {size_text(buffer.tell())} even as a JPEG; the upstream takes at most "
            f"{size_text(max_bytes)}",
            "image",
        )
    return buffer.getvalue(), "image/jpeg"
