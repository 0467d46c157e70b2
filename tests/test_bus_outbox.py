"""Events, the JetStream bus and the transactional outbox, against real PostgreSQL and NATS."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from shared.api.events import (
    CommitFinished,
    Event,
    RepoCreated,
    UnknownPayload,
    subject_filter,
)
from shared.api.pfs_models import CommitRef
from shared.platform.bus import Bus, EventSubscription, connect, tasks_stream_name
from shared.platform.config import Config
from shared.platform.db import create_pool, migrate_shared
from shared.platform.errors import Internal, InvalidArgument, Unavailable
from shared.platform.outbox import OutboxRelay, enqueue
from tests.fixtures.servers import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
# A relay in its own process (config from TUSK_* variables), for the crash test.
RELAY_PROCESS = """
import asyncio, os, pathlib
from shared.platform.bus import Bus, connect
from shared.platform.config import load_config
from shared.platform.db import create_pool
from shared.platform.outbox import OutboxRelay

class PausingBus(Bus):
    # Stops after a publish: the relay is killed before it deletes the row.

    async def publish_raw(self, subject, payload, msg_id):
        result = await super().publish_raw(subject, payload, msg_id)
        await asyncio.sleep(60)
        return result

async def main():
    config = load_config(path=pathlib.Path(os.devnull))
    pool, bus = await create_pool(config), PausingBus((await connect(config)).nc, config)
    async with OutboxRelay(pool, bus):
        await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.fixture
async def bus(tusk_config: Config) -> AsyncIterator[Bus]:
    bus = await connect(tusk_config)
    await bus.ensure_streams()
    yield bus
    await bus.close()


@pytest.fixture
async def pool(tusk_config: Config) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(tusk_config)
    await migrate_shared(pool)
    yield pool
    await pool.close()


def finished(repo: str, n: int) -> Event:
    return Event(CommitFinished(repo=repo, branch="master", commit=f"{n:032x}", size_bytes=n))


async def take(events: EventSubscription, n: int, within: float = 5.0) -> list[Event]:
    async with asyncio.timeout(within):
        return [await anext(events) for _ in range(n)]


