"""Serving jobs of upstream proxy models (``handlers/proxy.py``): forward, pass the answer on.

A proxy job runs in its job thread (no batching: the upstream batches). A streamed chat
request's upstream chunks go verbatim onto the job's event stream as ``chunk`` entries, which
the API relays to its client as they come; the job's result is the merged completion.
Upstream errors become the client's errors in :func:`workers.jobs.as_service_error`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from inferq.openai.chat import ProxyChatJob
from inferq.openai.embeddings import EmbeddingJob
from workers.jobs import JobContext

if TYPE_CHECKING:  # the registry imports the serving modules
    from workers.loaded import LoadedModel


def serve_proxy_chat(ctx: JobContext, model: LoadedModel) -> bytes:
    job = ProxyChatJob.parse(ctx.request)
    return model.handler.chat(
        job.upstream_body, on_chunk=ctx.events.chunk, cancel_event=ctx.cancel_event
    )


def serve_proxy_embeddings(ctx: JobContext, model: LoadedModel) -> bytes:
    return model.handler.embeddings(EmbeddingJob.parse(ctx.request).upstream_body())
