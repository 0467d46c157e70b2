"""Durable consumers behind the bus (real NATS): every message is settled on its own.

A poison message among good ones is terminated with a logged reason while the good are
handled exactly once; a message whose handling keeps failing is terminated at its
``max_deliver``; a passing failure (``Unavailable``) is NAKed and handled once later.
Nothing is left for JetStream to redeliver.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from shared.platform.bus import Bus, Delivery, DurableConsumer, connect, results_stream_name
from shared.platform.config import Config
from shared.platform.errors import InvalidArgument, Unavailable

MAX_DELIVER = 3


@pytest.fixture
async def bus(tusk_config: Config) -> AsyncIterator[Bus]:
    connected = await connect(tusk_config)
    await connected.ensure_streams()
    yield connected
    await connected.close()


def decode(delivery: Delivery) -> str:
    text = delivery.data.decode()
    if not text.startswith("good:") and not text.startswith("fails:"):
        raise InvalidArgument(f"not a message of this test: {text!r}")
    return text


async def test_a_poison_message_among_good_ones_is_terminated_and_the_good_handled_once(
    bus: Bus, tusk_config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    stream = results_stream_name(tusk_config)
    subject = f"{tusk_config.nats_prefix}.results.poison-test"
    consumer = DurableConsumer(stream, "poison-test", subject, ack_wait=2, max_deliver=MAX_DELIVER)
    handled: Counter[str] = Counter()
    calls: list[list[str]] = []
    unavailable_once = {"good:7"}
    good = [f"good:{i}" for i in range(20)]
    # Every good one handled, and the failing one delivered as often as it may be.
    done = asyncio.Event()

    async def handle(batch: list[str]) -> None:
        calls.append(batch)
        try:
            await handle_or_fail(batch)
        finally:
            if set(handled) == set(good) and calls.count(["fails:bug"]) >= MAX_DELIVER:
                done.set()

    async def handle_or_fail(batch: list[str]) -> None:
        if "fails:bug" in batch:
            raise RuntimeError("a handler bug this message triggers")
        flaky = unavailable_once & set(batch)
        if flaky:
            unavailable_once.clear()
            raise Unavailable("PostgreSQL is restarting")
        handled.update(batch)

    messages = [*good[:10], "{not json at all", "fails:bug", *good[10:]]
    for i, text in enumerate(messages):
        await bus.publish_raw(subject, text.encode(), f"m{i}")

    caplog.set_level(logging.WARNING, logger="shared.platform.bus")
    reader = asyncio.create_task(bus.consume(consumer, decode, handle))
    try:
        # The bug's message comes back after 1 s then 2 s, and is terminated at its third.
        await asyncio.wait_for(done.wait(), 30)
        await asyncio.sleep(3 * consumer.ack_wait)  # anything left unsettled would be back
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader

    assert handled == Counter(good)  # each good message exactly once, the flaky one too
    # The poison never reached the handler; the failing one was handled alone at each of
    # its MAX_DELIVER deliveries (after failing its first batch), no more.
    assert not any("{not json" in text for batch in calls for text in batch)
    assert calls.count(["fails:bug"]) == MAX_DELIVER
    terminated = [r.getMessage() for r in caplog.records if "terminating message" in r.getMessage()]
    assert len(terminated) == 2
    assert any("m10" in line and "cannot be decoded" in line for line in terminated)
    assert any(
        "m11" in line and f"failed at each of {MAX_DELIVER} deliveries" in line
        for line in terminated
    )
    info = await bus.js.consumer_info(stream, consumer.name)
    assert (info.num_pending, info.num_ack_pending, info.num_redelivered) == (0, 0, 0)


async def test_consumers_are_bounded_even_when_made_without_max_deliver(
    bus: Bus, tusk_config: Config
) -> None:
    stream = results_stream_name(tusk_config)
    subject = f"{tusk_config.nats_prefix}.results.bounded"
    consumer = DurableConsumer(stream, "bounded", subject)
    assert await bus.ensure_consumer(consumer) == consumer.max_deliver
    raised = DurableConsumer(stream, "bounded", subject, max_deliver=consumer.max_deliver + 5)
    assert await bus.ensure_consumer(raised) == consumer.max_deliver + 5
    # A reader asking for fewer never lowers it.
    assert await bus.ensure_consumer(consumer) == consumer.max_deliver + 5


async def test_a_reader_stopped_mid_batch_hands_it_back_at_once(
    bus: Bus, tusk_config: Config
) -> None:
    """A scheduler that loses its lead cancels its readers while they hold messages: those
    come back to the next reader at once, not after the consumer's ack_wait."""
    stream = results_stream_name(tusk_config)
    subject = f"{tusk_config.nats_prefix}.results.hand-back-test"
    consumer = DurableConsumer(stream, "hand-back-test", subject, ack_wait=60)
    holding = asyncio.Event()

    async def hold(_batch: list[str]) -> None:
        holding.set()
        await asyncio.sleep(3600)

    for i in range(3):
        await bus.publish_raw(subject, f"good:{i}".encode(), f"hb{i}")
    first = asyncio.create_task(bus.consume(consumer, decode, hold))
    await asyncio.wait_for(holding.wait(), 10)
    first.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await first

    handled: list[str] = []
    all_back = asyncio.Event()

    async def handle(batch: list[str]) -> None:
        handled.extend(batch)
        if len(handled) >= 3:
            all_back.set()

    started = asyncio.get_running_loop().time()
    second = asyncio.create_task(bus.consume(consumer, decode, handle))
    try:
        await asyncio.wait_for(all_back.wait(), 10)  # far less than the 60 s ack_wait
    finally:
        second.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await second
    assert sorted(handled) == ["good:0", "good:1", "good:2"]
    assert asyncio.get_running_loop().time() - started < 10
