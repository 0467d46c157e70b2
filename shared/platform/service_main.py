"""The ``python -m services.<name>`` entry every HTTP service shares."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from shared.platform.config import Config, load_config

log = logging.getLogger("tusk.service")

# Exit code of a service that stopped because it could no longer do its work.
EXIT_FAILED = 1


def _no_op() -> None:
    pass


@dataclass
class Failure:
    """Set when a service can no longer do its work (its background task died): the process
    then stops and exits non-zero, so its supervisor (``tusk up``, Kubernetes) restarts it
    rather than leaving a process that answers HTTP but does nothing."""

    reason: str | None = None
    # What stopping means: ``serve`` makes it a graceful shutdown of the process; an app
    # served inside a test's event loop only records the reason.
    stop: Callable[[], None] = field(default=_no_op, repr=False)

    def fail(self, reason: str) -> None:
        if self.reason is not None:
            return
        self.reason = reason
        log.critical("stopping the service: %s", reason)
        self.stop()


FAILURE: web.AppKey[Failure] = web.AppKey("failure", Failure)


def serve(build_app: Callable[[Config], web.Application], *, default_port: int) -> None:
    """Load the config and serve the app until SIGTERM/SIGINT (clean shutdown); exit
    non-zero if the app declared itself failed (``FAILURE``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = load_config()
    app = build_app(config)
    failure = app.get(FAILURE)
    if failure is not None:
        # SIGTERM runs aiohttp's graceful shutdown (cleanup contexts close pools, workers).
        failure.stop = lambda: signal.raise_signal(signal.SIGTERM)
    web.run_app(
        app,
        host=config.listen_host,
        port=config.listen_port or default_port,
        print=None,
        access_log=None,
    )
    if failure is not None and failure.reason is not None:
        sys.exit(EXIT_FAILED)
