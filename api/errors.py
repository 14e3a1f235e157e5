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

log = logging.getLogger(__name__)


def error_response(error: ServiceError) -> Response:
    return Response(
        orjson.dumps(error.body()),
        status_code=error.status,
        headers=error.headers,
        media_type="application/json",
    )


def _validation_location(loc: tuple) -> list[str]:
    # FastAPI puts where the value came from first ("body", "query", "path", "header").
    parts = [
        str(p) for p in (loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc)
    ]
    # Drop pydantic's union branch names (e.g. "str", "list[str]", "RerankDocument").
    return [
        p
        for p in parts
        if not any(c in p for c in "[]") and not p[:1].isupper() and p not in ("str", "int")
    ]


async def _service_error(_: Request, exc: ServiceError) -> Response:
    return error_response(exc)


async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    location = _validation_location(tuple(first.get("loc", ())))
    param = location[0] if location else None  # the top-level field, as OpenAI names it
    where = ".".join(location)
    if first.get("type") == "json_invalid":
        param, message = None, "the request body is not valid JSON"
    elif first.get("type") == "missing":
        message = f"missing required parameter '{where}'"
    else:
        message = f"invalid value for '{where}': {first.get('msg')}" if where else first["msg"]
    return error_response(ServiceError(400, message, param=param, code="invalid_value"))


async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return error_response(
        ServiceError(exc.status_code, str(exc.detail), code=code, headers=exc.headers)
    )


async def _broker_error(_: Request, exc: Exception) -> Response:
    log.warning("Redis unavailable: %s", exc)
    return error_response(broker_unavailable())


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
    app.add_exception_handler(Exception, _unexpected)
