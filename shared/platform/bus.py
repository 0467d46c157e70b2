"""The event bus: NATS JetStream streams for events and for datum tasks.

Three streams per prefix (a deployment's prefix is ``tusk``; tests use fresh ones):

- ``<PREFIX>_EVENTS`` holds ``<prefix>.pfs.>`` and ``<prefix>.pps.>``: the events of
  ``shared.api.events``, published with ``Nats-Msg-Id`` = event id so a re-sent event
  (an outbox relay that crashed before deleting its row) is stored once.
- ``<PREFIX>_TASKS`` holds ``<prefix>.tasks.>`` with WorkQueue retention: each datum
  task is removed once a worker acks it.
- ``<PREFIX>_RESULTS`` holds ``<prefix>.results.>``: datum results from workers to the
  scheduler, published with ``Nats-Msg-Id`` = job and datum id so a datum's result counts once.

Services read the work streams through durable pull consumers (``DurableConsumer``,
``Bus.pull``, ``Bus.consume``): each message is decoded and settled on its own — the good
acked, a poison message terminated with a logged reason, a transient failure
(``Unavailable``) NAKed with a delay that grows with its deliveries — and every consumer
has a ``max_deliver``, so no message is redelivered forever. nats-py's errors are
translated here into ``shared.platform.errors``; no service module imports ``nats``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.client import JetStreamContext

from shared.platform.config import Config
from shared.platform.envelope import Event
from shared.platform.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    TuskError,
    Unavailable,
)

log = logging.getLogger(__name__)

# How long JetStream remembers a message id to drop a duplicate. An outbox relay re-sends
# within seconds of restarting; ten minutes leaves room for a slow restart while keeping
# the server's id memory small.
DUPLICATE_WINDOW_S = 600.0
# Events are kept a week so a consumer that was down can catch up by replaying.
EVENTS_MAX_AGE_S = 7 * 24 * 3600.0
PUBLISH_TIMEOUT_S = 5.0
# How long closing a connection may wait for its subscriptions to drain.
CLOSE_DRAIN_LIMIT_S = 1.0

_NATS_ERRORS = (nats.errors.Error, OSError, TimeoutError)


def events_stream_config(config: Config) -> StreamConfig:
    """The configuration of the events stream of ``config.nats_prefix``."""
    prefix = config.nats_prefix
    return StreamConfig(
        name=config.stream_name,
        subjects=[f"{prefix}.pfs.>", f"{prefix}.pps.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=EVENTS_MAX_AGE_S,
        duplicate_window=DUPLICATE_WINDOW_S,
        discard=DiscardPolicy.OLD,
    )


def tasks_stream_name(config: Config) -> str:
    return f"{config.nats_prefix.upper()}_TASKS"


def tasks_subject(config: Config, pipeline: str) -> str:
    """Subject of the datum tasks of one pipeline: ``<prefix>.tasks.<pipeline>``."""
    return f"{config.nats_prefix}.tasks.{pipeline}"


def tasks_stream_config(config: Config) -> StreamConfig:
    """The work-queue stream of datum tasks: a message is gone once a worker acks it."""
    return StreamConfig(
        name=tasks_stream_name(config),
        subjects=[f"{config.nats_prefix}.tasks.>"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_S,
    )


def results_stream_name(config: Config) -> str:
    return f"{config.nats_prefix.upper()}_RESULTS"


def results_subject(config: Config, pipeline: str) -> str:
    """Subject of datum results of one pipeline: ``<prefix>.results.<pipeline>``."""
    return f"{config.nats_prefix}.results.{pipeline}"


def results_stream_config(config: Config) -> StreamConfig:
    """Datum results, from workers to the scheduler; deduplicated by job and datum id."""
    return StreamConfig(
        name=results_stream_name(config),
        subjects=[f"{config.nats_prefix}.results.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=EVENTS_MAX_AGE_S,
        duplicate_window=DUPLICATE_WINDOW_S,
    )


def all_stream_names(config: Config) -> list[str]:
    return [config.stream_name, tasks_stream_name(config), results_stream_name(config)]


@dataclass(frozen=True)
class PublishResult:
    """Where JetStream stored a message; ``duplicate`` if it had seen the id already."""

    seq: int
    duplicate: bool


class Bus:
    """A connection to NATS with JetStream; create with ``await connect(config)``."""

    def __init__(self, nc: NatsClient, config: Config) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.config = config

    @property
    def connected(self) -> bool:
        """Whether NATS is reachable now: False while the client reconnects (the server is
        away), not only once the connection is closed for good. Readiness probes use it."""
        return bool(self.nc.is_connected)

    async def ensure_streams(self) -> None:
        """Create the events and tasks streams, or bring their configuration up to date."""
        for stream in (
            events_stream_config(self.config),
            tasks_stream_config(self.config),
            results_stream_config(self.config),
        ):
            await self._ensure_stream(stream)

    async def _ensure_stream(self, stream: StreamConfig) -> None:
        try:
            try:
                await self.js.stream_info(str(stream.name))
            except nats.js.errors.NotFoundError:
                try:
                    await self.js.add_stream(stream)
                    return
                except nats.js.errors.BadRequestError:
                    pass  # another process created it meanwhile, maybe differently: update
            await self.js.update_stream(stream)
        except nats.js.errors.BadRequestError as exc:
            raise FailedPrecondition(f"stream {stream.name}: {exc.description}") from exc
        except _NATS_ERRORS as exc:
            raise Unavailable(f"NATS at {self.config.nats_url}: {_reason(exc)}") from exc

    async def publish(self, event: Event) -> PublishResult:
        """Publish ``event`` on its subject and wait until JetStream has stored it."""
        return await self.publish_raw(
            event.subject(self.config.nats_prefix), event.to_bytes(), event.id
        )

    async def publish_raw(self, subject: str, payload: bytes, msg_id: str) -> PublishResult:
        """Publish bytes with ``Nats-Msg-Id: msg_id``; what the outbox relay sends."""
        try:
            ack = await self.js.publish(
                subject, payload, timeout=PUBLISH_TIMEOUT_S, headers={"Nats-Msg-Id": msg_id}
            )
        except nats.js.errors.NoStreamResponseError as exc:
            raise FailedPrecondition(
                f"no stream stores {subject!r}: streams not created (Bus.ensure_streams)"
            ) from exc
        except _NATS_ERRORS as exc:
            raise Unavailable(
                f"publishing to NATS at {self.config.nats_url}: {_reason(exc)}"
            ) from exc
        return PublishResult(seq=ack.seq, duplicate=bool(ack.duplicate))

    async def ensure_consumer(self, consumer: DurableConsumer) -> int:
        """Create ``consumer``, or update it in place, so that it redelivers a message at
        least ``consumer.max_deliver`` times (never fewer than it already allowed: readers
        of one consumer may ask for different bounds); return its ``max_deliver``."""
        try:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                info = await self.js.consumer_info(consumer.stream, consumer.name)
                current = info.config.max_deliver
                # -1 (unlimited) comes from consumers made before max_deliver was set.
                if current is not None and current >= consumer.max_deliver:
                    return int(current)
            # JetStream creates the consumer, or updates it when it exists differently.
            info = await self.js.add_consumer(consumer.stream, consumer.config())
        except nats.js.errors.BadRequestError as exc:
            raise FailedPrecondition(f"consumer {consumer.name}: {exc.description}") from exc
        except _NATS_ERRORS as exc:
            raise Unavailable(f"consumer {consumer.name}: {_reason(exc)}") from exc
        return int(info.config.max_deliver or consumer.max_deliver)

    @contextlib.asynccontextmanager
    async def pull(self, consumer: DurableConsumer) -> AsyncIterator[PullConsumer]:
        """Read ``consumer`` (made sure of first) for the block; settle every delivery."""
        max_deliver = await self.ensure_consumer(consumer)
        try:
            sub = await self.js.pull_subscribe_bind(durable=consumer.name, stream=consumer.stream)
        except _NATS_ERRORS as exc:
            raise Unavailable(f"{consumer.name}: cannot subscribe: {_reason(exc)}") from exc
        try:
            yield PullConsumer(consumer, sub, max_deliver)
        finally:
            with contextlib.suppress(*_NATS_ERRORS):
                await sub.unsubscribe()

    async def consume(
        self,
        consumer: DurableConsumer,
        decode: Callable[[Delivery], T],
        handle: Callable[[list[T]], Awaitable[None]],
        *,
        batch: int = 50,
    ) -> None:
        """Run until cancelled: fetch up to ``batch`` messages, decode each on its own
        (one that cannot be decoded is poison: terminated with its reason in the log),
        give the decoded ones to ``handle`` and ack them. When ``handle`` raises
        ``Unavailable`` the batch is NAKed for a later redelivery; when it raises anything
        else the messages are handled one by one, so a bad one cannot hold back the
        good; it is redelivered with a growing delay until ``max_deliver``, then
        terminated. ``Unavailable`` from NATS itself ends the loop (callers retry)."""
        async with self.pull(consumer) as reader:
            while True:
                deliveries = await reader.fetch(batch, timeout=1.0)
                good: list[tuple[Delivery, T]] = []
                for delivery in deliveries:
                    try:
                        good.append((delivery, decode(delivery)))
                    except Exception as exc:
                        await delivery.term(f"cannot be decoded: {_reason(exc)}")
                if good:
                    await _settle(reader, good, handle)

    @contextlib.asynccontextmanager
    async def watch(self, subject: str) -> AsyncIterator[asyncio.Event]:
        """An event set whenever a message on ``subject`` (wildcards allowed) is published,
        for the block: a plain NATS subscription, nothing stored. The server knows of the
        interest before the block starts, so a state checked inside the block after
        ``clear()`` cannot miss a change announced later."""
        changed = asyncio.Event()

        async def on_message(_msg: Msg) -> None:
            changed.set()

        try:
            sub = await self.nc.subscribe(subject, cb=on_message)
            await self.nc.flush(timeout=int(PUBLISH_TIMEOUT_S))
        except _NATS_ERRORS as exc:
            raise Unavailable(f"watching {subject}: {_reason(exc)}") from exc
        try:
            yield changed
        finally:
            with contextlib.suppress(*_NATS_ERRORS):
                await sub.unsubscribe()

    async def purge_subject(self, stream: str, subject: str) -> None:
        """Drop every message of ``subject`` from ``stream`` (a deleted pipeline's tasks)."""
        try:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await self.js.purge_stream(stream, subject=subject)
        except _NATS_ERRORS as exc:
            raise Unavailable(f"purging {subject}: {_reason(exc)}") from exc

    async def delete_consumer(self, stream: str, name: str) -> None:
        """Delete a durable consumer; one that is not there is already gone."""
        try:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await self.js.delete_consumer(stream, name)
        except _NATS_ERRORS as exc:
            raise Unavailable(f"deleting consumer {name}: {_reason(exc)}") from exc

    def subscribe_events(
        self, subject_filter: str | None = None, deliver: Literal["new", "all"] = "new"
    ) -> EventSubscription:
        """Events matching ``subject_filter`` (default: all), from now on or from the start.

        Use as ``async with bus.subscribe_events(f) as events: async for event in events``;
        leaving the block deletes the server-side (ephemeral, ordered) consumer.
        """
        prefix = self.config.nats_prefix
        filters = [subject_filter] if subject_filter else [f"{prefix}.pfs.>", f"{prefix}.pps.>"]
        if deliver not in ("new", "all"):
            raise InvalidArgument(f"deliver must be 'new' or 'all', not {deliver!r}")
        return EventSubscription(self, filters, deliver)

    async def close(self, drain_limit: float = CLOSE_DRAIN_LIMIT_S) -> None:
        """Drain (at most ``drain_limit`` seconds), then close the connection (idempotent).

        The client's own drain waits up to 30 s for subscriptions to empty; a process
        being stopped must not: what a consumer fetched but did not ack is redelivered
        anyway, and ``close()`` still flushes what was published."""
        if not self.nc.is_closed:
            with contextlib.suppress(*_NATS_ERRORS):
                await asyncio.wait_for(self.nc.drain(), drain_limit)
            if not self.nc.is_closed:
                with contextlib.suppress(*_NATS_ERRORS):
                    await self.nc.close()

    async def __aenter__(self) -> Bus:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


T = TypeVar("T")

# A message NAKed for a passing cause comes back after this, doubled per delivery up to
# the maximum: an outage of PostgreSQL then costs few deliveries of max_deliver.
REDELIVER_FIRST_S = 1.0
REDELIVER_MAX_S = 30.0
# Deliveries before a message that keeps failing is terminated. With the delays above,
# 100 deliveries outlast a 45-minute outage of a dependency.
DEFAULT_MAX_DELIVER = 100
# How long a stopping reader tries to hand its unsettled messages back.
HAND_BACK_S = 1.0


def redelivery_delay(delivered: int) -> float:
    """How long a message NAKed at its ``delivered``-th delivery waits to come back."""
    return min(REDELIVER_FIRST_S * 2 ** max(0, delivered - 1), REDELIVER_MAX_S)


@dataclass(frozen=True)
class DurableConsumer:
    """A durable pull consumer: JetStream keeps its place, so a restarted reader resumes
    where the last one stopped, and hands a message out again until it is settled."""

    stream: str
    name: str
    subject: str
    ack_wait: float = 60.0
    max_deliver: int = DEFAULT_MAX_DELIVER
    deliver_new: bool = False
    max_ack_pending: int = 1000

    def config(self) -> ConsumerConfig:
        return ConsumerConfig(
            name=self.name,
            durable_name=self.name,
            filter_subject=self.subject,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            deliver_policy=DeliverPolicy.NEW if self.deliver_new else DeliverPolicy.ALL,
            max_ack_pending=self.max_ack_pending,
            max_deliver=self.max_deliver,
        )


class Delivery:
    """One message of a durable consumer, as a reader sees it; settle it once (``ack``,
    ``nak`` or ``term``). Settling raises ``Unavailable`` when NATS is away: the message
    then comes back after the consumer's ``ack_wait``."""

    def __init__(self, msg: Msg, consumer: str) -> None:
        self._msg = msg
        self.consumer = consumer
        self.subject: str = msg.subject
        self.data: bytes = msg.data
        self.delivered: int = int(msg.metadata.num_delivered or 1)
        self.msg_id: str | None = (msg.headers or {}).get("Nats-Msg-Id")

    async def ack(self) -> None:
        await self._settle("acking", self._msg.ack())

    async def nak(self, delay: float | None = None) -> None:
        """Hand the message back for redelivery after ``delay`` seconds (default: a delay
        that grows with its deliveries)."""
        wait = redelivery_delay(self.delivered) if delay is None else delay
        await self._settle("nak", self._msg.nak(delay=wait))

    async def term(self, reason: str) -> None:
        """Never deliver this message again; ``reason`` goes to the log with it."""
        log.error(
            "%s: terminating message %s on %s (delivery %d): %s",
            self.consumer, self.msg_id or "-", self.subject, self.delivered, reason,
        )  # fmt: skip
        await self._settle("term", self._msg.term())

    async def in_progress(self) -> None:
        """Still working on it: restart the consumer's ``ack_wait`` for this message."""
        await self._settle("in progress", self._msg.in_progress())

    async def _settle(self, what: str, call: Awaitable[Any]) -> None:
        try:
            await call
        except _NATS_ERRORS as exc:
            raise Unavailable(f"{self.consumer}: {what}: {_reason(exc)}") from exc


class PullConsumer:
    """A bound durable pull consumer (``Bus.pull``): fetch deliveries, settle each."""

    def __init__(self, consumer: DurableConsumer, sub: Any, max_deliver: int) -> None:
        self.consumer = consumer
        self._sub = sub
        # The consumer's max_deliver as last made sure of (it may have been higher).
        self.max_deliver = max_deliver

    async def fetch(self, batch: int = 1, timeout: float = 1.0) -> list[Delivery]:
        """Up to ``batch`` deliveries; none if nothing arrived within ``timeout`` seconds."""
        try:
            msgs = await self._sub.fetch(batch=batch, timeout=timeout)
        except (nats.errors.TimeoutError, TimeoutError):
            return []
        except _NATS_ERRORS as exc:
            raise Unavailable(f"{self.consumer.name}: fetching: {_reason(exc)}") from exc
        return [Delivery(msg, self.consumer.name) for msg in msgs]


async def _settle(
    reader: PullConsumer,
    good: Sequence[tuple[Delivery, T]],
    handle: Callable[[list[T]], Awaitable[None]],
) -> None:
    """Hand decoded messages to ``handle`` together, else one by one (see ``Bus.consume``)."""
    name = reader.consumer.name
    try:
        await handle([value for _, value in good])
    except Unavailable as exc:
        log.warning("%s: %s; %d message(s) will be redelivered", name, exc.message, len(good))
        for delivery, _ in good:
            await _retry_or_term(reader, delivery, exc)
        return
    except asyncio.CancelledError:
        await _hand_back(good)
        raise
    except Exception as exc:
        if len(good) == 1:
            _log_failure(name, exc)
            await _retry_or_term(reader, good[0][0], exc)
            return
        log.warning("%s: a batch of %d failed (%s); handling one by one", name, len(good), exc)
        for one in good:
            await _settle(reader, [one], handle)
        return
    for delivery, _ in good:
        await delivery.ack()


async def _hand_back(good: Sequence[tuple[Delivery, T]]) -> None:
    """The reader stops mid-batch (its service lost the lead, or shuts down): NAK the batch
    for an immediate redelivery, to this replica's successor, rather than leave it for the
    consumer's ``ack_wait``. A handler cut off halfway runs again from the start, as it would
    after a crash (handlers are idempotent). Best effort: NATS may be the thing that went."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(HAND_BACK_S):
            for delivery, _ in good:
                await delivery.nak(delay=0)


def _log_failure(name: str, exc: Exception) -> None:
    if isinstance(exc, TuskError):
        log.warning("%s: %s", name, exc.message)
    else:
        log.error("%s: unexpected error", name, exc_info=exc)


async def _retry_or_term(reader: PullConsumer, delivery: Delivery, exc: Exception) -> None:
    """NAK for a later try; at the last delivery JetStream allows, terminate with a reason
    (JetStream would stop silently)."""
    if delivery.delivered >= reader.max_deliver > 0:
        reason = exc.message if isinstance(exc, TuskError) else f"{type(exc).__name__}: {exc}"
        await delivery.term(f"failed at each of {delivery.delivered} deliveries: {reason}")
    else:
        await delivery.nak()


class EventSubscription:
    """An ordered, ephemeral JetStream consumer read as an async iterator of ``Event``."""

    def __init__(self, bus: Bus, filters: list[str], deliver: Literal["new", "all"]) -> None:
        self._bus = bus
        self._filters = filters
        self._deliver = DeliverPolicy.NEW if deliver == "new" else DeliverPolicy.ALL
        self._sub: Any = None
        self._messages: AsyncIterator[Any] | None = None

    async def start(self) -> None:
        """Create the consumer; events published after this returns are delivered."""
        if self._sub is not None:
            return
        try:
            self._sub = await self._bus.js.subscribe(
                self._filters[0],
                stream=self._bus.config.stream_name,
                ordered_consumer=True,
                deliver_policy=self._deliver,
                config=ConsumerConfig(filter_subjects=self._filters),
            )
        except nats.js.errors.NotFoundError as exc:
            raise FailedPrecondition(
                f"stream {self._bus.config.stream_name} does not exist (Bus.ensure_streams)"
            ) from exc
        except _NATS_ERRORS as exc:
            raise Unavailable(
                f"subscribing at {self._bus.config.nats_url}: {_reason(exc)}"
            ) from exc
        self._messages = self._sub.messages

    async def aclose(self) -> None:
        """Stop receiving and delete the consumer (idempotent)."""
        sub, self._sub = self._sub, None
        if sub is not None and not self._bus.nc.is_closed:
            with contextlib.suppress(*_NATS_ERRORS):
                await sub.unsubscribe()

    async def __aenter__(self) -> EventSubscription:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __aiter__(self) -> EventSubscription:
        return self

    async def __anext__(self) -> Event:
        if self._messages is None:
            await self.start()
        assert self._messages is not None
        while True:
            try:
                msg = await self._messages.__anext__()
            except StopAsyncIteration:
                raise
            except _NATS_ERRORS as exc:
                raise Unavailable(f"receiving events: {_reason(exc)}") from exc
            try:
                return Event.from_bytes(msg.data)
            except InvalidArgument as exc:
                # A malformed message must not stop a reader; it is logged and skipped.
                log.warning("skipping malformed event on %s: %s", msg.subject, exc.message)


async def connect(config: Config, *, name: str = "tusk", connect_timeout: float = 5.0) -> Bus:
    """Connect to ``config.nats_url``; raise ``Unavailable`` if NATS cannot be reached."""

    async def on_error(exc: Exception) -> None:
        log.warning("NATS %s: %s", config.nats_url, _reason(exc))

    try:
        nc = await nats.connect(
            config.nats_url,
            name=name,
            connect_timeout=connect_timeout,
            error_cb=on_error,
            # nats-py applies this to the first connection too: fail fast when NATS is absent.
            max_reconnect_attempts=1,
            reconnect_time_wait=0.2,
        )
    except _NATS_ERRORS as exc:
        raise Unavailable(f"cannot connect to NATS at {config.nats_url}: {_reason(exc)}") from exc
    except Exception as exc:  # nats-py raises bare errors for some refusals
        raise Internal(f"connecting to NATS at {config.nats_url}: {_reason(exc)}") from exc
    # Once connected, reconnect forever: a NATS restart must not kill a long-running service.
    nc.options["max_reconnect_attempts"] = -1
    nc.options["reconnect_time_wait"] = 1.0
    return Bus(nc, config)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
