"""Fetching remote images for vision requests (the policy is in ``inferq/images.py``).

Each hop is checked before it is made: scheme and allow-listed host, and every address the
host resolves to must be public (no loopback, private, link-local or reserved ranges). The
connection goes to the checked address (the host name is kept for the Host header and TLS
SNI/certificate checks), so a DNS answer cannot change between check and use. Redirects are
followed by hand, each re-checked, at most ``MAX_REDIRECTS``. The body must be an image MIME
type and at most ``REMOTE_IMAGE_MAX_BYTES``; it becomes a ``data:`` URI for the handler.
"""

from __future__ import annotations

import base64
import ipaddress
import socket
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from handlers.base import InvalidInput
from inferq.images import remote_image_problem
from inferq.settings import Settings

MAX_REDIRECTS = 3
IMAGE_TYPES = {"image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp"}
_REDIRECTS = {301, 302, 303, 307, 308}


def _reject(message: str) -> InvalidInput:
    return InvalidInput(message, param="messages", code="invalid_image_url")


def _checked_address(host: str, port: int, allow_private: bool) -> str:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise _reject(f"cannot resolve image host '{host}': {exc}") from exc
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    if not addresses:
        raise _reject(f"image host '{host}' has no address")
    if not allow_private:
        for address in addresses:
            if not address.is_global:
                raise _reject(f"image host '{host}' resolves to a non-public address")
    return str(addresses[0])


def fetch_image(url: str, settings: Settings, *, allow_private: bool = False) -> str:
    """The image at ``url`` as a ``data:`` URI, or :class:`InvalidInput` saying why not."""
    with httpx.Client(timeout=settings.remote_image_timeout_sec, follow_redirects=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            if problem := remote_image_problem(url, settings):
                raise _reject(problem)
            parts = urlsplit(url)
            host = parts.hostname or ""
            port = parts.port or (443 if parts.scheme == "https" else 80)
            address = _checked_address(host, port, allow_private)
            literal = f"[{address}]" if ":" in address else address
            target = urlunsplit(
                (parts.scheme, f"{literal}:{port}", parts.path or "/", parts.query, "")
            )
            host_header = host if parts.port is None else f"{host}:{parts.port}"
            extensions: dict[str, Any] = {"sni_hostname": host} if parts.scheme == "https" else {}
            try:
                with client.stream(
                    "GET",
                    target,
                    headers={"Host": host_header, "Accept": "image/*"},
                    extensions=extensions,
                ) as response:
                    if response.status_code in _REDIRECTS and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise _reject(f"fetching the image gave HTTP {response.status_code}")
                    mime = response.headers.get("content-type", "").split(";")[0].strip().lower()
                    if mime not in IMAGE_TYPES:
                        raise _reject(f"the URL is not an image (content type '{mime}')")
                    limit = settings.remote_image_max_bytes
                    declared = response.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > limit:
                        raise _reject(f"the image is larger than {limit} bytes")
                    body = bytearray()
                    for chunk in response.iter_bytes():
                        body += chunk
                        if len(body) > limit:
                            raise _reject(f"the image is larger than {limit} bytes")
            except httpx.HTTPError as exc:
                raise _reject(f"cannot fetch the image: {exc!r}") from exc
            return f"data:{mime};base64,{base64.b64encode(bytes(body)).decode('ascii')}"
    raise _reject(f"too many redirects (more than {MAX_REDIRECTS})")


def inline_remote_images(messages: list[dict[str, Any]], settings: Settings) -> list[dict]:
    """The messages with every http(s) ``image_url`` replaced by the fetched ``data:`` URI."""
    result = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            result.append(message)
            continue
        parts = []
        for part in content:
            image = part.get("image_url") if isinstance(part, dict) else None
            url = image.get("url") if isinstance(image, dict) else image
            if (
                part.get("type") == "image_url"
                and isinstance(url, str)
                and not url.startswith("data:")
            ):
                inlined = fetch_image(url, settings)
                part = {
                    **part,
                    "image_url": {**(image if isinstance(image, dict) else {}), "url": inlined},
                }
            parts.append(part)
        result.append({**message, "content": parts})
    return result
