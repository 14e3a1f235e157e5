"""``python -m api``: serve the API with uvicorn on HOST:PORT.

Shutdown is bounded: on SIGTERM/SIGINT uvicorn stops accepting connections and waits for the
requests in flight; those still waiting for a job after ``API_SHUTDOWN_GRACE_SEC`` are answered
503 (their job cancelled), and whatever still runs a few seconds later (an open stream) is
cancelled, so the process always exits and frees its port.
"""

from __future__ import annotations

import math
from types import FrameType

import uvicorn
from sse_starlette.sse import AppStatus

from api.app import create_app
from inferq.heap import freeze_startup_heap
from inferq.logs import setup_logging
from inferq.settings import get_settings

STREAMS_EXTRA_SEC = 3  # after the grace, before uvicorn cancels what is left (open streams)


class DrainingServer(uvicorn.Server):
    """A uvicorn server that tells the app's queue when shutdown begins."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        app = self.config.app
        queue = getattr(getattr(app, "state", None), "queue", None)
        if queue is not None:
            queue.begin_shutdown()
        super().handle_exit(sig, frame)


def main() -> None:
    settings = get_settings()
    setup_logging(settings.log_level, settings.log_format, service="api")
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        log_config=None,  # keep our JSON logging
        timeout_graceful_shutdown=math.ceil(settings.api_shutdown_grace_sec) + STREAMS_EXTRA_SEC,
    )
    # Open streams are ended by the app itself once the grace is over, with an error event
    # (api/sse.py), not cut by sse-starlette the moment the signal arrives.
    AppStatus.disable_automatic_graceful_drain()
    freeze_startup_heap()  # the app, its routes and models: out of the GC's passes
    DrainingServer(config).run()


if __name__ == "__main__":
    main()
