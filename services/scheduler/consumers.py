"""The scheduler's use of the bus, in one place: its durable consumers, task publishes,
and forgetting a deleted pipeline's queue.

Every message is checked on its own before its batch is handled (``shared.platform.bus``'s
``Bus.consume``): one that cannot be read is terminated with its reason in the log,
never redelivered, and never holds back the good ones beside it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from services.scheduler.tasks import DatumResult
from shared.api.events import Event
from shared.platform.bus import Bus, Delivery, DurableConsumer, tasks_stream_name, tasks_subject
from shared.platform.config import Config
from shared.platform.errors import InvalidArgument

Handler = Callable[[list[bytes]], Awaitable[None]]
Decoder = Callable[[Delivery], bytes]


def check_event(delivery: Delivery) -> bytes:
    """The message's bytes if they are an event (``InvalidArgument`` otherwise)."""
    Event.from_bytes(delivery.data)
    return delivery.data


def check_result(delivery: Delivery) -> bytes:
    """The message's bytes if they are a datum result envelope (``InvalidArgument`` otherwise)."""
    try:
        body = json.loads(delivery.data)
        for key in ("job_id", "datum_id", "pipeline"):
            if not isinstance(body[key], str):
                raise TypeError(f"{key} is not a string")
        int(body.get("attempts", 1))
        DatumResult.from_json(body["result"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument(f"malformed datum result: {exc!r}") from None
    return delivery.data


async def pull(
    bus: Bus,
    stream: str,
    subject: str,
    durable: str,
    handle: Handler,
    *,
    deliver_new: bool = False,
    decode: Decoder = check_event,
) -> None:
    """Handle the messages of a durable consumer in batches until cancelled: ``decode``
    checks each one alone (a bad one is terminated), ``handle`` gets the good ones'
    bytes (handlers are idempotent: a batch may come again after a passing failure)."""
    consumer = DurableConsumer(stream, durable, subject, deliver_new=deliver_new)
    await bus.consume(consumer, decode, handle)


async def publish_task(bus: Bus, subject: str, payload: bytes, msg_id: str) -> None:
    """Queue one datum task; ``msg_id`` (job:datum) makes a re-publish a no-op."""
    await bus.publish_raw(subject, payload, msg_id)


async def forget_tasks(bus: Bus, config: Config, pipeline: str, consumer: str) -> None:
    """A deleted pipeline's queued tasks and its workers' consumer go with it."""
    stream = tasks_stream_name(config)
    await bus.purge_subject(stream, tasks_subject(config, pipeline))
    await bus.delete_consumer(stream, consumer)
