"""The Celery application of the workers.

Pool: ``threads``. Models are loaded once in the worker process (``worker_init``) before it
consumes; every job thread of the pool shares them, which is what lets concurrent jobs share
forward passes (see ``workers/batching.py``) and keeps CUDA out of forked children.

Importing this module loads no model code (``workers.runtime`` is imported when a worker
starts), so Celery's CLI runs with the API's dependencies alone: ``celery -A
workers.celery_app inspect active`` in the API image, which has no torch.
"""

from __future__ import annotations

import logging

from celery import Celery, signals

from inferq.batches import CONTROL_QUEUE
from inferq.catalog import load_catalog
from inferq.protocol import celery_config
from inferq.redisconn import broker_transport_options, broker_url, reuse_kombu_clients
from inferq.settings import get_settings, instance_name
from workers.broker_patches import survive_broker_loss

log = logging.getLogger(__name__)

survive_broker_loss()
reuse_kombu_clients()


settings = get_settings()
app = Celery("inferq")
app.conf.update(
    celery_config(
        broker_url(settings),
        settings.visibility_timeout_sec,
        task_events=settings.task_events,
        transport_options=broker_transport_options(settings),
    )
)
app.conf.include = ["workers.tasks"]
# What ``python -m workers`` passes on its command line, as defaults for a worker started with
# Celery's own CLI: the threads pool (one copy of each model, shared batches) and
# WORKER_CONCURRENCY job threads (Celery's default, one per core, would starve the batcher).
app.conf.worker_pool = "threads"
app.conf.worker_concurrency = settings.worker_concurrency


@signals.celeryd_after_setup.connect
def _consume_control_queue(instance=None, **_: object) -> None:
    """Every worker consumes ``inferq.control`` (batch planning and finalizing), also one
    started as ``celery -A workers.celery_app worker -Q inferq.model.<name>``."""
    if instance is not None:
        # the Queue the producers publish to (exchange inferq.control): select_add of a bare
        # name would bind it to the default exchange instead, in every worker
        queues = instance.app.amqp.queues
        queues.select_add(queues[CONTROL_QUEUE])


def _worker():
    """This process's worker runtime (``workers.runtime``, imported only once a worker starts:
    importing this module loads no model code)."""
    from workers import runtime

    return runtime.start(settings, app)


@signals.worker_init.connect
def _load_models(**_: object) -> None:
    """Load the models when started as ``celery -A workers.celery_app worker`` (``python -m
    workers`` has loaded them already). A failure stops the process: it must not consume."""
    worker = _worker()
    if worker.registry.models:
        return
    if not settings.models:
        raise SystemExit("MODELS is empty: name the models this worker serves, e.g. MODELS=a,b")
    try:
        catalog = load_catalog(settings.model_config_path)
        worker.load(catalog.require(settings.models))
    except Exception:
        log.exception("cannot load models; exiting")
        raise SystemExit(1) from None


@signals.worker_ready.connect
def _announce(sender=None, **_: object) -> None:
    name = getattr(sender, "hostname", None) or instance_name("worker")
    _worker().start_background(name, controller=getattr(sender, "controller", None))


@signals.task_received.connect
def _lease(request=None, **_: object) -> None:
    """Record a new delivery's lease now, not at the next heartbeat (workers.leases)."""
    leases = _worker().leases
    tag = getattr(getattr(request, "message", None), "delivery_tag", None)
    if leases is not None and tag is not None:
        leases.received(tag)


@signals.worker_shutting_down.connect
def _withdraw(**_: object) -> None:
    _worker().stop_background()
