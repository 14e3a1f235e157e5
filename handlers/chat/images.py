"""Images in chat messages: ``data:`` URIs decoded into RGB ``PIL.Image`` objects."""

from __future__ import annotations

import base64
import binascii
import io
import re

from handlers.base import InvalidInput

_DATA_URI = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*),(?P<data>.*)$", re.S
)


def _invalid_url(message: str) -> InvalidInput:
    return InvalidInput(message, param="messages", code="invalid_image_url")


def load_image_from_data_uri(uri: str):
    """Decode a ``data:image/...;base64,...`` URI into an RGB ``PIL.Image``.

    Any other scheme (http, file, ...) raises :class:`InvalidInput`: fetching remote images
    is the worker's decision, made before the handler is called.
    """
    from PIL import Image, UnidentifiedImageError

    if not isinstance(uri, str) or not uri.startswith("data:"):
        scheme = uri.split(":", 1)[0] if isinstance(uri, str) and ":" in uri else "none"
        raise _invalid_url(
            f"only data: URIs with base64 images are accepted here (got scheme '{scheme}')"
        )
    match = _DATA_URI.match(uri)
    if match is None or ";base64" not in match["params"]:
        raise _invalid_url("malformed image data URI: expected data:image/<type>;base64,<data>")
    mime = match["mime"] or ""
    if mime and not mime.startswith("image/"):
        raise _invalid_url(f"data URI is '{mime}', not an image")
    try:
        raw = base64.b64decode(re.sub(r"\s+", "", match["data"]), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _invalid_url(f"image data URI is not valid base64: {exc}") from exc
    try:
        with Image.open(io.BytesIO(raw)) as image:
            image.load()
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as exc:
        raise InvalidInput(
            f"could not decode image: {exc}", param="messages", code="invalid_image"
        ) from exc
