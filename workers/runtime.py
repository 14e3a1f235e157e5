"""The worker's state, in one object made at start: the loaded models, the job runtime, the
audio and batch executors, and the background threads (heartbeat, cancel listener, watchdog).

``start`` makes it once per process (``python -m workers`` and Celery's ``worker_init`` both
call it); the task bodies reach it through ``current()``. Nothing else is module state.
"""

from __future__ import annotations

import logging
import threading
from functools import cached_property

from celery import Celery
from redis import RedisError

from inferq.catalog import Catalog, ModelEntry, load_catalog
from inferq.heap import freeze_startup_heap
from inferq.settings import Settings, instance_name
from workers import metrics
from workers.audio.service import AudioService
from workers.batch.runner import BatchRunner
from workers.jobs import JobRuntime
from workers.leases import Leases
from workers.native_env import check_process
from workers.presence import CancelListener, Heartbeat
from workers.registry import ModelRegistry
from workers.watchdog import ConsumerWatchdog

log = logging.getLogger(__name__)


class WorkerRuntime:
    def __init__(self, settings: Settings, app: Celery):
        self.settings = settings
        self.app = app
        self.registry = ModelRegistry()
        self.jobs = JobRuntime(settings)
        self.name = instance_name("worker")  # the Celery hostname once it is ready
        self.audio = AudioService(
            self.jobs,
            self.registry,
            settings,
            send_task=app.send_task,
            worker_name=lambda: self.name,
        )
        self._background: list = []
        self.leases: Leases | None = None

    @cached_property
    def catalog(self) -> Catalog:
        return load_catalog(self.settings.model_config_path)

    @cached_property
    def batches(self) -> BatchRunner:
        """The worker's one BatchRunner (its part slots and stop flag are process-wide)."""
        return BatchRunner(self.jobs.redis, self.settings, self.app, lambda: self.catalog)

    def load(self, entries: list[ModelEntry]) -> None:
        """Load the models before consuming: a broken model never takes jobs. What start-up
        made stays out of the garbage collector's passes (inferq/heap.py)."""
        allocator = check_process(self.settings.worker_malloc)
        metrics.ALLOCATOR.labels(allocator).set(1)
        self.registry.load(entries, self.settings)
        metrics.FROZEN_OBJECTS.set(freeze_startup_heap())

    def start_background(self, worker_name: str, controller=None) -> None:
        self.name = worker_name
        self.leases = Leases(self.jobs.redis, self.settings, self.app, worker_name)
        infos = {name: loaded.info for name, loaded in self.registry.models.items()}
        heartbeat = Heartbeat(
            self.jobs.redis, self.settings, worker_name, infos, on_beat=self._on_beat
        )
        listener = CancelListener(self.jobs.redis, self.jobs.cancel_running)
        listener.start()
        heartbeat.start()
        metrics.start_server(self.settings.worker_metrics_port)
        self._background[:] = [heartbeat, listener]
        if controller is not None:
            watchdog = ConsumerWatchdog(controller, self.jobs.running)
            watchdog.start()
            self._background.append(watchdog)

    def _on_beat(self) -> None:
        """Every heartbeat: renew the leases of running jobs, hand back a dead worker's ones,
        finish batches whose time is up."""
        self.leases.renew()
        self.leases.reap()
        try:
            self.batches.sweep()
        except RedisError:
            raise  # the heartbeat logs it and tries again
        except Exception:  # never let a sweep stop the heartbeat
            log.exception("batch sweep failed")

    def stop_background(self) -> None:
        """A requested shutdown: leave the worker pool; the watchdog must not interfere; batch
        runners hand their batches back after the part they are running."""
        self.batches.stopping.set()
        for part in self._background:
            if isinstance(part, ConsumerWatchdog):
                part.graceful.set()
            else:
                part.stop()


_current: WorkerRuntime | None = None
_lock = threading.Lock()


def start(settings: Settings, app: Celery) -> WorkerRuntime:
    """This process's runtime, made on the first call."""
    global _current
    with _lock:
        if _current is None:
            _current = WorkerRuntime(settings, app)
        return _current


def current() -> WorkerRuntime:
    if _current is None:
        raise RuntimeError("the worker runtime is not started (workers.runtime.start)")
    return _current
