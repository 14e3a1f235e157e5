"""Plain ASGI middlewares: ``X-Request-ID`` (taken from the request or made up, echoed on the
response) and the declared-size limit of upload routes."""

from __future__ import annotations

import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import BodyTooLarge, error_response
from inferq.errors import ServiceError, bad_request
from inferq.logs import request_id_var

HEADER = b"x-request-id"


class RequestIdMiddleware:
    """Plain ASGI (no BaseHTTPMiddleware) so it costs microseconds per request."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(HEADER, b"").decode("latin-1")[:128]
        request_id = incoming or f"req_{uuid.uuid4().hex}"
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (HEADER, request_id.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


class DeclaredSizeLimit:
    """A 413 before the body is read when a request's ``Content-Length`` already says it is
    too large for its route (FastAPI would parse, and spool, a whole multipart form before
    the route could look); a ``Content-Length`` that is not a number is a 400. A body sent
    without one (chunked) is counted as it arrives: a 413 once it crosses the limit."""

    def __init__(self, app: ASGIApp, limits: dict[str, tuple[int, str | None, str]]):
        self.app = app
        self.limits = limits  # path -> (largest body in bytes, the error's param and code)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rule = self.limits.get(scope["path"]) if scope["type"] == "http" else None
        if rule is not None and scope["method"] == "POST":
            limit, param, code = rule
            declared = dict(scope["headers"]).get(b"content-length", b"")
            error = None
            if declared and not declared.isdigit():
                error = bad_request("Content-Length is not a number", param=None)
            elif declared and int(declared) > limit:
                error = ServiceError(
                    413,
                    f"the request body is larger than the {limit}-byte limit",
                    param=param,
                    code=code,
                )
            if error is not None:
                await error_response(error)(scope, receive, send)
                return
            if not declared:
                receive = _counted(receive, limit, param, code)
        await self.app(scope, receive, send)


def _counted(receive: Receive, limit: int, param: str | None, code: str) -> Receive:
    """``receive`` raising :class:`api.errors.BodyTooLarge` once the body passes ``limit``."""
    seen = 0

    async def counting() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(
                    ServiceError(
                        413,
                        f"the request body is larger than the {limit}-byte limit",
                        param=param,
                        code=code,
                    )
                )
        return message

    return counting
