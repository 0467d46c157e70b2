"""``python -m services.console``: serve the web console on ``listen_host:listen_port``."""

from __future__ import annotations

from services.console.app import build_app
from shared.platform.service_main import serve

DEFAULT_PORT = 7656


def main() -> None:
    serve(build_app, default_port=DEFAULT_PORT)


if __name__ == "__main__":
    main()
