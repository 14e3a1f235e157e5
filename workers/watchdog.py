"""Exit when Celery's consumer has stopped on its own, so a supervisor restarts the worker.

Losing the broker can leave Celery's worker with an "Unrecoverable error" from kombu's Redis
transport (a dead connection being closed), after which it neither consumes nor exits: a
zombie its supervisor cannot see. The watchdog notices that the worker left its running state
without a shutdown signal (SIGTERM/SIGINT), lets the running jobs finish for a grace period,
then exits with status 1. Jobs it held stay unacknowledged in Redis and are redelivered.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from celery import bootsteps

log = logging.getLogger(__name__)


class ConsumerWatchdog:
    def __init__(self, controller, running_jobs: dict, *, grace_sec: float = 30.0):
        self.controller = controller
        self.running_jobs = running_jobs
        self.grace_sec = grace_sec
        self.graceful = threading.Event()  # set when a shutdown signal asked for this
        self._thread = threading.Thread(target=self._run, name="consumer-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        stopped_at = None
        while not self.graceful.is_set():
            time.sleep(1.0)
            state = getattr(self.controller.blueprint, "state", bootsteps.RUN)
            if state == bootsteps.RUN or self.graceful.is_set():
                stopped_at = None
                continue
            if stopped_at is None:
                log.warning("the Celery consumer left its running state (%s)", state)
            stopped_at = stopped_at or time.monotonic()
            if not self.running_jobs or time.monotonic() - stopped_at > self.grace_sec:
                log.critical("the Celery consumer stopped on its own; exiting for a restart")
                logging.shutdown()
                os._exit(1)
