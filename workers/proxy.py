"""Serving jobs of upstream proxy models (``handlers/proxy.py``): forward, pass the answer on.

A proxy job runs in its job thread (no batching: the upstream batches). A streamed chat
request's upstream chunks go verbatim onto the job's event stream as ``chunk`` entries, which
the API relays to its client as they come; the job's result is the merged completion.
"""

from __future__ import annotations

from typing import Any

from handlers.proxy import UpstreamError, UpstreamTimeout
from inferq.errors import ServiceError
from workers.chat import JobEvents, publisher
from workers.jobs import JobContext
from workers.registry import LoadedModel


def service_error(exc: UpstreamError) -> ServiceError:
    if isinstance(exc, UpstreamTimeout):
        return ServiceError(504, exc.message, code="upstream_timeout")
    code = "upstream_error" if exc.status >= 500 else "upstream_rejected"
    return ServiceError(exc.status, exc.message, code=code)


def serve_proxy_chat(ctx: JobContext, model: LoadedModel) -> bytes:
    body = ctx.request["upstream_body"]
    events = JobEvents(publisher(ctx.runtime.redis), ctx.job_id)
    try:
        result = model.handler.chat(body, on_chunk=events.chunk, cancel_event=ctx.cancel_event)
    except UpstreamError as exc:
        raise service_error(exc) from None
    finally:
        events.flush()
    return result


def upstream_embeddings_body(request: dict[str, Any]) -> dict[str, Any]:
    """What goes upstream for a normalized embeddings request."""
    body = {"input": request["input"], "encoding_format": request["encoding_format"]}
    if request.get("dimensions") is not None:
        body["dimensions"] = request["dimensions"]
    return body


def serve_proxy_embeddings(ctx: JobContext, model: LoadedModel) -> bytes:
    try:
        return model.handler.embeddings(upstream_embeddings_body(ctx.request))
    except UpstreamError as exc:
        raise service_error(exc) from None
