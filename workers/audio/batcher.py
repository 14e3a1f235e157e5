"""The window batcher of a speech model: windows of every request in flight share batches.

A speech handler that batches windows (:class:`handlers.base.WindowBatchingSpeechModel`) plans
each request in its job thread and hands the windows it wants decoded to this batcher through
a :class:`Submitter`; one thread per model and worker then runs the model, repeatedly:

1. take the most urgent pending window: the lowest priority value (a sync request's windows
   go before a job's, a job's before a bulk one's), then the oldest *request* (a part of a
   long job counts as one: its windows, the uncovered tails found later included, go before
   those of parts claimed after it, so parts finish in order and progress comes part by
   part), then the window's place in its request;
2. fill the batch, up to the handler's ``batch_size``, with the next pending windows (in the
   same order, whatever request or priority they come from) whose decoding options (the
   ``key``) equal the first one's: windows are decoded together only when they are decoded
   the same way (task, language, temperature, prompt, word timestamps);
   A batch that is not full waits, at most ``FILL_WAIT_SEC`` after its oldest window was
   submitted, while some request is still *preparing* (see :class:`Submitter`): sixteen
   sync requests arriving at once, or the parts a long job's puller has just claimed, then
   share full batches instead of the first one being decoded alone. A request alone (none
   preparing) never waits;
3. one ``decode_windows`` call; each window's future gets its output. A handler with
   ``decode_lanes`` > 1 (faster-whisper: CTranslate2 runs that many batches at once) gets
   that many model threads here; a free lane takes at most its share of what is pending
   (the pending windows over the lanes), so two lanes split eight windows four and four
   rather than one taking all eight while the other idles. A failing batch fails
   only the requests with a window in it; a cancelled request's pending windows are dropped
   before the next batch (their futures raise :class:`Cancelled`).

Each batch is counted in the worker's metrics (``inferq_worker_speech_batch_windows`` and
``inferq_worker_speech_batch_requests``: how many windows, and of how many requests).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Hashable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any

from handlers.base import Cancelled
from workers import metrics

log = logging.getLogger(__name__)

# The longest a batch that is not full waits for requests still preparing. Sixteen 20 s files
# sent at once to one 2-core worker reach it over ~0.3-0.5 s (uploads, decoding, VAD): with
# 0.2 s their windows went in batches of 7, 8 and 1 (or 5, 8 and 3), with 0.5 s in 8 and 8
# (bench/audio.py (f), 2026-12-04). A request alone never waits.
FILL_WAIT_SEC = 0.5


class Submitter:
    """One request's way into the batcher: ``submit(key, windows)`` returns a future per
    window. Until its first ``submit`` (or ``close``) the request counts as *preparing*
    (decoding its audio, finding its windows): a batch that is not full waits a moment for
    it (see the module docstring)."""

    def __init__(self, batcher: WindowBatcher, priority: int, cancel_event: threading.Event | None):
        self.batcher = batcher
        self.priority = int(priority)
        self.cancel_event = cancel_event
        self.arrival = next(batcher._arrival)  # the request's place in the queue
        self._preparing = True
        batcher._preparing_changed(+1)

    @property
    def cancelled(self) -> bool:
        return self.cancel_event is not None and self.cancel_event.is_set()

    def submit(self, key: Hashable, windows: list[Any]) -> list[Future]:
        futures = self.batcher._enqueue(self, key, windows)
        self.close()
        return futures

    def close(self) -> None:
        if self._preparing:
            self._preparing = False
            self.batcher._preparing_changed(-1)


@dataclass(slots=True)
class _Item:
    submitter: Submitter
    key: Hashable
    window: Any
    future: Future
    order: tuple[int, int, int]  # (priority, the request's arrival, the window's)
    submitted: float  # time.monotonic() when submitted


class _AllCancelled:
    """The ``cancel_event`` given to ``decode_windows``: set once every request of the batch
    is cancelled (a batch of other requests must not stop for one of them)."""

    def __init__(self, submitters: list[Submitter]):
        self.submitters = submitters

    def is_set(self) -> bool:
        return all(s.cancelled for s in self.submitters)


class WindowBatcher:
    def __init__(self, handler: Any, name: str):
        self.decode = handler.decode_windows
        self.batch_size = max(1, int(getattr(handler, "batch_size", 8) or 8))
        self.lanes = max(1, int(getattr(handler, "decode_lanes", 1) or 1))
        self.name = name
        self._pending: list[_Item] = []
        self._preparing = 0
        self._arrival = itertools.count()
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._run, name=f"windows:{name}:{lane}", daemon=True)
            for lane in range(self.lanes)
        ]
        for thread in self._threads:
            thread.start()

    def submitter(self, priority: int, cancel_event: threading.Event | None) -> Submitter:
        return Submitter(self, priority, cancel_event)

    def pending(self) -> int:
        """How many windows wait for a batch."""
        with self._cond:
            return len(self._pending)

    def _preparing_changed(self, delta: int) -> None:
        with self._cond:
            self._preparing += delta
            if delta < 0:
                self._cond.notify_all()  # a batch waiting to fill may go now

    def _enqueue(self, submitter: Submitter, key: Hashable, windows: list[Any]) -> list[Future]:
        futures = [Future() for _ in windows]
        now = time.monotonic()
        with self._cond:
            for window, future in zip(windows, futures, strict=True):
                order = (submitter.priority, submitter.arrival, next(self._arrival))
                self._pending.append(_Item(submitter, key, window, future, order, now))
            self._cond.notify_all()
        return futures

    def _take(self) -> list[_Item]:
        """The next batch (see the module docstring); drops cancelled windows on the way."""
        # With several lanes, a lane takes its share of what is pending, not a whole batch:
        # a long job's 24 windows on two lanes go 8 and 8, then 4 and 4 (not 8 on the lane
        # that frees first while the other idles: 14-16 % slower, measured). The price: two
        # windows while the other lane is busy go one after the other.
        size = min(self.batch_size, -(-len(self._pending) // self.lanes))
        live = []
        for item in self._pending:
            if item.submitter.cancelled:
                _settle(item.future, error=Cancelled())
            elif not item.future.done():  # a request that gave up cancels its futures
                live.append(item)
        live.sort(key=lambda it: it.order)
        batch: list[_Item] = []
        rest: list[_Item] = []
        for item in live:
            if len(batch) < size and (not batch or item.key == batch[0].key):
                if item.future.set_running_or_notify_cancel():
                    batch.append(item)
            else:
                rest.append(item)
        self._pending = rest
        return batch

    def _fill(self) -> None:
        """Wait (lock held) while the pending windows do not fill a batch and some request
        is preparing, until ``FILL_WAIT_SEC`` after the oldest pending window came."""
        deadline = min(item.submitted for item in self._pending) + FILL_WAIT_SEC
        while self._preparing > 0 and len(self._pending) < self.batch_size:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._cond.wait(left)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                self._fill()
                batch = self._take()
            if batch:
                self._execute(batch)

    def _execute(self, batch: list[_Item]) -> None:
        submitters = list({id(it.submitter): it.submitter for it in batch}.values())
        started = time.perf_counter()
        try:
            outputs = self.decode(
                batch[0].key, [it.window for it in batch], _AllCancelled(submitters)
            )
        except Exception as exc:  # fails this batch's requests, never the thread
            if not isinstance(exc, Cancelled):
                log.exception("speech batch of %d windows failed", len(batch))
            for item in batch:
                _settle(item.future, error=exc)
            return
        seconds = time.perf_counter() - started
        metrics.SPEECH_BATCH_WINDOWS.labels(self.name).observe(len(batch))
        metrics.SPEECH_BATCH_REQUESTS.labels(self.name).observe(len(submitters))
        metrics.FORWARD_SECONDS.labels(self.name, "windows").inc(seconds)
        log.debug(
            "%s: %d windows of %d requests in %.2fs",
            self.name,
            len(batch),
            len(submitters),
            seconds,
        )
        for item, output in zip(batch, outputs, strict=True):
            _settle(item.future, result=output)


def _settle(future: Future, *, result: Any = None, error: BaseException | None = None) -> None:
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass  # cancelled meanwhile
