"""How a batch part runs its lines, one class per endpoint family.

Each line's ``body`` is checked as the sync route checks it (``prepare``: a bad body becomes
that line's 400 in the error file, never the whole part's), then the valid lines run
**together**: every line's inputs in the model's batcher at once for embeddings and rerank
(a submission per line: their texts share forward passes, and a forward that fails on one
line's inputs fails that line alone), every line in the chat scheduler at once for chat
(bulk rows of the running batch), a few concurrent upstream calls for proxy models. ``run``
returns one outcome per line: a response body, a :class:`ServiceError` (the line failed) or
``None`` (stopped by a cancel or expiry before it ran: the line is left out of both files, as
OpenAI does).
"""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ClassVar

import orjson
from pydantic import BaseModel

from handlers.base import Cancelled
from inferq import protocol as p
from inferq.errors import ServiceError, bad_request, model_not_supported
from inferq.openai.chat import ChatCompletionRequest, ChatJob, check_chat_for_model
from inferq.openai.common import validated
from inferq.openai.completions import CompletionJob, CompletionRequest
from inferq.openai.embeddings import EmbeddingJob, EmbeddingRequest
from inferq.openai.rerank import RerankJob, RerankRequest
from inferq.settings import Settings
from workers import chat, completions, rerank
from workers.batching import batch_inputs
from workers.embeddings import check_dimensions, embeddings_response
from workers.jobs import StopWait, as_service_error

if TYPE_CHECKING:  # the registry imports the serving modules
    from workers.loaded import LoadedModel

Outcome = dict[str, Any] | ServiceError | None

PROXY_CONCURRENCY = 8  # upstream calls one part has in flight


def _run_lines(model: LoadedModel, jobs: list, inputs: list[list], stop, build) -> list[Outcome]:
    """Each line's ``inputs`` into the model's batcher at bulk priority, a submission per line
    (their inputs share passes; a forward failing on one line's fails that line alone), then
    each line's outcome: ``build(job, outputs, token lengths)``, its error, or ``None`` once
    stopped. The part is tokenised in one call; should that fail, line by line."""
    try:
        rows, lengths = batch_inputs(model.handler, [item for line in inputs for item in line])
        ends = list(itertools.accumulate(len(line) for line in inputs))
        tokenised = [
            (rows[end - len(line) : end], lengths[end - len(line) : end])
            for line, end in zip(inputs, ends, strict=True)
        ]
    except Exception:  # a line its handler cannot tokenise: it fails alone
        tokenised = [_tokenise(model, line) for line in inputs]
    futures = [
        t
        if isinstance(t, Exception)
        else model.batcher.submit(*t, priority=int(p.Priority.BULK), cancel_event=stop)
        for t in tokenised
    ]
    outcomes: list[Outcome] = []
    wait = StopWait(stop.is_set)  # once stopped, the part's lines give up together
    for job, line, future in zip(jobs, tokenised, futures, strict=True):
        if isinstance(future, Exception):  # the line could not be tokenised
            outcomes.append(as_service_error(future))
            continue
        try:
            outcomes.append(build(job, wait(future), line[1]))
        except Cancelled:
            outcomes.append(None)
        except Exception as exc:  # this line's own failure
            outcomes.append(as_service_error(exc))
    return outcomes


def _tokenise(model: LoadedModel, line: list) -> tuple[list, list[int]] | Exception:
    try:
        return batch_inputs(model.handler, line)
    except Exception as exc:
        return exc


class BatchLines:
    """One endpoint family's lines: ``prepare`` each body (the wire form of its job request),
    then ``run`` them all together."""

    schema: ClassVar[type[BaseModel]]

    def __init__(self, settings: Settings):
        self.settings = settings

    def parse(self, body: dict[str, Any]) -> Any:
        return validated(self.schema, body)

    def prepare(self, body: dict[str, Any], model: LoadedModel) -> dict[str, Any]:
        raise NotImplementedError

    def run(
        self, requests: list[dict[str, Any]], model: LoadedModel, stop: threading.Event
    ) -> list[Outcome]:
        raise NotImplementedError


class EmbeddingLines(BatchLines):
    schema = EmbeddingRequest

    def prepare(self, body, model):
        job = self.parse(body).normalized(
            max_inputs=self.settings.max_inputs_per_request,
            max_chars=self.settings.max_input_chars,
        )
        check_dimensions(job, model)
        job.model = model.name
        return job.wire()

    def run(self, requests, model, stop):
        jobs = [EmbeddingJob.parse(r) for r in requests]
        return _run_lines(
            model,
            jobs,
            [job.input for job in jobs],
            stop,
            lambda job, vectors, lengths: embeddings_response(job, model, vectors, sum(lengths)),
        )


class RerankLines(BatchLines):
    schema = RerankRequest

    def prepare(self, body, model):
        job = self.parse(body).normalized(
            max_documents=self.settings.max_rerank_documents,
            max_chars=self.settings.max_input_chars,
        )
        job.model = model.name
        return job.wire()

    def run(self, requests, model, stop):
        jobs = [RerankJob.parse(r) for r in requests]
        return _run_lines(
            model,
            jobs,
            [job.pairs() for job in jobs],
            stop,
            lambda job, scores, lengths: rerank.rerank_response(
                job, scores, sum(lengths), p.new_job_id()
            ),
        )


