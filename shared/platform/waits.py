"""Waiting for a state another process will reach, woken by the events that announce it.

``wait_for`` checks the state, and checks again each time an event on the given subject
is published (``Bus.watch``) instead of polling the database on a timer. It subscribes
*before* the first check, so a change that lands between the check and the wait still
wakes it. A slow re-check (``RECHECK_S``) covers what events cannot: NATS away for a
moment, an event relayed late from the outbox. ``wait commit`` and ``wait job`` use it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from shared.platform.bus import Bus

T = TypeVar("T")

# The state is read again at least this often, event or not.
RECHECK_S = 5.0


async def wait_for(
    bus: Bus,
    subject: str,
    check: Callable[[], Awaitable[T | None]],
    timeout: float | None,
    *,
    recheck: float = RECHECK_S,
) -> T | None:
    """The first non-None ``check()``, re-run whenever an event on ``subject`` arrives;
    None once ``timeout`` seconds have passed without one (never, for ``None``)."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    async with bus.watch(subject) as changed:
        while True:
            changed.clear()
            found = await check()
            if found is not None:
                return found
            wait = recheck if deadline is None else min(recheck, deadline - loop.time())
            if wait <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), wait)
