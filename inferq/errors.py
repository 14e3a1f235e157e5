"""OpenAI-style error objects, shared by the API (HTTP responses) and workers (failed jobs)."""

from __future__ import annotations

from typing import Any

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class ServiceError(Exception):
    """An error that reaches the client as ``{"error": {message, type, param, code}}``.

    ``final``: the answer would be the same on a retry, or a retry would run minutes of work
    again (a job that ran past its time limit, a cancelled job, a batch past cancelling). The
    response then carries ``x-should-retry: false``, which the OpenAI SDKs obey instead of
    retrying 409s and 5xx on their own.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
        final: bool = False,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or _TYPE_BY_STATUS.get(status, "server_error")
        self.final = final
        self._headers = dict(headers or {})

    @property
    def headers(self) -> dict[str, str]:
        """The response headers: the given ones, and ``x-should-retry: false`` if final."""
        return {**self._headers, "x-should-retry": "false"} if self.final else self._headers

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_record(self) -> dict[str, Any]:
        """What a failed job stores: the HTTP status beside the error object."""
        record = {"status": self.status, **self.body()}
        return {**record, "final": True} if self.final else record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ServiceError:
        err = record.get("error") or {}
        return cls(
            int(record.get("status", 500)),
            err.get("message", "unknown error"),
            code=err.get("code"),
            param=err.get("param"),
            type=err.get("type"),
            final=bool(record.get("final")),
        )


def bad_request(
    message: str, *, param: str | None = None, code: str = "invalid_value"
) -> ServiceError:
    return ServiceError(400, message, param=param, code=code)


def model_not_found(model: str) -> ServiceError:
    return ServiceError(
        404,
        f"The model '{model}' does not exist in this deployment's catalog.",
        param="model",
        code="model_not_found",
    )


def model_not_supported(model: str, endpoint: str) -> ServiceError:
    """A served model asked for an endpoint it does not serve (an embedding model reranking)."""
    return ServiceError(
        400, f"model '{model}' does not serve {endpoint}", param="model", code="model_not_supported"
    )


def no_live_worker(model: str) -> ServiceError:
    return ServiceError(
        503,
        f"The model '{model}' is in the catalog but no worker serving it is running; "
        f"start one with MODELS={model} python -m workers.",
        param="model",
        code="model_not_loaded",
        headers={"Retry-After": "5"},
    )


def server_shutting_down() -> ServiceError:
    return ServiceError(
        503,
        "The server is shutting down and stopped waiting for this request's job (cancelled); "
        "retry it.",
        code="server_shutting_down",
        headers={"Retry-After": "1"},
    )


def broker_unavailable() -> ServiceError:
    return ServiceError(
        503,
        "The job queue (Redis) is unreachable; try again shortly.",
        code="broker_unavailable",
        headers={"Retry-After": "2"},
    )
