"""Input images: fetching (`fetch.py`), strict decoding (`decode.py`) and fitting to the output
frame (`fit.py`).

Clients name their first/last frame by an http(s) URL, which this server fetches through the
SSRF guard (`net/`), or by a base64 `data:image/...` URL. Every problem with an image input is
an `ImageInputError`, whose message is safe to show the client: it names the field and says
what was wrong, without revealing what *our* resolver thinks internal names resolve to.
"""

from reelserve.media.images.decode import (
    FILL_COLOUR,
    SUPPORTED_MIMES,
    ImageInputError,
    decode_image,
    sniff_mime,
)
from reelserve.media.images.fetch import check_image_source, fetch_image, load_input_image
from reelserve.media.images.fit import fit_image, upload_image
from reelserve.net.guard import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, MIB, FetchPolicy

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "FILL_COLOUR",
    "MIB",
    "SUPPORTED_MIMES",
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
