"""The transactional outbox: an event exists if and only if the state change it describes committed.

A service writes its events into the ``outbox`` table in the same transaction as the
change (``enqueue``). ``OutboxRelay``, owned by the service's lifecycle, publishes the rows
to JetStream in order and deletes them after the ack. If the process dies between the
publish and the delete, the row is published again with the same ``Nats-Msg-Id`` and
JetStream drops the duplicate (within ``shared.platform.bus.DUPLICATE_WINDOW_S``).

Several replicas may run relays: a transaction-scoped advisory lock lets one of them
publish at a time, so events leave in the order they were enqueued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import asyncpg

from shared.platform.bus import Bus
from shared.platform.config import Config
from shared.platform.db import BROKEN_ERRORS, Conn
from shared.platform.envelope import Event, Payload
from shared.platform.errors import Internal, TuskError, Unavailable

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "tusk_outbox"
# Key of the advisory lock that makes one relay at a time publish ("tuskoutb").
RELAY_LOCK_KEY = 0x7475_736B_6F75_7462

# A connection that failed, or was caught mid-operation by a cancel (shutdown while the
# relay was backing off): ``InternalClientError``, which a LISTEN removal can raise then.
_DB_ERRORS: tuple[type[Exception], ...] = (asyncpg.PostgresError, *BROKEN_ERRORS)


async def enqueue(conn: Conn, event: Event, subject: str) -> None:
    """Add ``event`` to the outbox inside the caller's open transaction on ``conn``."""
    if not conn.is_in_transaction():
        raise Internal("outbox.enqueue must run inside the caller's transaction")
    await conn.execute(
        "INSERT INTO outbox (event_id, subject, payload) VALUES ($1, $2, $3)",
        event.id,
        subject,
        event.to_bytes(),
    )
    # Delivered on commit only, and once per transaction however many events it enqueued.
    await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)


async def emit(conn: Conn, config: Config, payload: Payload) -> Event:
    """Record ``payload`` as an event of the caller's open transaction on ``conn``; it is
    published if and only if that transaction commits. Every service emits through this."""
    event = Event(payload)
    await enqueue(conn, event, event.subject(config.nats_prefix))
    return event


class OutboxRelay:
    """Publishes outbox rows to NATS; run it as ``async with OutboxRelay(pool, bus):``.

    Entering starts the relay's task; leaving cancels and awaits it. Between
    notifications it polls every ``poll_interval`` seconds as a safety net.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        bus: Bus,
        *,
        poll_interval: float = 1.0,
        batch_size: int = 100,
    ) -> None:
        self._pool = pool
        self._bus = bus
        self._poll_interval = poll_interval
        self._batch_size = batch_size
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listener: Any = None
        self.published = 0

    async def __aenter__(self) -> OutboxRelay:
        if self._task is not None:
            raise Internal("OutboxRelay entered twice")
        self._task = asyncio.create_task(self._run(), name="outbox-relay")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._stop_listening()

    async def drain(self, max_wait: float = 10.0) -> None:
        """Return once every row enqueued before the call has been published and deleted."""
        deadline = time.monotonic() + max_wait
        while True:
            published = await self.relay_batch()
            if published == 0 and not await self._pending():
                return
            if time.monotonic() > deadline:
                raise Unavailable(f"outbox not drained after {max_wait} s")
            if published is None:  # another relay holds the lock: let it work
                await asyncio.sleep(0.01)

    async def _pending(self) -> bool:
        try:
            return bool(await self._pool.fetchval("SELECT EXISTS (SELECT 1 FROM outbox)"))
        except _DB_ERRORS as exc:
            raise Unavailable(f"reading the outbox: {exc}") from exc

    async def relay_batch(self) -> int | None:
        """Publish and delete up to one batch; the count, or None if another relay is busy."""
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", RELAY_LOCK_KEY):
                    return None
                rows = await conn.fetch(
                    "SELECT seq, event_id, subject, payload FROM outbox"
                    " ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
                    self._batch_size,
                )
                for row in rows:
                    await self._bus.publish_raw(row["subject"], row["payload"], row["event_id"])
                if rows:
                    await conn.execute(
                        "DELETE FROM outbox WHERE seq = ANY($1::bigint[])",
                        [row["seq"] for row in rows],
                    )
        except _DB_ERRORS as exc:
            raise Unavailable(f"relaying the outbox: {exc}") from exc
        self.published += len(rows)
        return len(rows)

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self._listen()
                self._wake.clear()
                published = await self.relay_batch()
                backoff = 0.1
                if published == self._batch_size:
                    continue  # more rows are probably waiting
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._poll_interval)
            except TuskError as exc:
                # NATS or PostgreSQL is away: rows stay in the outbox until it is back.
                log.warning("outbox relay: %s; retrying in %.1f s", exc.message, backoff)
                await self._stop_listening()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _listen(self) -> None:
        """Hold a connection LISTENing on the outbox channel (re-made if it was lost)."""
        if self._listener is not None:
            try:
                if not self._listener.is_closed():
                    return
            except asyncpg.InterfaceError:
                self._listener = None  # the pool took it back (e.g. on close): take another
        await self._stop_listening()
        try:
            conn = await self._pool.acquire()
        except _DB_ERRORS as exc:
            raise Unavailable(f"outbox relay cannot reach PostgreSQL: {exc}") from exc
        try:
            await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
        except BaseException as exc:
            # Give the connection back even when cancelled here, or Pool.close() waits forever.
            with contextlib.suppress(*_DB_ERRORS):
                await self._pool.release(conn)
            if isinstance(exc, _DB_ERRORS):
                raise Unavailable(f"outbox relay cannot LISTEN: {exc}") from exc
            raise
        self._listener = conn

    async def _stop_listening(self) -> None:
        conn, self._listener = self._listener, None
        if conn is None:
            return
        with contextlib.suppress(*_DB_ERRORS):
            if not conn.is_closed():
                await conn.remove_listener(NOTIFY_CHANNEL, self._on_notify)
        with contextlib.suppress(*_DB_ERRORS):
            await self._pool.release(conn)

    def _on_notify(self, *_args: object) -> None:
        self._wake.set()
