"""Running jobs' time limits, all kept by one thread.

A ``threading.Timer`` per job started (and stopped) an OS thread for every job: on the
one-request path that is a thread start and a scheduler wake-up inside the job's serving time.
Here a job adds its deadline to a heap (the thread is woken only when the new deadline is the
earliest, which with one limit per endpoint is rare) and cancels it when it ends; cancelled
entries are dropped lazily, or all at once when they outnumber the live ones.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

COMPACT_AT = 1024  # cancelled entries before the heap is rebuilt (when they are the majority)


class Deadline:
    """One job's limit; :meth:`cancel` before it is due and the callback never runs."""

    __slots__ = ("callback", "due", "seq")

    def __init__(self, due: float, seq: int, callback: Callable[[], object]):
        self.due = due
        self.seq = seq
        self.callback: Callable[[], object] | None = callback

    def __lt__(self, other: Deadline) -> bool:
        return (self.due, self.seq) < (other.due, other.seq)


class Deadlines:
    def __init__(self, name: str = "job-deadlines"):
        self.name = name
        self._heap: list[Deadline] = []
        self._cancelled = 0
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, seconds: float, callback: Callable[[], object]) -> Deadline:
        """Run ``callback`` (on the deadline thread) ``seconds`` from now unless cancelled."""
        entry = Deadline(time.monotonic() + seconds, next(self._seq), callback)
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, entry)
            if self._heap[0] is entry:
                self._cond.notify()
        return entry

    def cancel(self, entry: Deadline) -> None:
        with self._cond:
            if entry.callback is None:
                return
            entry.callback = None
            self._cancelled += 1
            if self._cancelled >= COMPACT_AT and 2 * self._cancelled > len(self._heap):
                self._heap = [e for e in self._heap if e.callback is not None]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def __len__(self) -> int:
        """Live (not cancelled, not yet run) deadlines."""
        with self._cond:
            return len(self._heap) - self._cancelled

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    while self._heap and self._heap[0].callback is None:
                        heapq.heappop(self._heap)
                        self._cancelled -= 1
                    if not self._heap:
                        self._cond.wait()
                        continue
                    delay = self._heap[0].due - time.monotonic()
                    if delay <= 0:
                        entry = heapq.heappop(self._heap)
                        callback, entry.callback = entry.callback, None
                        break
                    self._cond.wait(delay)
            try:
                callback()
            except Exception:  # a limit's callback must not stop the others
                log.exception("deadline callback failed")
