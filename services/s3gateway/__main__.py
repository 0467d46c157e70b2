"""``python -m services.s3gateway``: serve the S3 gateway on ``listen_host:listen_port``."""

from __future__ import annotations

from services.s3gateway.app import build_app
from shared.platform.service_main import serve

DEFAULT_PORT = 7655


def main() -> None:
    serve(build_app, default_port=DEFAULT_PORT)


if __name__ == "__main__":
    main()
