"""Process-wide state of a worker: loaded models, the job runtime, background threads."""

from __future__ import annotations

import logging
import threading
from functools import lru_cache

from redis import RedisError

from inferq.catalog import Catalog, load_catalog
from inferq.settings import get_settings
from workers import metrics
from workers.jobs import JobRuntime
from workers.presence import CancelListener, Heartbeat
from workers.registry import ModelRegistry
from workers.watchdog import ConsumerWatchdog

log = logging.getLogger(__name__)
settings = get_settings()
registry = ModelRegistry()
jobs = JobRuntime(settings)
_background: list = []


@lru_cache(maxsize=1)
def catalog() -> Catalog:
    return load_catalog(settings.model_config_path)


_batches = None
_batches_lock = threading.Lock()


def batches():
    """The worker's one BatchRunner (its part slots and stop flag are process-wide; an
    lru_cache could build two when the first tasks arrive together)."""
    global _batches
    with _batches_lock:
        if _batches is None:
            from workers.batch import BatchRunner
            from workers.celery_app import app

            _batches = BatchRunner(jobs.redis, settings, app, catalog)
        return _batches


def start_background(worker_name: str, controller=None) -> None:
    infos = {name: loaded.info for name, loaded in registry.models.items()}
    heartbeat = Heartbeat(jobs.redis, settings, worker_name, infos, on_beat=_on_beat)
    listener = CancelListener(jobs.redis, jobs.cancel_running)
    listener.start()
    heartbeat.start()
    metrics.start_server(settings.worker_metrics_port)
    _background[:] = [heartbeat, listener]
    if controller is not None:
        watchdog = ConsumerWatchdog(controller, jobs.running)
        watchdog.start()
        _background.append(watchdog)


def _on_beat() -> None:
    """Every heartbeat: renew the leases of running jobs, finish batches whose time is up."""
    jobs.renew_leases()
    try:
        batches().sweep()
    except RedisError:
        raise  # the heartbeat logs it and tries again
    except Exception:  # never let a sweep stop the heartbeat
        log.exception("batch sweep failed")


def stop_background() -> None:
    """A requested shutdown: leave the worker pool; the watchdog must not interfere; batch
    runners hand their batches back after the part they are running."""
    batches().stopping.set()
    for part in _background:
        if isinstance(part, ConsumerWatchdog):
            part.graceful.set()
        else:
            part.stop()
