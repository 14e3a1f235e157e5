"""API keys: ``Authorization: Bearer <key>`` on every route but health, readiness and metrics.

Each key is its own tenant: jobs, files and batches are owned by a hash of the key that
created them and are invisible (404) to other keys. Keys are compared in constant time and
never logged. With no keys configured the service is open (and says so at start-up).
"""

from __future__ import annotations

import hashlib
import hmac

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

ANONYMOUS_OWNER = "anonymous"
PUBLIC_PATHS = frozenset({"/health", "/ready", "/metrics", "/docs", "/redoc", "/openapi.json"})


def owner_of(key: str) -> str:
    """A stable, non-reversible id for a key (what job and file records store)."""
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:24]


class APIKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: list[str]):
        self.app = app
        self.keys = [(k.encode(), owner_of(k)) for k in keys]

    def _match(self, presented: bytes) -> str | None:
        owner = None
        for key, key_owner in self.keys:  # compare with every key: time does not tell which
            if hmac.compare_digest(presented, key):
                owner = key_owner
        return owner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        if not self.keys or scope["path"] in PUBLIC_PATHS:
            state["owner"] = ANONYMOUS_OWNER
            await self.app(scope, receive, send)
            return
        presented = [value for name, value in scope["headers"] if name == b"authorization"]
        if len(presented) > 1:  # which one counts would depend on the proxy in front: none
            await _unauthorized(
                send, missing=False, message="Send exactly one Authorization header."
            )
            return
        header = presented[0] if presented else b""
        scheme, _, token = header.partition(b" ")
        owner = self._match(token.strip()) if scheme.lower() == b"bearer" else None
        if owner is None:
            await _unauthorized(send, missing=not header)
            return
        state["owner"] = owner
        await self.app(scope, receive, send)


async def _unauthorized(send: Send, *, missing: bool, message: str | None = None) -> None:
    message = message or (
        "Missing API key: send 'Authorization: Bearer <key>'."
        if missing
        else "Incorrect API key provided."
    )
    body = orjson.dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        }
    )
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b"Bearer"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
