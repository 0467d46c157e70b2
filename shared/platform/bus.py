"""The event bus: NATS JetStream streams for events and for datum tasks.

Three streams per prefix (a deployment's prefix is ``tusk``; tests use fresh ones):

- ``<PREFIX>_EVENTS`` holds ``<prefix>.pfs.>`` and ``<prefix>.pps.>``: the events of
  ``shared.api.events``, published with ``Nats-Msg-Id`` = event id so a re-sent event
  (an outbox relay that crashed before deleting its row) is stored once.
- ``<PREFIX>_TASKS`` holds ``<prefix>.tasks.>`` with WorkQueue retention: each datum
  task is removed once a worker acks it.
- ``<PREFIX>_RESULTS`` holds ``<prefix>.results.>``: datum results from workers to the
  scheduler, published with ``Nats-Msg-Id`` = job and datum id so a datum's result counts once.

nats-py's errors are translated here into ``shared.platform.errors``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js.api import (
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.client import JetStreamContext

from shared.api.events import Event
from shared.platform.config import Config
from shared.platform.errors import FailedPrecondition, Internal, InvalidArgument, Unavailable

log = logging.getLogger(__name__)

# How long JetStream remembers a message id to drop a duplicate. An outbox relay re-sends
# within seconds of restarting; ten minutes leaves room for a slow restart while keeping
# the server's id memory small.
DUPLICATE_WINDOW_S = 600.0
# Events are kept a week so a consumer that was down can catch up by replaying.
EVENTS_MAX_AGE_S = 7 * 24 * 3600.0
PUBLISH_TIMEOUT_S = 5.0

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

    async def close(self) -> None:
        """Flush and close the connection (idempotent)."""
        if not self.nc.is_closed:
            with contextlib.suppress(*_NATS_ERRORS):
                await self.nc.drain()
            if not self.nc.is_closed:
                await self.nc.close()

    async def __aenter__(self) -> Bus:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


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
