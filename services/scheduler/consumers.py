"""The scheduler's JetStream calls, in one place: durable pull consumers, task publishes,
and forgetting a deleted pipeline's queue.

Kept apart from the job logic so the move of consumers behind ``shared.platform.bus``
(per-message ack, poison messages terminated, ``max_deliver``) changes this module only.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from shared.platform.bus import Bus, tasks_stream_name, tasks_subject
from shared.platform.config import Config
from shared.platform.errors import TuskError, Unavailable

log = logging.getLogger("tusk.scheduler")

# A batch that failed for a passing cause comes back after this, not after the ack wait.
REDELIVER_AFTER_S = 1.0

Handler = Callable[[list[bytes]], Awaitable[None]]


async def pull(
    bus: Bus,
    stream: str,
    subject: str,
    durable: str,
    handle: Handler,
    *,
    deliver_new: bool = False,
) -> None:
    """Handle the messages of a durable pull consumer a batch at a time, acking them once
    ``handle`` returns; a ``TuskError`` leaves the batch for redelivery (handlers are
    idempotent)."""
    config = ConsumerConfig(
        durable_name=durable,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=60,
        deliver_policy=DeliverPolicy.NEW if deliver_new else DeliverPolicy.ALL,
        max_ack_pending=1000,
    )
    try:
        sub = await bus.js.pull_subscribe(subject, durable=durable, stream=stream, config=config)
    except nats.errors.Error as exc:
        raise Unavailable(f"{durable}: cannot subscribe: {exc!r}") from exc
    try:
        while True:
            try:
                msgs = await sub.fetch(batch=50, timeout=1.0)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            except nats.errors.Error as exc:
                raise Unavailable(f"{durable}: fetching: {exc!r}") from exc
            try:
                await handle([msg.data for msg in msgs])
            except TuskError as exc:
                # Redelivered soon, when the cause (PostgreSQL restarting…) may be gone.
                log.warning("%s: %s; will retry", durable, exc.message)
                await _redeliver(msgs)
                continue
            except Exception:
                # A bug must not stop the consumer for good: log it, retry the batch later.
                log.exception("%s: unexpected error; the batch will be redelivered", durable)
                continue
            for msg in msgs:
                await msg.ack()
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def _redeliver(msgs: list[Any]) -> None:
    with contextlib.suppress(nats.errors.Error):
        for msg in msgs:
            await msg.nak(delay=REDELIVER_AFTER_S)


async def publish_task(bus: Bus, subject: str, payload: bytes, msg_id: str) -> None:
    """Queue one datum task; ``msg_id`` (job:datum) makes a re-publish a no-op."""
    await bus.js.publish(subject, payload, headers={"Nats-Msg-Id": msg_id})


async def forget_tasks(bus: Bus, config: Config, pipeline: str, consumer: str) -> None:
    """A deleted pipeline's queued tasks and its workers' consumer go with it."""
    stream = tasks_stream_name(config)
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await bus.js.purge_stream(stream, subject=tasks_subject(config, pipeline))
        await bus.js.delete_consumer(stream, consumer)
