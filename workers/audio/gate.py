"""One gate per speech model and worker: at most ``capacity`` transcriptions at once, the most
urgent first."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import threading
from collections.abc import Callable, Iterator
from typing import Any

from handlers.base import Cancelled
from workers.jobs import CANCEL_POLL_SEC


class ModelGate:
    """At most ``capacity`` holders at once; waiters are served by priority (lower first),
    then in arrival order."""

    def __init__(self, capacity: int = 1):
        self.capacity = capacity
        self._holders = 0
        self._waiting: list[tuple[int, int]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, priority: int, cancelled: Callable[[], bool] = lambda: False) -> Iterator[None]:
        ticket = (int(priority), next(self._order))
        with self._cond:
            heapq.heappush(self._waiting, ticket)
            try:
                while self._holders >= self.capacity or self._waiting[0] != ticket:
                    self._cond.wait(CANCEL_POLL_SEC)
                    if cancelled():
                        raise Cancelled()
            finally:
                self._waiting.remove(ticket)
                heapq.heapify(self._waiting)
                self._cond.notify_all()
            self._holders += 1
        try:
            yield
        finally:
            with self._cond:
                self._holders -= 1
                self._cond.notify_all()


class ModelGates:
    """The worker's gates by model name, made on first use: capacity 1 unless the handler says
    it is ``thread_safe`` (then ``max_parallelism``, default 4)."""

    def __init__(self) -> None:
        self._gates: dict[str, ModelGate] = {}
        self._lock = threading.Lock()

    def of(self, name: str, handler: Any) -> ModelGate:
        with self._lock:
            if name not in self._gates:
                capacity = 1
                if getattr(handler, "thread_safe", False):
                    capacity = max(1, int(getattr(handler, "max_parallelism", 0) or 4))
                self._gates[name] = ModelGate(capacity)
            return self._gates[name]
