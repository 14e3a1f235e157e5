"""``MODELS=a,b python -m workers``: a worker serving the named models' queues."""

from __future__ import annotations

import logging
import sys

from inferq.batches import CONTROL_QUEUE
from inferq.logs import setup_logging
from inferq.protocol import queue_name
from inferq.settings import get_settings, instance_name


def main(argv: list[str] | None = None) -> None:
    settings = get_settings()
    setup_logging(settings.log_level, settings.log_format, service="worker")
    if not settings.models:
        sys.exit("MODELS is empty: name the models this worker serves, e.g. MODELS=a,b")
    from workers.native_env import AllocatorNotFound, prepare_process

    try:
        prepare_process(settings.worker_malloc)  # before torch loads; may execute itself again
    except AllocatorNotFound as exc:
        sys.exit(f"cannot start worker: {exc}")
    from inferq.catalog import load_catalog
    from workers import runtime
    from workers.celery_app import app

    try:
        entries = load_catalog(settings.model_config_path).require(settings.models)
        runtime.start(settings, app).load(
            entries
        )  # before consuming: a broken model never takes jobs
    except Exception as exc:
        logging.getLogger("workers").exception("cannot start worker")
        sys.exit(f"cannot start worker: {exc}")
    args = [
        "worker",
        "--pool=threads",
        f"--concurrency={settings.worker_concurrency}",
        f"--queues={','.join([CONTROL_QUEUE, *(queue_name(e.name) for e in entries)])}",
        f"--hostname={instance_name('worker')}",
        f"--loglevel={settings.log_level}",
        "--without-gossip",
        "--without-mingle",
        *(["--task-events"] if settings.task_events else []),
        *(argv if argv is not None else sys.argv[1:]),
    ]
    app.worker_main(args)


if __name__ == "__main__":
    main()
