"""The ``python -m services.<name>`` entry every HTTP service shares."""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web

from shared.config import Config, load_config


def serve(build_app: Callable[[Config], web.Application], *, default_port: int) -> None:
    """Load the config and serve the app until SIGTERM/SIGINT (clean shutdown)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = load_config()
    web.run_app(
        build_app(config),
        host=config.listen_host,
        port=config.listen_port or default_port,
        print=None,
        access_log=None,
    )
