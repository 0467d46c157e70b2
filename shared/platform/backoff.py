"""Exponential backoff, and background loops that survive a dependency going away.

``Backoff`` only computes delays. Jitter spreads the retries of several replicas (or
several loops of one process) so a restarted PostgreSQL or NATS is not hit by all of
them in the same instant. ``keep_running`` runs a service's background loop for good.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import NoReturn

from shared.platform.errors import TuskError


@dataclass
class Backoff:
    """Delays that double from ``initial`` up to ``maximum``; ``reset`` after a success."""

    initial: float = 0.1
    maximum: float = 5.0
    factor: float = 2.0
    jitter: float = 0.2
    _next: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        self._next = self.initial

    def next(self) -> float:
        """The delay to wait now; each call (until ``reset``) makes the next one longer."""
        delay = self._next
        self._next = min(self._next * self.factor, self.maximum)
        return delay * (1 + random.uniform(-self.jitter, self.jitter))

    def reset(self) -> None:
        self._next = self.initial


# A loop that ran this long before failing was healthy: its next restart waits briefly again.
STABLE_AFTER_S = 60.0


async def keep_running(
    name: str, loop: Callable[[], Awaitable[None]], log: logging.Logger, backoff: Backoff
) -> NoReturn:
    """Run ``loop`` (meant to run forever) again whenever it fails, after a growing delay.

    A ``TuskError`` (PostgreSQL or NATS away: ``Unavailable``) is expected and logged as a
    warning; anything else is a bug, logged with its traceback and retried all the same,
    so one bad moment does not stop the service's background work for good.
    """
    while True:
        started = time.monotonic()
        try:
            await loop()
        except TuskError as exc:
            delay = _delay(backoff, started)
            log.warning("%s: %s; retrying in %.1f s", name, exc.message, delay)
        except Exception:
            delay = _delay(backoff, started)
            log.exception("%s: unexpected error; retrying in %.1f s", name, delay)
        else:
            delay = _delay(backoff, started)
            log.error("%s stopped; restarting it in %.1f s", name, delay)
        await asyncio.sleep(delay)


def _delay(backoff: Backoff, started: float) -> float:
    if time.monotonic() - started > STABLE_AFTER_S:
        backoff.reset()
    return backoff.next()
