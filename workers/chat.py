"""Serving ``/v1/chat/completions`` jobs: one scheduler thread per local chat model.

Continuous batching. Job threads (Celery pool threads) ``submit`` a :class:`ChatRequest` and
wait on a future; the model's :class:`ChatScheduler` thread drives one
:class:`handlers.chat.ChatBatch`: before every decoding step it admits waiting requests (most
urgent priority first, up to the handler's ``max_batch_size``), prefilling them together and
merging them into the running batch; every step advances all running requests by one token,
and a request that ends (EOS, stop string, ``max_tokens``, cancellation, error) leaves at once,
its slot free for the next one. Each request keeps its own sampling parameters, stop strings,
``max_tokens`` and cancel event, so cancelling one job never ends another. Bulk requests (batch
files) never take the last ``reserved_rows`` rows: an interactive request arriving while a
batch file runs joins at the next step instead of waiting for a bulk generation to end.

Streaming. Each new piece of text becomes a ``delta`` entry on the job's Redis Stream, written
by the job's event writer (:mod:`workers.events`) off the decoding path: the scheduler thread
only appends to an in-memory queue.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from handlers.base import Cancelled
from handlers.chat import ChatRequest
from inferq import protocol as p
from inferq.errors import ServiceError
from inferq.limits import chat_char_limit, check_chat_chars
from inferq.openai.chat import ChatJob, completion_body, token_biases
from inferq.openai.common import usage
from inferq.openai.logprobs import chat_logprobs
from inferq.openai.sampling import choice_seed
from inferq.settings import Settings
from workers.images import inline_remote_images
from workers.jobs import JobContext
from workers.proxy import serve_proxy_chat

if TYPE_CHECKING:  # the registry imports the serving modules
    from workers.loaded import LoadedModel

log = logging.getLogger(__name__)


# --- the scheduler ----------------------------------------------------------------------------


@dataclass
class _Ticket:
    request: ChatRequest
    bulk: bool = False
    future: Future = field(default_factory=Future)


@dataclass
class SchedulerStats:
    steps: int = 0  # decoding steps (one forward pass each)
    prefills: int = 0  # prefill passes (each admits one or more requests)
    admitted: int = 0  # requests admitted
    row_steps: int = 0  # sum over steps of the rows they advanced
    max_rows: int = 0  # largest batch seen


class ChatScheduler:
    """Continuous batching of one chat model's requests (see the module docstring)."""

    def __init__(
        self,
        handler,
        *,
        name: str = "",
        max_batch_size: int | None = None,
        reserved_rows: int = 1,
    ):
        self.handler = handler
        self.name = name
        self.max_batch_size = max(1, max_batch_size or getattr(handler, "max_batch_size", 8))
        # rows bulk requests may hold; the rest stay free for interactive ones
        self.bulk_rows = max(1, self.max_batch_size - reserved_rows)
        self.stats = SchedulerStats()
        self._pending: list[tuple[int, int, _Ticket]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"chat:{name}", daemon=True)
        self._thread.start()

    def submit(self, request: ChatRequest, *, priority: int = 0) -> Future:
        """Queue a request; the future gives its ChatGeneration or raises what ended it."""
        ticket = _Ticket(request, bulk=priority >= p.Priority.BULK)
        with self._cond:
            if self._stopped:
                raise RuntimeError(f"chat scheduler {self.name} is stopped")
            heapq.heappush(self._pending, (priority, next(self._seq), ticket))
            self._cond.notify()
        return ticket.future

    def warm_up(self) -> None:
        request = ChatRequest(messages=[{"role": "user", "content": "warm up"}], max_new_tokens=2)
        self.submit(request).result()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _admit(self, batch) -> list[_Ticket]:
        """Waiting tickets for the free slots (called with the lock held)."""
        admitted: list[_Ticket] = []
        if not batch.joinable:
            return admitted
        room = self.max_batch_size - len(batch)
        bulk_room = self.bulk_rows - sum(1 for row in batch.rows if row.key.bulk)
        while self._pending and len(admitted) < room:
            ticket = self._pending[0][2]
            if ticket.bulk and bulk_room <= 0:
                break  # the heap is in priority order: only bulk tickets are left
            heapq.heappop(self._pending)
            if not ticket.future.done():
                admitted.append(ticket)
                bulk_room -= ticket.bulk
        return admitted

    def _run(self) -> None:
        batch = self.handler.new_batch()
        while True:
            with self._cond:
                while not self._stopped and not self._pending and not len(batch):
                    self._cond.wait()
                if self._stopped:
                    self._fail_all(batch, RuntimeError("the worker is stopping"))
                    return
                admitted = self._admit(batch)
            try:
                if admitted:
                    self.stats.prefills += 1
                    self.stats.admitted += len(admitted)
                    self._resolve(batch.add([(t, t.request) for t in admitted]))
                if len(batch):
                    self.stats.steps += 1
                    self.stats.row_steps += len(batch)
                    self.stats.max_rows = max(self.stats.max_rows, len(batch))
                    self._resolve(batch.step())
            except Exception as exc:  # a bug in the loop must not kill the model's thread
                log.exception("chat scheduler %s: decoding loop failed", self.name)
                for ticket in admitted:
                    if not ticket.future.done():
                        ticket.future.set_exception(exc)
                self._fail_all(batch, exc)
                batch = self.handler.new_batch()

    @staticmethod
    def _resolve(ended: list[tuple[_Ticket, Any]]) -> None:
        for ticket, result in ended:
            if ticket.future.done():
                continue
            if isinstance(result, BaseException):
                ticket.future.set_exception(result)
            else:
                ticket.future.set_result(result)

    def _fail_all(self, batch, error: Exception) -> None:
        for row in batch.rows:
            if not row.key.future.done():
                row.key.future.set_exception(error)
        batch.rows.clear()
        while self._pending:
            _, _, ticket = heapq.heappop(self._pending)
            if not ticket.future.done():
                ticket.future.set_exception(error)


