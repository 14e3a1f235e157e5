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


async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return error_response(
        ServiceError(exc.status_code, str(exc.detail), code=code, headers=exc.headers)
    )


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


async def _unexpected(_: Request, exc: Exception) -> Response:
    log.exception("unhandled error")
    return error_response(ServiceError(500, "internal server error", code="internal_error"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(redis.exceptions.ConnectionError, _broker_error)
    app.add_exception_handler(redis.exceptions.TimeoutError, _broker_error)
    app.add_exception_handler(OperationalError, _broker_error)
    app.add_exception_handler(redis.exceptions.ResponseError, _redis_reply)
    app.add_exception_handler(Exception, _unexpected)
