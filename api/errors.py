"""The one place errors become OpenAI error objects with the right HTTP status."""

from __future__ import annotations

import logging

import orjson
import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from kombu.exceptions import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inferq.errors import ServiceError, broker_unavailable
from inferq.openai.common import validation_error

log = logging.getLogger(__name__)


def error_response(error: ServiceError) -> Response:
    return Response(
        orjson.dumps(error.body()),
        status_code=error.status,
        headers=error.headers,
        media_type="application/json",
    )


async def _service_error(_: Request, exc: ServiceError) -> Response:
    return error_response(exc)


async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
    return error_response(validation_error(exc.errors()))


class BodyTooLarge(StarletteHTTPException):
    """A body that crossed its route's limit while it was read (:mod:`api.middleware`). An
    HTTPException, so that FastAPI's body parsing lets it through (it turns any other error
    into a 400); answered as ``error``."""

    def __init__(self, error: ServiceError):
        super().__init__(error.status, error.message)
        self.error = error


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    if isinstance(exc, BodyTooLarge):
        return error_response(exc.error)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    message = str(exc.detail)
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow") or (exc.headers or {}).get("allow")
        message = f"{request.method} is not allowed on {request.url.path}"
        message += f"; use {allowed}" if allowed else ""
    elif exc.status_code == 404 and message == "Not Found":
        message = f"unknown URL: {request.method} {request.url.path}"
    return error_response(ServiceError(exc.status_code, message, code=code, headers=exc.headers))


async def _broker_error(_: Request, exc: Exception) -> Response:
    log.warning("Redis unavailable: %s", exc)
    return error_response(broker_unavailable())


# Replies of a Redis that cannot take writes just now (a replica, a master without the replicas
# `min-replicas-to-write` asks for, a failover in progress): the queue is unavailable, not broken.
UNAVAILABLE_REPLIES = ("READONLY", "NOREPLICAS", "MASTERDOWN", "LOADING", "TRYAGAIN")


def _refused(exc: Exception) -> bool:
    if isinstance(exc, redis.exceptions.ReadOnlyError):
        return True
    # A pipeline's error reads "Command # 4 (HSET ...) of pipeline caused error: ('NOREPLICAS..."
    reply = str(exc).rpartition("caused error: ")[2].lstrip("('\"")
    return reply.startswith(UNAVAILABLE_REPLIES)


async def _redis_reply(request: Request, exc: Exception) -> Response:
    if _refused(exc):
        return await _broker_error(request, exc)
    raise exc  # any other error reply is a bug: the catch-all makes it a logged 500


class UnexpectedErrors:
    """An exception no handler took becomes a 500 error object, and the connection stays
    usable. (An ``Exception`` handler runs in Starlette's ``ServerErrorMiddleware``, which
    answers and then re-raises, and uvicorn closes a keep-alive connection whose app raised:
    the client's next request on it was reset.) Once a response has started nothing can be
    said any more: the error goes on and the connection is closed, as it must be."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception:
            if started:
                raise
            log.exception("unhandled error")
            error = ServiceError(500, "internal server error", code="internal_error")
            await error_response(error)(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(redis.exceptions.ConnectionError, _broker_error)
    app.add_exception_handler(redis.exceptions.TimeoutError, _broker_error)
    app.add_exception_handler(OperationalError, _broker_error)
    app.add_exception_handler(redis.exceptions.ResponseError, _redis_reply)
    # innermost of the middlewares: metrics and request ids see its 500s
    app.add_middleware(UnexpectedErrors)
