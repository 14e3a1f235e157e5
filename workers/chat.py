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

Streaming. Each new piece of text becomes a ``delta`` entry on the job's Redis Stream
(:func:`inferq.protocol.events_key`). The scheduler thread only appends to an in-memory queue;
an :class:`EventPublisher` thread writes the entries with pipelined ``XADD``s, off the
decoding path. Before a job's result is stored (which appends the terminal status entry), the
job thread waits until its deltas are written, so the stream is always in order.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import redis

from handlers.base import Cancelled
from handlers.chat import ChatRequest
from inferq import protocol as p
from inferq.errors import ServiceError
from inferq.settings import Settings
from workers.jobs import JobContext
from workers.registry import LoadedModel

log = logging.getLogger(__name__)

CANCEL_POLL_SEC = 1.0  # a job thread re-reads its status this often (lost cancel messages)


# --- events -----------------------------------------------------------------------------------


class EventPublisher:
    """Appends job events to their Redis Streams from one background thread, pipelined."""

    def __init__(self, client: redis.Redis):
        self.redis = client
        self._items: list[tuple[str, dict[str, Any]]] = []
        self._cond = threading.Condition()
        self._queued = 0
        self._written = 0
        self._thread = threading.Thread(target=self._run, name="event-publisher", daemon=True)
        self._thread.start()

    def publish(self, job_id: str, event: p.EventType, data: Any, *, raw: bool = False) -> int:
        """Queue one entry (``data`` is JSON-encoded unless ``raw``); returns its sequence."""
        fields = {"event": event.value, "data": data} if raw else p.event_fields(event, data)
        with self._cond:
            self._queued += 1
            self._items.append((p.events_key(job_id), fields))
            self._cond.notify_all()
            return self._queued

    def wait_written(self, seq: int, timeout: float = 30.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._written >= seq, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._items))
                items, self._items = self._items, []
                upto = self._queued
            try:
                pipe = self.redis.pipeline(transaction=False)
                for key, fields in items:
                    pipe.xadd(key, fields, nomkstream=True)
                pipe.execute()
            except redis.RedisError as exc:  # events are best effort; results are not
                log.warning("could not write %d job events: %s", len(items), exc)
            with self._cond:
                self._written = upto
                self._cond.notify_all()


_publisher: EventPublisher | None = None
_publisher_lock = threading.Lock()


def publisher(client: redis.Redis) -> EventPublisher:
    global _publisher
    with _publisher_lock:
        if _publisher is None:
            _publisher = EventPublisher(client)
        return _publisher


class JobEvents:
    """One job's writer: ``delta``/``chunk`` from any thread, ``flush`` before finishing."""

    def __init__(self, events: EventPublisher, job_id: str):
        self.events = events
        self.job_id = job_id
        self.last = 0

    def delta(self, text: str) -> None:
        self.last = self.events.publish(self.job_id, p.EventType.DELTA, {"content": text})

    def chunk(self, data: str) -> None:
        self.last = self.events.publish(self.job_id, p.EventType.CHUNK, data, raw=True)

    def flush(self) -> None:
        if self.last:
            self.events.wait_written(self.last)


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


# --- serving a job ----------------------------------------------------------------------------


def generation_params(
    request: dict[str, Any], defaults: dict[str, Any], settings: Settings
) -> dict[str, Any]:
    """Sampling parameters: the request's, else the model entry's ``defaults``, else OpenAI's."""

    def pick(name: str, fallback: Any) -> Any:
        value = request.get(name)
        return value if value is not None else defaults.get(name, fallback)

    stop = request.get("stop")
    if stop is None:
        stop = defaults.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    return {
        "max_new_tokens": int(pick("max_tokens", settings.chat_default_max_tokens)),
        "temperature": float(pick("temperature", 1.0)),
        "top_p": float(pick("top_p", 1.0)),
        "stop": list(stop) if stop else None,
        "seed": request.get("seed"),
        "logit_bias": _token_biases(request.get("logit_bias")),
    }


def _token_biases(logit_bias: dict[str, float] | None) -> dict[int, float] | None:
    """OpenAI's ``logit_bias`` (JSON keys are strings) as the handler takes it."""
    return {int(token): float(bias) for token, bias in logit_bias.items()} if logit_bias else None


def wait_for(future: Future, ctx: JobContext):
    """The future's result; meanwhile re-read the job's status in case a cancel was missed."""
    while True:
        try:
            return future.result(timeout=CANCEL_POLL_SEC)
        except TimeoutError:
            if not ctx.cancel_event.is_set() and ctx.runtime.is_cancelled(ctx.job_id):
                ctx.cancel_event.set()


def serve_chat(ctx: JobContext, model: LoadedModel) -> bytes:
    """A ``chat.completion`` for the job's request (validated by the API)."""
    if getattr(model.handler, "is_proxy", False):
        from workers.proxy import serve_proxy_chat

        return serve_proxy_chat(ctx, model)
    request = ctx.request
    settings = ctx.runtime.settings
    messages = request["messages"]
    if request.get("remote_images"):
        from workers.images import inline_remote_images

        messages = inline_remote_images(messages, settings)
    params = generation_params(request, model.handler.generation_defaults, settings)
    events = JobEvents(publisher(ctx.runtime.redis), ctx.job_id)
    chat_request = ChatRequest(
        messages=messages,
        cancel_event=ctx.cancel_event,
        on_text=events.delta,
        response_format=request.get("response_format"),
        **params,
    )
    if model.batcher is None:
        raise ServiceError(
            500, f"model '{model.name}' has no chat scheduler", code="internal_error"
        )
    result = wait_for(model.batcher.submit(chat_request, priority=ctx.priority), ctx)
    events.flush()
    if isinstance(result, Cancelled):  # pragma: no cover - futures raise it instead
        raise result
    created = int(request.get("created") or time.time())
    return p.dumps(completion_body(p.completion_id(ctx.job_id), model.name, created, result))


def completion_body(completion_id: str, model: str, created: int, result) -> dict[str, Any]:
    """A ``chat.completion`` object for a finished :class:`handlers.chat.ChatGeneration`."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text, "refusal": None},
                "logprobs": None,
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        },
    }
