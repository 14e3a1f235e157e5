"""Writing a job's events (its Redis Stream): one pipelined writer thread per worker.

Output (``delta``, ``chunk``) is queued and written off the serving thread; a job's progress
is written by :meth:`JobEvents.progress` after the output queued before it, so a stream is
always in the order its job produced it. The job's result is stored (which appends the
terminal status entry) only after :meth:`JobEvents.flush`.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis

from inferq import protocol as p

log = logging.getLogger(__name__)


class EventPublisher:
    """Appends job events to their Redis Streams from one background thread, pipelined."""

    def __init__(self, client: redis.Redis):
        self.redis = client
        self.progress_script = client.register_script(p.PROGRESS_SCRIPT)
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


def streamed_output(client: redis.Redis, job_id: str) -> tuple[str, bool]:
    """What earlier deliveries of a job put on its stream: the text of the ``delta`` entries
    since the last ``restart``, and whether it also holds ``chunk`` entries (which a new run
    cannot reproduce)."""
    text: list[str] = []
    chunks = False
    for _, fields in client.xrange(p.events_key(job_id)):
        kind = fields.get(b"event", b"").decode()
        if kind == p.EventType.RESTART:
            text, chunks = [], False
        elif kind == p.EventType.DELTA:
            text.append(p.loads(fields[b"data"])["content"])
        elif kind == p.EventType.CHUNK:
            chunks = True
    return "".join(text), chunks


class Resume:
    """A redelivered job's output against what its earlier run already streamed.

    A generation that repeats itself (greedy, or seeded: chat jobs always are) is held back
    while it retraces the streamed text and continues from its end, so a reader sees one
    answer. One that departs from it is announced by a ``restart`` entry and then written in
    full from its beginning."""

    def __init__(self, streamed: str):
        self.streamed = streamed
        self.fresh = ""

    def feed(self, text: str) -> tuple[bool, str, bool]:
        """(restart first?, the text to write, settled?) for the new run's next text."""
        self.fresh += text
        if self.fresh.startswith(self.streamed):
            return False, self.fresh[len(self.streamed) :], True
        if self.streamed.startswith(self.fresh):
            return False, "", False  # still retracing
        return True, self.fresh, True


class JobEvents:
    """One job's writer: ``delta``/``chunk`` from any thread, ``flush`` before finishing.

    ``streamed`` is the output an earlier delivery of the job already wrote (see
    :class:`Resume`); ``chunks`` says it holds upstream chunks, which are never retraced."""

    def __init__(
        self, events: EventPublisher, job_id: str, streamed: str = "", chunks: bool = False
    ):
        self.events = events
        self.job_id = job_id
        self.last = 0
        self._resume = Resume(streamed) if streamed else None
        self._streamed = len(streamed)
        self._restart_on_chunk = chunks
        self._lock = threading.Lock()
        self._closed = False  # the job has stopped: output that still comes is dropped

    def delta(self, text: str, logprobs: list | None = None, *, index: int = 0) -> None:
        """New output text (a chat token, a transcribed segment); for chat, the compact
        logprobs of its tokens when they were asked for, and the choice ``index`` (``n``)."""
        if self._resume is not None:
            with self._lock:
                if index or logprobs is not None:
                    # n > 1 or logprobs: an earlier delivery's output is not retraced by text
                    self._resume = None
                    self._restart()
                else:
                    restart, text, settled = self._resume.feed(text)
                    if settled:
                        self._resume = None
                    if restart:
                        self._restart()
                    if not text:
                        return
        data: dict[str, Any] = {"content": text}
        if index:
            data["index"] = index
        if logprobs is not None:
            data["logprobs"] = logprobs
        self._publish(p.EventType.DELTA, data)

    def tool_calls(self, calls: list[dict[str, Any]], *, index: int = 0) -> None:
        """New tool calls of a chat completion (OpenAI's ``delta.tool_calls`` entries) of
        choice ``index``."""
        data: dict[str, Any] = {"tool_calls": calls}
        if index:
            data["index"] = index
        self._publish(p.EventType.DELTA, data)

    def chunk(self, data: str) -> None:
        """An upstream proxy's stream chunk, verbatim."""
        if self._restart_on_chunk or self._resume is not None:
            self._restart_on_chunk, self._resume = False, None
            self._restart()
        self._publish(p.EventType.CHUNK, data, raw=True)

    def _publish(self, kind: p.EventType, data: Any, *, raw: bool = False) -> None:
        with self._lock:
            if not self._closed:
                self.last = self.events.publish(self.job_id, kind, data, raw=raw)

    def close(self) -> None:
        """The job stops here, before its final status is written: output that a pass it
        stopped waiting for (workers/jobs.py's ``StopWait``) still produces is dropped."""
        with self._lock:
            self._closed = True

    def end(self) -> None:
        """The job's output is complete: if it stopped while still retracing the earlier
        run's text (shorter than what was streamed), the stream restarts with it."""
        if self._resume is not None:
            fresh, self._resume = self._resume.fresh, None
            self._restart()
            if fresh:
                self.last = self.events.publish(self.job_id, p.EventType.DELTA, {"content": fresh})

    def _restart(self) -> None:
        data = {"discarded": self._streamed}
        self.last = self.events.publish(self.job_id, p.EventType.RESTART, data)

    def progress(self, stored: dict[str, Any], event: dict[str, Any] | None = None) -> None:
        """The job's progress (kept in its hash) and its event (``stored`` unless given),
        written after the output before it; only while the job runs."""
        self.flush()
        args = [p.dumps(stored)] + ([p.dumps(event)] if event is not None else [])
        self.events.progress_script(
            keys=[p.job_key(self.job_id), p.events_key(self.job_id)], args=args
        )

    def flush(self) -> None:
        if self.last:
            self.events.wait_written(self.last)