async def assert_nothing_more(events: EventSubscription, wait: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(wait):
            extra = await anext(events)
            pytest.fail(f"unexpected extra event {extra}")


async def stored_messages(bus: Bus) -> int:
    info = await bus.js.stream_info(bus.config.stream_name)
    return int(info.state.messages)


async def enqueue_committed(pool: asyncpg.Pool, config: Config, *events: Event) -> None:
    async with pool.acquire() as conn, conn.transaction():
        for event in events:
            await enqueue(conn, event, event.subject(config.nats_prefix))


# ------------------------------------------------------------------------ event schema


def test_event_round_trips_through_bytes_with_typed_payload() -> None:
    event = Event(
        CommitFinished(
            repo="edges",
            branch="master",
            commit="a" * 32,
            parent=None,
            provenance=[CommitRef(repo="images", branch="master", id="b" * 32)],
            size_bytes=42,
            error=None,
        )
    )
    back = Event.from_bytes(event.to_bytes())
    assert back == event
    assert isinstance(back.payload, CommitFinished)
    assert back.payload.provenance[0].repo == "images"
    assert event.subject("tusk") == "tusk.pfs.commit.finished.edges"
    assert len(event.id) == 32 and event.time.endswith("Z")


def test_provenance_keeps_its_old_wire_name_and_old_events_are_still_read() -> None:
    ref = CommitRef(repo="images", branch="master", id="b" * 32)
    event = Event(CommitFinished(repo="edges", branch="master", commit="a" * 32, provenance=[ref]))
    wire = event.to_json()["data"]["provenance"]
    assert wire == [{"repo": "images", "branch": "master", "id": "b" * 32, "commit": "b" * 32}]
    old = b'{"id":"x","type":"commit.finished","time":"t","data":{"repo":"edges",'
    old += b'"branch":"master","commit":"c","provenance":[{"repo":"images","branch":null,'
    old += b'"commit":"dd"}]}}'
    payload = Event.from_bytes(old).payload
    assert isinstance(payload, CommitFinished)
    assert payload.provenance == [CommitRef(repo="images", branch=None, id="dd")]


def test_unknown_event_type_is_kept_raw_and_malformed_events_are_refused() -> None:
    raw = b'{"id":"x","type":"thing.happened","time":"2024-01-01T00:00:00Z","data":{"a":1}}'
    event = Event.from_bytes(raw)
    assert isinstance(event.payload, UnknownPayload)
    assert event.type == "thing.happened" and event.to_json()["data"] == {"a": 1}
    bad_size = b'{"id":"x","type":"commit.finished","time":"t","data":{"repo":"r",'
    bad_size += b'"branch":null,"commit":"c","size_bytes":"big"}}'
    with pytest.raises(InvalidArgument, match="size_bytes"):
        Event.from_bytes(bad_size)
    with pytest.raises(InvalidArgument, match="repo"):
        Event.from_bytes(b'{"id":"x","type":"repo.created","time":"t","data":{}}')
    with pytest.raises(InvalidArgument):
        Event.from_bytes(b"not json")


def test_subject_filter_names_type_and_repo() -> None:
    assert subject_filter("tusk", "commit.finished", "images") == "tusk.pfs.commit.finished.images"
    assert subject_filter("tusk", "repo.created") == "tusk.pfs.repo.created.*"
    with pytest.raises(InvalidArgument, match="unknown event type"):
        subject_filter("tusk", "no.such")


# --------------------------------------------------------------------------------- bus


async def test_connect_to_nothing_is_unavailable() -> None:
    with pytest.raises(Unavailable, match="cannot connect to NATS"):
        await connect(Config(nats_url=f"nats://127.0.0.1:{free_port()}"), connect_timeout=1)


async def test_ensure_streams_is_idempotent_and_tasks_are_a_work_queue(bus: Bus) -> None:
    await bus.ensure_streams()
    info = await bus.js.stream_info(tasks_stream_name(bus.config))
    # nats-py leaves the server's string here rather than the enum.
    assert getattr(info.config.retention, "value", info.config.retention) == "workqueue"


async def test_publish_same_id_twice_is_stored_once(bus: Bus) -> None:
    event = finished("images", 1)
    async with bus.subscribe_events(
        subject_filter(bus.config.nats_prefix, "commit.finished")
    ) as sub:
        first = await bus.publish(event)
        second = await bus.publish(event)
        assert not first.duplicate and second.duplicate
        assert await take(sub, 1) == [event]
        await assert_nothing_more(sub)


async def test_subscription_filters_by_repo_and_replays_with_deliver_all(bus: Bus) -> None:
    prefix = bus.config.nats_prefix
    await bus.publish(Event(RepoCreated(repo="a")))
    await bus.publish(Event(RepoCreated(repo="b")))
    async with bus.subscribe_events(subject_filter(prefix, "repo.created", "b"), "all") as sub:
        got = await take(sub, 1)
        assert [e.payload.subject_key() for e in got] == ["b"]
        await assert_nothing_more(sub)


# ------------------------------------------------------------------------------ outbox


async def test_outbox_events_arrive_once_in_order(
    tusk_config: Config, bus: Bus, pool: asyncpg.Pool
) -> None:
    events = [finished("images", n) for n in range(20)]
    async with bus.subscribe_events() as sub, OutboxRelay(pool, bus, poll_interval=5):
        for i in range(0, 20, 5):
            await enqueue_committed(pool, tusk_config, *events[i : i + 5])
        # LISTEN/NOTIFY wakes the relay; the 5 s poll would be too slow for this timeout.
        assert await take(sub, 20, within=3) == events
        await assert_nothing_more(sub)
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0


async def test_event_of_rolled_back_transaction_is_never_published(
    tusk_config: Config, bus: Bus, pool: asyncpg.Pool
) -> None:
    lost, kept = finished("images", 1), finished("images", 2)
    with pytest.raises(RuntimeError):
        async with pool.acquire() as conn, conn.transaction():
            await enqueue(conn, lost, lost.subject(tusk_config.nats_prefix))
            raise RuntimeError("the state change failed")
    await enqueue_committed(pool, tusk_config, kept)
    async with bus.subscribe_events(deliver="all") as sub:
        async with OutboxRelay(pool, bus) as relay:
            await relay.drain()
        assert await take(sub, 1) == [kept]
        await assert_nothing_more(sub)
    assert await stored_messages(bus) == 1


async def test_enqueue_outside_a_transaction_is_refused(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(Internal, match="transaction"):
            await enqueue(conn, finished("r", 1), "t.pfs.commit.finished.r")


async def test_relay_started_later_catches_up(
    tusk_config: Config, bus: Bus, pool: asyncpg.Pool
) -> None:
    events = [finished("images", n) for n in range(3)]
    await enqueue_committed(pool, tusk_config, *events)
    async with bus.subscribe_events(deliver="all") as sub, OutboxRelay(pool, bus):
        assert await take(sub, 3) == events


async def test_relay_killed_between_publish_and_delete_is_deduplicated(
    tusk_config: Config, bus: Bus, pool: asyncpg.Pool
) -> None:
    event = finished("images", 7)
    await enqueue_committed(pool, tusk_config, event)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "TUSK_DATABASE_URL": tusk_config.database_url,
        "TUSK_NATS_URL": tusk_config.nats_url,
        "TUSK_NATS_PREFIX": tusk_config.nats_prefix,
    }
    async with bus.subscribe_events(deliver="all") as sub:
        relay = await asyncio.create_subprocess_exec(
            sys.executable, "-c", RELAY_PROCESS, env=env, cwd=REPO_ROOT
        )
        try:
            # The event reaching us means the relay published and now sleeps before deleting.
            assert await take(sub, 1, within=15) == [event]
        finally:
            relay.send_signal(signal.SIGKILL)
            await relay.wait()
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 1
        started = time.monotonic()
        async with OutboxRelay(pool, bus) as restarted:
            await restarted.drain()
            assert restarted.published == 1  # it did send the event again...
        assert time.monotonic() - started < 5
        await assert_nothing_more(sub)  # ...and JetStream dropped the duplicate
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
    assert await stored_messages(bus) == 1
