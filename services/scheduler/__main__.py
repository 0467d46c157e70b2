"""``python -m services.scheduler``: run the scheduler engine with its health endpoints."""

from __future__ import annotations

from services.scheduler.app import build_app
from shared.platform.service_main import serve


def main() -> None:
    serve(build_app, default_port=7653)


if __name__ == "__main__":
    main()
