"""``python -m services.pfs``: serve PFS on ``listen_host:listen_port`` from the loaded config."""

from __future__ import annotations

import logging

from aiohttp import web

from services.pfs.app import build_app
from shared.config import load_config


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = load_config()
    web.run_app(
        build_app(config),
        host=config.listen_host,
        port=config.listen_port or 7651,
        print=None,
        access_log=None,
    )


if __name__ == "__main__":
    main()
