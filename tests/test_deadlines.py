"""The worker's one deadline thread (workers/deadlines.py) that keeps running jobs' limits."""

from __future__ import annotations

import threading
import time

from workers.deadlines import COMPACT_AT, Deadlines


def test_deadlines_fire_in_order_and_cancelled_ones_never():
    deadlines = Deadlines()
    fired: list[str] = []
    done = threading.Event()
    deadlines.add(0.30, lambda: (fired.append("late"), done.set()))
    deadlines.add(0.10, lambda: fired.append("early"))
    cancelled = deadlines.add(0.05, lambda: fired.append("cancelled"))
    deadlines.cancel(cancelled)
    deadlines.add(0.20, lambda: 1 / 0)  # a failing callback does not stop the thread
    assert done.wait(5)
    assert fired == ["early", "late"]
    assert len(deadlines) == 0


def test_an_earlier_deadline_wakes_the_thread():
    deadlines = Deadlines()
    deadlines.add(60, lambda: None)
    fired = threading.Event()
    started = time.monotonic()
    deadlines.add(0.05, fired.set)
    assert fired.wait(5)
    assert time.monotonic() - started < 2  # not held back by the 60 s one
    assert len(deadlines) == 1


def test_cancelled_entries_are_compacted():
    deadlines = Deadlines()
    entries = [deadlines.add(3600, lambda: None) for _ in range(COMPACT_AT + 10)]
    for entry in entries:
        deadlines.cancel(entry)
        deadlines.cancel(entry)  # twice is harmless
    assert len(deadlines) == 0
    assert len(deadlines._heap) < COMPACT_AT
