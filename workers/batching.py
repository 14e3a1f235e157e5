"""Cross-job embedding batching: one model thread, many jobs sharing its forward passes.

Jobs (Celery task threads) ``submit`` their texts with token lengths already counted. The
model thread repeatedly builds one batch: it looks at the oldest pending texts of the most
urgent priority (at most ``4 x max_batch_size`` of them), anchors the batch on the first of
those (so nothing waits longer than the texts queued before it), then grows it with the
texts closest in length until the padded size reaches the token budget. Texts from
different jobs share a batch; a long job's texts interleave with later small requests, so a
single text waits about one forward pass, not for a whole long job.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from handlers.base import Cancelled

log = logging.getLogger(__name__)


@dataclass
class _Ticket:
    """One ``submit`` call: its texts, where their vectors go, and who waits for them."""

    texts: list[str]
    vectors: np.ndarray
    remaining: int
    cancel_event: threading.Event | None
    future: Future = field(default_factory=Future)

    @property
    def abandoned(self) -> bool:
        return self.future.done() or (self.cancel_event is not None and self.cancel_event.is_set())


@dataclass(slots=True)
class _Item:
    ticket: _Ticket
    index: int
    length: int
    priority: int
    seq: int


@dataclass
class BatchStats:
    batches: int = 0
    texts: int = 0
    padded_tokens: int = 0
    real_tokens: int = 0


class EmbeddingBatcher:
    def __init__(self, handler, *, batch_tokens: int, max_batch_size: int, name: str = ""):
        self.handler = handler
        self.batch_tokens = batch_tokens
        self.max_batch_size = max_batch_size
        self.window = 4 * max_batch_size
        self.stats = BatchStats()
        self._pending: dict[int, deque[_Item]] = {}
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._stopped = False
        self._forward = getattr(handler, "embed_batch", None) or handler.embed
        self._thread = threading.Thread(target=self._run, name=f"batcher:{name}", daemon=True)
        self._thread.start()

    def submit(
        self,
        texts: list[str],
        lengths: list[int],
        *,
        priority: int = 0,
        cancel_event: threading.Event | None = None,
    ) -> Future:
        """Queue texts; the future resolves to their vectors (in order) or raises Cancelled."""
        ticket = _Ticket(
            texts=texts,
            vectors=np.empty((len(texts), self.handler.dim), dtype=np.float32),
            remaining=len(texts),
            cancel_event=cancel_event,
        )
        if not texts:
            ticket.future.set_result(ticket.vectors)
            return ticket.future
        with self._cond:
            queue = self._pending.setdefault(priority, deque())
            for i, length in enumerate(lengths):
                queue.append(_Item(ticket, i, max(1, length), priority, next(self._seq)))
            self._cond.notify()
        return ticket.future

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _take_candidates(self) -> list[_Item]:
        """Pop up to ``window`` live items, most urgent priority first, oldest first."""
        taken: list[_Item] = []
        for priority in sorted(self._pending):
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
        anchor = candidates[0]
        by_length = sorted(candidates, key=lambda it: it.length)
        lo = hi = by_length.index(anchor)

        def fits(count: int, longest: int) -> bool:
            return count <= self.max_batch_size and count * longest <= self.batch_tokens

        grew = True
        while grew:
            grew = False
            if lo > 0 and fits(hi - lo + 2, by_length[hi].length):
                lo -= 1
                grew = True
            if hi + 1 < len(by_length) and fits(hi - lo + 2, by_length[hi + 1].length):
                hi += 1
                grew = True
        chosen = by_length[lo : hi + 1]
        rest = by_length[:lo] + by_length[hi + 1 :]
        return chosen, rest

    @staticmethod
    def _abandon(ticket: _Ticket) -> None:
        if not ticket.future.done():
            ticket.future.set_exception(Cancelled())

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and not any(self._pending.values()):
                    self._cond.wait()
                if self._stopped:
                    return
                candidates = self._take_candidates()
                if not candidates:
                    continue
                batch, rest = self._choose(candidates)
                self._put_back(rest)
            self._execute(batch)

    def _execute(self, batch: list[_Item]) -> None:
        try:
            vectors = self._forward([it.ticket.texts[it.index] for it in batch])
        except Exception as exc:  # a failed forward fails every job in the batch, not the thread
            log.exception("embedding forward pass failed")
            for ticket in {id(it.ticket): it.ticket for it in batch}.values():
                if not ticket.future.done():
                    ticket.future.set_exception(exc)
            return
        self.stats.batches += 1
        self.stats.texts += len(batch)
        self.stats.padded_tokens += len(batch) * max(it.length for it in batch)
        self.stats.real_tokens += sum(it.length for it in batch)
        for item, vector in zip(batch, vectors, strict=True):
            ticket = item.ticket
            ticket.vectors[item.index] = vector
            ticket.remaining -= 1
            if ticket.remaining == 0 and not ticket.future.done():
                ticket.future.set_result(ticket.vectors)
