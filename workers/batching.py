"""Cross-job batching: one model thread, many jobs sharing its forward passes.

Used for every "one input, one output" family: embeddings (text -> vector) and reranking
((query, document) -> score). Jobs (Celery task threads) ``submit`` their inputs with token
lengths already counted. The model thread repeatedly builds one batch: it looks at the
oldest pending inputs of the most urgent priority (at most ``window`` of them), anchors the
batch on the first of those (so nothing waits longer than the inputs queued before it), then
grows it with the inputs closest in length until the padded size reaches the token budget,
or until a pass of more than ``min_batch_size`` inputs would carry more than ``max_padding``
padded tokens per real one. On a CPU a pass of 16-32 texts runs about as fast per text as one
of 128, while padding costs as much as text, so a spread of lengths (32 clients' requests,
~250 texts pending) becomes several narrow passes instead of one wide one (1.35 -> 1.10
padded tokens per real token and +20 % texts/s under ``bench.embeddings``' load).
The window only widens the choice of companions for the anchor, never delays it, so it is
large (``32 x max_batch_size``): a batch file's parts keep thousands of texts pending, and
picking each pass's companions among all of them leaves ~2 % padding where a window of
``4 x max_batch_size`` left ~12 % (the lengths of ``bench.embeddings.corpus``).
Inputs from different jobs share a batch; a long job's inputs interleave
with later small requests, so a single input waits about one forward pass, not a whole job.

Lanes. With ``lanes`` > 1, that many main threads each run passes at once (the forward must
be safe to call from several threads): on a CPU, passes on one torch thread each keep every
core busy without the barrier of one pass's threads, which waits for its slowest thread
whenever anything else takes a core (``EMBED_LANES``; docs/benchmarks.md).

Adaptive lanes. Given ``pass_threads`` (sets the calling thread's CPU threads:
workers/pass_threads.py) and ``wide_threads`` > 1, lane 0 runs a pass on ``wide_threads``
threads when it is alone, so a lone input is as fast as with one lane; when other passes run,
or when what stays pending after its pass is at least half a pass, it runs on one thread and
the other lanes (one thread each, always) take the rest. The other lanes start a pass only
while lane 0 runs on one thread (or for inputs more urgent than lane 0's pass): two passes
never share a core with a wide pass's threads. Unless the wide pass has stalled: past
``STALLED_PASS_SEC`` (and 4 x the longest pass so far) it is taken for hung and the other
lanes go on without it.

Calls. With ``call_tokens`` > 0 a pass is cut into forward calls over similar lengths
wherever the padding saved outweighs that many tokens per extra call
(workers/pass_split.py): the batcher still picks one pass per round (its bookkeeping, its
jobs' results), the forward pays for little padding (``EMBED_CALL_TOKENS``). The batcher
records the sizes (rows x tokens) of the calls it ran, by thread count
(:class:`~workers.pass_split.CallSizes`), and with ``shape_tokens`` > 0 the cut charges that
many tokens for a size not run yet (``EMBED_SHAPE_TOKENS``: at bf16/fp16 on a CPU oneDNN
compiles kernels per new size).

The urgent lane. With ``urgent_priority`` set, a second thread runs passes of inputs at that
priority or more urgent **while the main thread is busy with a less urgent pass** (a batch
file's): an interactive request then waits for neither that pass nor the bulk queue. The two
passes share the device for a moment (the forward must be safe to call from two threads);
without bulk work in flight the second thread stays idle, so ordinary traffic still forms
full batches on one thread.

(Over 400 lines, a sixth of them this docstring: the rest is the state one lock guards, the
pending queues, the lanes and the urgent thread; which inputs make a pass is
:func:`workers.pass_choice.choose_pass`, how a pass is cut into calls workers/pass_split.py.)
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from handlers.base import Cancelled
from workers import metrics
from workers.pass_choice import choose_pass
from workers.pass_split import CallSizes, find_failures, split_pass

log = logging.getLogger(__name__)


WINDOW_BATCHES = 32  # the candidates a pass is chosen from, in batches of max_batch_size
MOST_SIZE_RECORDED = 65536  # call sizes (rows x tokens) past this always count as new
# A wide pass running this long (and STALLED_PASS_FACTOR x the longest pass so far) no longer
# holds the other lanes back: it is hung, or far slower than this model's passes are.
STALLED_PASS_SEC = 10.0
STALLED_PASS_FACTOR = 4


@dataclass(eq=False)  # compared by identity: field equality would compare output arrays
class _Ticket:
    """One ``submit`` call: its inputs, where their outputs go, and who waits for them."""

    inputs: Sequence[Any]
    outputs: np.ndarray
    remaining: int
    cancel_event: threading.Event | None
    future: Future = field(default_factory=Future)
    counted: bool = True  # in the metrics and stats (a worker's warm-up calls are not)

    @property
    def abandoned(self) -> bool:
        return self.future.done() or (self.cancel_event is not None and self.cancel_event.is_set())


@dataclass(slots=True, eq=False)  # by identity (``list.index`` finds the anchor)
class _Item:
    ticket: _Ticket
    index: int
    length: int
    priority: int
    seq: int


@dataclass
class BatchStats:
    batches: int = 0
    inputs: int = 0
    padded_tokens: int = 0
    real_tokens: int = 0


class Batcher:
    """``forward(inputs) -> array`` with one row (or one scalar) per input, shared by jobs.

    ``width`` is the length of each output row (an embedding's dimensions), or None for one
    scalar per input (a relevance score).
    """

    def __init__(
        self,
        forward: Callable[[list[Any]], np.ndarray],
        *,
        width: int | None,
        batch_tokens: int,
        max_batch_size: int,
        name: str = "",
        urgent_priority: int | None = None,
        window: int | None = None,
        max_padding: float = float("inf"),
        min_batch_size: int = 1,
        lanes: int = 1,
        pass_threads: Callable[[int], None] | None = None,
        wide_threads: int = 1,
        call_tokens: int = 0,
        shape_tokens: int = 0,
    ):
        self.forward = forward
        self.width = width
        self.batch_tokens = batch_tokens
        self.max_batch_size = max_batch_size
        self.max_padding = max_padding
        self.min_batch_size = min_batch_size
        self.call_tokens = call_tokens
        self.shape_tokens = shape_tokens
        self.call_sizes = CallSizes(min(batch_tokens, MOST_SIZE_RECORDED))
        self.name = name
        self.window = window or WINDOW_BATCHES * max_batch_size
        self.stats = BatchStats()
        self._pending: dict[int, deque[_Item]] = {}
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._stopped = False
        self.lanes = max(1, int(lanes))
        self._running: dict[int, int] = {}  # a busy main lane: the priority of its pass
        self._began: dict[int, float] = {}  # a busy main lane: when its pass began
        self._longest_pass = 0.0  # seconds, of the passes run so far
        self._pass_threads = pass_threads
        self.wide_threads = max(1, int(wide_threads))
        self.adaptive = self.lanes > 1 and pass_threads is not None and self.wide_threads > 1
        self._wide = False  # lane 0 runs a pass on wide_threads threads (adaptive lanes)
        self.urgent_priority = urgent_priority
        for lane in range(self.lanes):
            suffix = f":{lane}" if self.lanes > 1 else ""
            threading.Thread(
                target=self._run, args=(lane,), name=f"batcher:{name}{suffix}", daemon=True
            ).start()
        if urgent_priority is not None:
            threading.Thread(
                target=self._run_urgent, name=f"batcher-urgent:{name}", daemon=True
            ).start()

    def submit(
        self,
        inputs: Sequence[Any],
        lengths: Sequence[int],
        *,
        priority: int = 0,
        cancel_event: threading.Event | None = None,
        counted: bool = True,
    ) -> Future:
        """Queue inputs; the future resolves to their outputs (in order) or raises Cancelled.
        ``counted=False``: passes of these inputs alone stay out of the metrics and stats."""
        shape = (len(inputs),) if self.width is None else (len(inputs), self.width)
        ticket = _Ticket(
            inputs=inputs,
            outputs=np.empty(shape, dtype=np.float32),
            remaining=len(inputs),
            cancel_event=cancel_event,
            counted=counted,
        )
        if not inputs:
            ticket.future.set_result(ticket.outputs)
            return ticket.future
        with self._cond:
            queue = self._pending.setdefault(priority, deque())
            for i, length in enumerate(lengths):
                queue.append(_Item(ticket, i, max(1, length), priority, next(self._seq)))
            self._cond.notify_all()
        return ticket.future

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _take_candidates(self, most: int | None = None) -> list[_Item]:
        """Pop up to ``window`` live items, most urgent priority first, oldest first (only
        priorities up to ``most`` when given)."""
        taken: list[_Item] = []
        for priority in sorted(self._pending):
            if most is not None and priority > most:
                break
            queue = self._pending[priority]
            while queue and len(taken) < self.window:
                item = queue.popleft()
                if item.ticket.abandoned:
                    self._abandon(item.ticket)
                    continue
                taken.append(item)
        return taken

    def _put_back(self, items: list[_Item]) -> None:
        for item in sorted(items, key=lambda it: it.seq, reverse=True):
            self._pending[item.priority].appendleft(item)

    def _choose(self, candidates: list[_Item]) -> tuple[list[_Item], list[_Item]]:
        return choose_pass(
            candidates,
            batch_tokens=self.batch_tokens,
            max_batch_size=self.max_batch_size,
            min_batch_size=self.min_batch_size,
            max_padding=self.max_padding,
        )

    @staticmethod
    def _abandon(ticket: _Ticket) -> None:
        _settle(ticket.future, error=Cancelled())

    def _most_urgent(self) -> int | None:
        return min((prio for prio, queue in self._pending.items() if queue), default=None)

    def _may_take(self, lane: int) -> bool:
        """Whether ``lane`` starts a pass now (adaptive lanes: see the module docstring)."""
        most_urgent = self._most_urgent()
        if most_urgent is None:
            return False
        if not self.adaptive or lane == 0:
            return True
        if 0 not in self._running:
            return False  # lane 0 is free: it takes them (on every core if alone)
        return not self._wide or most_urgent < self._running[0] or self._until_stalled() == 0

    def _until_stalled(self) -> float | None:
        """Seconds until lane 0's wide pass counts as stalled (see ``STALLED_PASS_SEC``), and
        the other lanes go on without it; None: lane 0 runs no wide pass."""
        if not self._wide or 0 not in self._began:
            return None
        limit = max(STALLED_PASS_SEC, STALLED_PASS_FACTOR * self._longest_pass)
        return max(0.0, limit - (time.monotonic() - self._began[0]))

    def _threads_for_lane0(self, batch: list[_Item]) -> int:
        """Adaptive lanes: lane 0's threads for ``batch``; every core when no other pass runs
        and what stays pending would not make half a pass for another lane."""
        backlog = sum(len(queue) for queue in self._pending.values())
        self._wide = len(self._running) == 1 and backlog < max(1, len(batch) // 2)
        if not self._wide or backlog:
            # another lane takes the backlog (or, for a wide pass, times its stall)
            self._cond.notify_all()
        return self.wide_threads if self._wide else 1

    def _run(self, lane: int) -> None:
        if self.adaptive and lane > 0:
            self._pass_threads(1)
        while True:
            threads = 1 if self.adaptive and lane > 0 else None  # None: torch's own count
            with self._cond:
                while not self._stopped and not self._may_take(lane):
                    remaining = self._until_stalled() if lane > 0 else None
                    # 0: lane 0 counts as stalled already; a submit's notify wakes this lane
                    self._cond.wait(remaining if remaining else None)
                if self._stopped:
                    return
                candidates = self._take_candidates()
                if not candidates:
                    continue
                batch, rest = self._choose(candidates)
                self._put_back(rest)
                self._running[lane] = batch[0].priority
                self._began[lane] = time.monotonic()
                if self.adaptive and lane == 0:
                    threads = self._threads_for_lane0(batch)
            if self.adaptive and lane == 0:
                self._pass_threads(threads)
            try:
                self._execute(batch, threads=threads)
            finally:
                with self._cond:
                    del self._running[lane]
                    ran = time.monotonic() - self._began.pop(lane)
                    self._longest_pass = max(self._longest_pass, ran)
                    self._cond.notify_all()  # the other lanes and the urgent thread look again

    def _urgent_waiting(self) -> bool:
        """Urgent inputs wait while every main lane runs a less urgent pass."""
        if len(self._running) < self.lanes:
            return False  # a main lane is free: it takes them
        if min(self._running.values()) <= self.urgent_priority:
            return False
        return any(q for prio, q in self._pending.items() if prio <= self.urgent_priority)

    def _run_urgent(self) -> None:
        if self._pass_threads is not None:
            self._pass_threads(1)  # no OpenMP team of its own (workers/pass_threads.py)
        while True:
            with self._cond:
                while not self._stopped and not self._urgent_waiting():
                    self._cond.wait()
                if self._stopped:
                    return
                candidates = self._take_candidates(most=self.urgent_priority)
                if not candidates:
                    continue
                batch, rest = self._choose(candidates)
                self._put_back(rest)
            self._execute(batch, lane="urgent", threads=1 if self._pass_threads else None)

    def _execute(self, batch: list[_Item], lane: str = "main", threads: int | None = None) -> None:
        """Run ``batch`` as its calls on ``threads`` threads (None: torch's own count)."""
        started = time.perf_counter()
        lengths = [it.length for it in batch]
        known = self.call_sizes.known(threads)
        calls = split_pass(lengths, self.call_tokens, known=known, shape_tokens=self.shape_tokens)
        shape = (len(batch),) if self.width is None else (len(batch), self.width)
        outputs = np.empty(shape, dtype=np.float32)
        failed: dict[int, tuple[_Ticket, Exception]] = {}  # by id(ticket)
        for call in calls:
            try:
                outputs[call] = self._call([batch[i] for i in call])
                self.call_sizes.add(threads, len(call) * lengths[call[-1]])
            except Exception as exc:
                self._isolate(batch, call, outputs, failed, exc)
        for ticket, exc in failed.values():
            _settle(ticket.future, error=exc)
        # what ran for the jobs that did not fail, call by call (each in ascending length)
        ran = [[int(i) for i in call if id(batch[i].ticket) not in failed] for call in calls]
        ran = [call for call in ran if call]
        if not ran:
            return
        done = [i for call in ran for i in call]
        real = sum(lengths[i] for i in done)
        padded = sum(len(call) * lengths[call[-1]] for call in ran)
        counted = any(batch[i].ticket.counted for i in done)
        if counted:
            metrics.FORWARD_SECONDS.labels(self.name, lane).inc(time.perf_counter() - started)
            metrics.BATCH_SIZE.labels(self.name).observe(len(done))
            metrics.TOKENS.labels(self.name, "input").inc(real)
            metrics.TOKENS.labels(self.name, "padded").inc(padded)
        finished: list[_Ticket] = []
        with self._cond:  # the urgent thread may finish a pass (of the same ticket) at once
            if counted:
                self.stats.batches += 1
                self.stats.inputs += len(done)
                self.stats.padded_tokens += padded
                self.stats.real_tokens += real
            for i in done:
                ticket = batch[i].ticket
                ticket.outputs[batch[i].index] = outputs[i]
                ticket.remaining -= 1
                if ticket.remaining == 0:
                    finished.append(ticket)
        for ticket in finished:
            _settle(ticket.future, result=ticket.outputs)

    def _call(self, items: list[_Item]) -> np.ndarray:
        """``forward`` over ``items``, its output checked (the bookkeeping after a pass would
        end the thread on a wrong shape)."""
        got = np.asarray(self.forward([it.ticket.inputs[it.index] for it in items]))
        shape = (len(items),) if self.width is None else (len(items), self.width)
        if got.shape != shape:
            raise ValueError(f"forward pass gave shape {got.shape}, not {shape}")
        return got

    def _isolate(
        self,
        batch: list[_Item],
        call: np.ndarray,
        outputs: np.ndarray,
        failed: dict[int, tuple[_Ticket, Exception]],
        exc: Exception,
    ) -> None:
        """A call that failed with several jobs' inputs runs again in halves by job (a failing
        half in halves again: ``find_failures``), so one job's bad input (or a custom handler's
        bug on it) fails that job alone. ``failed``: id(ticket) -> (ticket, its error)."""
        log.exception("forward pass failed")
        by_ticket: dict[int, list[int]] = {}
        for i in call:
            by_ticket.setdefault(id(batch[i].ticket), []).append(int(i))
        jobs = [job for key, job in by_ticket.items() if key not in failed]

        def rerun(positions: list[int]) -> Exception | None:
            positions = sorted(positions, key=lambda i: batch[i].length)
            try:
                outputs[positions] = self._call([batch[i] for i in positions])
            except Exception as own:
                return own
            return None

        # a job failed in an earlier call was in this one: the others have not failed alone
        known = exc if len(jobs) == len(by_ticket) else None
        for index, error in find_failures(jobs, known, rerun).items():
            ticket = batch[jobs[index][0]].ticket
            failed[id(ticket)] = (ticket, error)


def _settle(future: Future, *, result: Any = None, error: BaseException | None = None) -> None:
    """Resolve ``future`` unless another thread (or a cancel) got there first."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


def batch_inputs(handler, inputs: list) -> tuple[list, list[int]]:
    """What the batcher gets for ``inputs`` and their token lengths: the handler's tokenised
    rows where it offers ``tokenize`` (handlers/tokens.py: the forward pass then does not
    tokenise again), else the inputs themselves."""
    if hasattr(handler, "tokenize"):
        rows = handler.tokenize(inputs)
        return rows, [len(row) for row in rows]
    if hasattr(handler, "token_lengths"):
        return inputs, handler.token_lengths(inputs)
    return inputs, [handler.count_tokens([t]) for t in inputs]
