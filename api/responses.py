"""Turning job records into HTTP responses (shared by the sync routes and the job API)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import orjson
from fastapi import Response
from pydantic import BaseModel

from inferq import protocol as p
from inferq.errors import ServiceError
from inferq.openai.common import validated


def _timestamp(record: dict[str, Any], field: p.JobField) -> int | None:
    value = record.get(field)
    return int(float(value)) if value else None


def _json_field(record: dict[str, Any], field: p.JobField) -> Any:
    value = record.get(field)
    return p.loads(value) if value else None


def parse_body(schema: type[BaseModel], body: dict[str, Any]) -> Any:
    """Validate a job's ``body`` with a route's schema; errors name ``body.<field>``."""
    return validated(schema, body, under="body")


def job_error(record: dict[str, Any]) -> ServiceError | None:
    stored = _json_field(record, p.JobField.ERROR)
    return ServiceError.from_record(stored) if stored else None


def render_job(record: dict[str, Any]) -> dict[str, Any]:
    """The public job object. The stored result is embedded as-is (never re-parsed)."""
    result = record.get(p.JobField.RESULT)
    error = job_error(record)
    return {
        "id": record[p.JobField.ID].decode(),
        "object": "job",
        "endpoint": record[p.JobField.ENDPOINT].decode(),
        "model": record[p.JobField.MODEL].decode(),
        "status": record[p.JobField.STATUS].decode(),
        "created_at": _timestamp(record, p.JobField.CREATED_AT),
        "started_at": _timestamp(record, p.JobField.STARTED_AT),
        "finished_at": _timestamp(record, p.JobField.FINISHED_AT),
        "progress": _json_field(record, p.JobField.PROGRESS),
        "result": orjson.Fragment(result) if result else None,
        "error": error.body()["error"] if error else None,
        "metadata": _json_field(record, p.JobField.METADATA) or {},
    }


def list_response(
    page: tuple[list[Any], bool], render: Callable[[Any], dict[str, Any]]
) -> Response:
    """A page ``(records, has_more)`` as an OpenAI list of rendered records (``first_id`` and
    ``last_id`` for cursor pagination)."""
    records, has_more = page
    data = [render(r) for r in records]
    return json_response(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": has_more,
        }
    )


def json_response(content: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type="application/json")


def sync_response(record: dict[str, Any]) -> Response:
    """A finished sync job as its route's response: the stored body or the stored error."""
    status = record[p.JobField.STATUS].decode()
    job_id = record[p.JobField.ID].decode()
    if status == p.JobStatus.SUCCEEDED:
        return Response(
            record[p.JobField.RESULT], media_type="application/json", headers={"X-Job-ID": job_id}
        )
    if status == p.JobStatus.CANCELLED:
        raise ServiceError(
            409, "the request was cancelled before it finished", code="cancelled", final=True
        )
    raise job_error(record) or ServiceError(500, "the job failed", code="internal_error")


def job_not_found(job_id: str) -> ServiceError:
    return ServiceError(
        404, f"no job '{job_id}' (unknown or expired)", param="job_id", code="job_not_found"
    )


SAFE_NAME_CHARS = " ._-+()[]@,"  # kept in the ASCII fallback name: none of them ends a parameter


def attachment(filename: str) -> str:
    """``Content-Disposition`` for downloading ``filename`` (RFC 6266): an ASCII fallback with
    every character but letters, digits and ``SAFE_NAME_CHARS`` replaced by ``_``, and,
    when that changed anything, the exact name as RFC 5987 ``filename*`` (UTF-8,
    percent-encoded). No character of the name can end the parameter or the header."""
    fallback = "".join(
        c if c.isascii() and (c.isalnum() or c in SAFE_NAME_CHARS) else "_" for c in filename
    )
    value = f'attachment; filename="{fallback or "download"}"'
    if fallback != filename:
        encoded = quote(filename.encode("utf-8", "replace"), safe="")
        value += f"; filename*=UTF-8''{encoded}"
    return value
