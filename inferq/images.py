"""The remote-image policy of vision requests, shared by the API (early 400) and the workers.

``data:`` URIs are always accepted. ``http(s)`` URLs only when ``ALLOW_REMOTE_IMAGES`` is on
and the host is in ``REMOTE_IMAGE_HOSTS`` (an exact host name, or ``.example.com`` for the
domain and its subdomains). The worker fetches them (``workers/images.py``) with further
checks: no private addresses, size and MIME limits, every redirect re-checked.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from inferq.settings import Settings


def host_allowed(host: str, allowed: list[str]) -> bool:
    host = host.lower().rstrip(".")
    for item in allowed:
        item = item.strip().lower().rstrip(".")
        if not item:
            continue
        if item.startswith("."):
            if host == item[1:] or host.endswith(item):
                return True
        elif host == item:
            return True
    return False


def remote_image_problem(url: str, settings: Settings) -> str | None:
    """Why an image URL may not be used, or None when it may (data: URIs always may)."""
    if not isinstance(url, str) or not url:
        return "image_url.url must be a non-empty string"
    if url.startswith("data:"):
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return f"image URLs must be data: URIs or http(s) URLs (got scheme '{parts.scheme}')"
    if not settings.allow_remote_images:
        return "remote image URLs are disabled on this server (send a data: URI instead)"
    if not parts.hostname or not host_allowed(parts.hostname, settings.remote_image_hosts):
        return f"image host '{parts.hostname}' is not in REMOTE_IMAGE_HOSTS"
    if parts.username or parts.password:
        return "image URLs must not carry credentials"
    return None