class ChatLines(BatchLines):
    """Every line of the part enters the model's chat scheduler at bulk priority at once."""

    schema = ChatCompletionRequest
    job_type: ClassVar[type] = ChatJob
    serving: ClassVar[Any] = chat  # the module with submit() and completion()

    def prepare(self, body, model):
        parsed = self.parse(body)
        if parsed.stream:
            raise bad_request("streaming is not available in batches", param="stream")
        job = parsed.normalized(max_stop=self.settings.chat_max_stop_sequences)
        job.model = model.name
        if self.schema is CompletionRequest:
            return job.wire()
        check_chat_for_model(
            job,
            model=model.name,
            structured_outputs=model.entry.structured_outputs(model.info),
            tool_parser=model.entry.tool_parser,
            capabilities=model.info.get("capabilities", []),
            settings=self.settings,
        )
        return job.wire()

    def run(self, requests, model, stop):
        jobs = [self.job_type.parse(r) for r in requests]
        futures: list[Any] = []
        for job in jobs:
            try:
                futures.append(
                    self.serving.submit(
                        job, model, self.settings, cancel_event=stop, priority=int(p.Priority.BULK)
                    )
                )
            except Exception as exc:  # e.g. a remote image that cannot be fetched
                futures.append(as_service_error(exc))
        outcomes: list[Outcome] = []
        wait = StopWait(stop.is_set)  # once stopped, the part's lines give up together
        for job, future in zip(jobs, futures, strict=True):
            if isinstance(future, ServiceError):
                outcomes.append(future)
                continue
            try:
                outcomes.append(self.serving.completion(job, model, wait(future), p.new_job_id()))
            except Cancelled:
                outcomes.append(None)
            except Exception as exc:
                outcomes.append(as_service_error(exc))
        return outcomes


class CompletionLines(ChatLines):
    """Text completion lines: every prompt's rows enter the chat scheduler, as chat lines do."""

    schema = CompletionRequest
    job_type = CompletionJob
    serving = completions


class ProxyLines(BatchLines):
    """Lines for an upstream proxy model: forwarded as they are, a few at a time."""

    def __init__(self, settings: Settings, endpoint: p.Endpoint):
        super().__init__(settings)
        self.endpoint = endpoint
        self.schema = PROXY_SCHEMAS[endpoint]

    def prepare(self, body, model):
        parsed = self.parse(body)
        if self.endpoint in (p.Endpoint.CHAT, p.Endpoint.COMPLETIONS):
            upstream = parsed.upstream_body()
            upstream.pop("stream_options", None)
            return {**upstream, "stream": False}
        job = parsed.normalized(
            max_inputs=self.settings.max_inputs_per_request,
            max_chars=self.settings.max_input_chars,
        )
        return job.upstream_body()

    def run(self, requests, model, stop):
        # looked up by name: a chat proxy has no ``embeddings`` (nor an embeddings proxy ``chat``)
        call = getattr(model.handler, PROXY_CALLS[self.endpoint])

        def forward(body: dict[str, Any]) -> Outcome:
            if stop.is_set():
                return None
            try:
                return orjson.loads(call(body))
            except Exception as exc:
                return as_service_error(exc)

        with ThreadPoolExecutor(min(PROXY_CONCURRENCY, len(requests))) as pool:
            return list(pool.map(forward, requests))


LINES: dict[p.Endpoint, type[BatchLines]] = {
    p.Endpoint.EMBEDDINGS: EmbeddingLines,
    p.Endpoint.RERANK: RerankLines,
    p.Endpoint.CHAT: ChatLines,
    p.Endpoint.COMPLETIONS: CompletionLines,
}
PROXY_CALLS: dict[p.Endpoint, str] = {  # the proxy handler's method for each endpoint
    p.Endpoint.CHAT: "chat",
    p.Endpoint.EMBEDDINGS: "embeddings",
    p.Endpoint.COMPLETIONS: "completions",
}
PROXY_SCHEMAS: dict[p.Endpoint, type[BaseModel]] = {
    p.Endpoint.CHAT: ChatCompletionRequest,
    p.Endpoint.EMBEDDINGS: EmbeddingRequest,
    p.Endpoint.COMPLETIONS: CompletionRequest,
}


def lines_for(endpoint: p.Endpoint, model: LoadedModel, settings: Settings) -> BatchLines:
    """The line runner of ``endpoint`` on ``model`` (the routes' 400 if the model does not
    serve it)."""
    if p.ENDPOINT_CAPABILITY[endpoint] not in model.info["capabilities"]:
        raise model_not_supported(model.name, endpoint.value)
    if model.upstream:
        if endpoint not in PROXY_SCHEMAS:
            raise model_not_supported(model.name, endpoint.value)
        return ProxyLines(settings, endpoint)
    return LINES[endpoint](settings)