# --- serving a request ------------------------------------------------------------------------


def generation_params(job: ChatJob, defaults: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Sampling parameters: the request's, else the model entry's ``defaults``, else OpenAI's."""

    def pick(name: str, fallback: Any) -> Any:
        value = getattr(job, name)
        return value if value is not None else defaults.get(name, fallback)

    stop = job.stop if job.stop is not None else defaults.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    return {
        "max_new_tokens": int(pick("max_tokens", settings.chat_default_max_tokens)),
        # the client's max_tokens must fit the context with the prompt; a default is cut to it
        "strict_max_tokens": job.max_tokens is not None,
        "temperature": float(pick("temperature", 1.0)),
        "top_p": float(pick("top_p", 1.0)),
        "stop": list(stop) if stop else None,
        "seed": job.seed,
        "logit_bias": token_biases(job.logit_bias),
        "logprobs": job.logprobs,
        **job.sampling_extensions(),
    }


def gather(futures: list[Future]) -> Future:
    """One future for several: the list of their results, or the first exception."""
    combined: Future = Future()
    left = [len(futures)]
    lock = threading.Lock()

    def done(future: Future) -> None:
        with lock:
            if combined.done():
                return
            if future.exception() is not None:
                combined.set_exception(future.exception())
                return
            left[0] -= 1
            if not left[0]:
                combined.set_result([f.result() for f in futures])

    for future in futures:
        future.add_done_callback(done)
    return combined


def submit(
    job: ChatJob,
    model: LoadedModel,
    settings: Settings,
    *,
    cancel_event: threading.Event,
    priority: int,
    on_text: Callable[..., None] | None = None,
    on_tool_calls: Callable[..., None] | None = None,
) -> Future:
    """Queue ``job`` in the model's scheduler (remote images fetched first); the future gives
    the list of its ``n`` choices' :class:`handlers.base.ChatGeneration`. Used by jobs and
    batch lines alike. ``on_text(text, logprobs=None, index=0)`` gets each choice's deltas."""
    if model.batcher is None:
        raise ServiceError(
            500, f"model '{model.name}' has no chat scheduler", code="internal_error"
        )
    context = getattr(model.handler, "context_length", None)
    check_chat_chars(job.messages, chat_char_limit(settings.max_chat_chars, context))
    messages = inline_remote_images(job.messages, settings) if job.remote_images else job.messages
    params = generation_params(job, model.handler.generation_defaults, settings)
    return submit_choices(
        model.batcher,
        job.n,
        on_text,
        priority,
        messages=messages,
        cancel_event=cancel_event,
        response_format=job.response_format,
        tools=job.tools,
        tool_choice=job.tool_choice,
        parallel_tool_calls=job.parallel_tool_calls,
        on_tool_calls=on_tool_calls,
        **params,
    )


def submit_choices(batcher, n: int, on_text, priority: int, **request: Any) -> Future:
    """``n`` rows for one request, submitted together (so they are prefilled in one pass
    when there is room), each with its own seed (:func:`choice_seed`) and choice index."""
    futures = []
    for index in range(n):
        choice_text = None
        if on_text is not None:
            choice_text = on_text if index == 0 else _indexed(on_text, index)
        on_calls = request.get("on_tool_calls")
        if on_calls is not None and index:
            on_calls = _indexed_calls(on_calls, index)
        row = ChatRequest(
            **{
                **request,
                "seed": choice_seed(request.get("seed"), index),
                "on_tool_calls": on_calls,
            },
            on_text=choice_text,
        )
        futures.append(batcher.submit(row, priority=priority))
    return gather(futures)


def _indexed(on_text: Callable[..., None], index: int) -> Callable[..., None]:
    return lambda text, logprobs=None: on_text(text, logprobs, index=index)


def _indexed_calls(on_tool_calls: Callable[..., None], index: int) -> Callable[..., None]:
    return lambda calls: on_tool_calls(calls, index=index)


def completion(job: ChatJob, model: LoadedModel, generations, job_id: str) -> dict[str, Any]:
    """The ``chat.completion`` body of finished generations, one per choice (``id`` from
    ``job_id``); usage counts the prompt once and every choice's tokens, as OpenAI does."""
    if not isinstance(generations, list):
        generations = [generations]
    created = job.created or int(time.time())
    bodies = []
    for generation in generations:
        if isinstance(generation, Cancelled):  # pragma: no cover - futures raise it instead
            raise generation
        bodies.append(
            completion_body(
                job_id,
                model.name,
                created,
                generation.text,
                generation.finish_reason,
                generation.prompt_tokens,
                generation.completion_tokens,
                tool_calls=generation.tool_calls,
            )
        )
    body = bodies[0]
    body["choices"] = [
        {
            **other["choices"][0],
            "index": index,
            "logprobs": chat_logprobs(generation.logprobs if job.logprobs is not None else None),
        }
        for index, (other, generation) in enumerate(zip(bodies, generations, strict=True))
    ]
    body["usage"] = usage(
        generations[0].prompt_tokens, sum(g.completion_tokens for g in generations)
    )
    return body


def serve_chat(ctx: JobContext, model: LoadedModel) -> bytes:
    """A ``chat.completion`` for the job's request (validated by the API)."""
    if model.upstream:
        return serve_proxy_chat(ctx, model)
    job = ChatJob.parse(ctx.request)
    if job.seed is None:  # a redelivered job samples the same text again (workers.events.Resume)
        job.seed = int.from_bytes(hashlib.blake2b(ctx.job_id.encode(), digest_size=7).digest())
    future = submit(
        job,
        model,
        ctx.runtime.settings,
        cancel_event=ctx.cancel_event,
        priority=ctx.priority,
        on_text=ctx.events.delta,
        on_tool_calls=ctx.events.tool_calls,
    )
    return p.dumps(completion(job, model, ctx.wait(future), ctx.job_id))
