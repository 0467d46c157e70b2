"""``python -m services.pfs``: serve PFS on ``listen_host:listen_port`` from the loaded config."""

from __future__ import annotations

from services.pfs.app import build_app
from shared.platform.service_main import serve


def main() -> None:
    serve(build_app, default_port=7651)


if __name__ == "__main__":
    main()
