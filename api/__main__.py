"""``python -m api``: serve the API with uvicorn on HOST:PORT."""

from __future__ import annotations

import uvicorn

from inferq.logs import setup_logging
from inferq.settings import get_settings


def main() -> None:
    settings = get_settings()
    setup_logging(settings.log_level, settings.log_format, service="api")
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        log_config=None,  # keep our JSON logging
    )


if __name__ == "__main__":
    main()
