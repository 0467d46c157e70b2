"""Live pages: a counter bumped on every cluster event (NATS), and the server-sent-events
stream that tells open pages to refresh their main part.

The console holds no state of its own: an event only says "something changed"; the page
then re-reads what it shows through the services' APIs. Without NATS the pages still work
and refresh on their polling timer where they show something running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from shared.api.events import subject_filter
from shared.platform.bus import connect
from shared.platform.config import Config
from shared.platform.errors import Unavailable

log = logging.getLogger("tusk.console")

KEEPALIVE_S = 15.0


class Changes:
    """A version number bumped on every event; SSE streams wait for it to move."""

    def __init__(self) -> None:
        self.version = 0
        self.stopping = False
        self._moved = asyncio.Condition()

    async def bump(self) -> None:
        async with self._moved:
            self.version += 1
            self._moved.notify_all()

    async def stop(self) -> None:
        async with self._moved:
            self.stopping = True
            self._moved.notify_all()

    async def wait_past(self, version: int, timeout: float) -> int:
        """The version once it is past ``version`` (or as it is after ``timeout``)."""
        async with self._moved:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._moved.wait_for(lambda: self.version > version or self.stopping),
                    timeout,
                )
            return self.version


@contextlib.asynccontextmanager
async def following(config: Config, changes: Changes) -> AsyncIterator[bool]:
    """Bump ``changes`` on every event of the cluster for the block; yields whether NATS
    could be reached."""
    try:
        bus = await connect(config, name="tusk-console")
    except Unavailable as exc:
        log.warning("pages will not update live: %s", exc.message)
        yield False
        return
    try:
        async with bus.watch(subject_filter(config.nats_prefix)) as changed:

            async def forward() -> None:
                while True:
                    await changed.wait()
                    changed.clear()
                    await changes.bump()
                    # Events come in bursts (a job's datums); one refresh per burst.
                    await asyncio.sleep(0.2)

            task = asyncio.create_task(forward(), name="console-follow-events")
            try:
                yield True
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        await bus.close()


CHANGES: web.AppKey[Changes] = web.AppKey("console_changes", Changes)


async def event_stream(request: web.Request, changes: Changes) -> web.StreamResponse:
    """``GET /events``: a ``change`` event whenever the cluster changed, a comment now and
    then to keep proxies from closing an idle stream."""
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
    )
    await response.prepare(request)
    seen = changes.version
    try:
        await response.write(b"retry: 2000\n\n")
        while not changes.stopping and not gone(request):
            now = await changes.wait_past(seen, KEEPALIVE_S)
            if changes.stopping:
                break
            if now > seen:
                seen = now
                await response.write(f"event: change\ndata: {now}\n\n".encode())
            else:
                await response.write(b": keepalive\n\n")
    except ConnectionResetError:
        pass  # the page went away between two writes
    return response


def gone(request: web.Request) -> bool:
    """Whether the browser hung up (a page left: its streams end here too)."""
    return request.transport is None or request.transport.is_closing()
