"""Process-wide state of a worker: loaded models, the job runtime, background threads."""

from __future__ import annotations

from inferq.settings import get_settings
from workers.jobs import JobRuntime
from workers.presence import CancelListener, Heartbeat
from workers.registry import ModelRegistry

settings = get_settings()
registry = ModelRegistry()
jobs = JobRuntime(settings)
_background: list = []


def start_background(worker_name: str) -> None:
    infos = {name: loaded.info for name, loaded in registry.models.items()}
    heartbeat = Heartbeat(jobs.redis, settings, worker_name, infos)
    listener = CancelListener(jobs.redis, jobs.cancel_running)
    listener.start()
    heartbeat.start()
    _background[:] = [heartbeat, listener]


def stop_background() -> None:
    for part in _background:
        part.stop()
