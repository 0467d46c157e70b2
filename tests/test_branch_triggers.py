"""Branch heads in PFS: every move is a ``branch.moved`` event; triggers move branches.

A real PFS app (PostgreSQL, NATS, object store); events are read back from JetStream,
where the outbox put them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from services.pfs.api import BUS
from services.pfs.triggers import is_due
from shared.api.events import BranchMoved, subject_filter
from shared.api.pfs_client import PfsClient
from shared.api.pfs_models import Trigger
from shared.platform.errors import InvalidArgument
from tests.fixtures.pfs import RunningPfs

T0 = datetime(2025, 1, 1, tzinfo=UTC)


async def one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def files(items: dict[str, bytes]) -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
    for path, data in items.items():
        yield path, one(data)


async def put(client: PfsClient, repo: str, branch: str, path: str, data: bytes) -> str:
    return (await client.put_files(repo, branch, files({path: data}))).commit.id


async def moves_of(pfs: RunningPfs, repo: str, branch: str) -> list[tuple[str | None, str | None]]:
    """(old head, new head) of every branch.moved event of ``repo@branch`` so far, in order."""
    bus = pfs.runner.app[BUS]
    found: list[tuple[str | None, str | None]] = []
    subject = subject_filter(pfs.config.nats_prefix, "branch.moved", repo)
    async with bus.subscribe_events(subject, deliver="all") as events:
        stream = aiter(events)
        while True:
            try:
                event = await asyncio.wait_for(anext(stream), 1.0)
            except TimeoutError:
                return found
            payload = event.payload
            assert isinstance(payload, BranchMoved)
            if payload.branch == branch:
                found.append((payload.old_head, payload.new_head))


async def head(client: PfsClient, repo: str, branch: str) -> str | None:
    return (await client.inspect_branch(repo, branch)).head


def test_conditions_any_or_all() -> None:
    size_or_commits = Trigger("staging", size=100, commits=3)
    both = Trigger("staging", size=100, commits=3, all=True)
    kw = {"last_moved": T0, "now": T0}
    assert not is_due(size_or_commits, growth=99, commits=2, **kw)
    assert is_due(size_or_commits, growth=100, commits=1, **kw)
    assert is_due(size_or_commits, growth=0, commits=3, **kw)
    assert not is_due(both, growth=100, commits=2, **kw)
    assert is_due(both, growth=100, commits=3, **kw)
    hourly = Trigger("staging", cron="@every 1h")
    assert not is_due(hourly, growth=0, commits=1, last_moved=T0, now=T0 + timedelta(minutes=59))
    assert is_due(hourly, growth=0, commits=1, last_moved=T0, now=T0 + timedelta(minutes=60))
    assert is_due(Trigger("staging"), growth=0, commits=1, **kw)  # no condition: follow


async def test_every_head_move_is_an_event(pfs: RunningPfs, pfs_client: PfsClient) -> None:
    await pfs_client.create_repo("raw")
    first = await put(pfs_client, "raw", "master", "/a", b"1")
    second = await put(pfs_client, "raw", "master", "/b", b"2")
    await pfs_client.create_branch("raw", "staging", head=first)  # a new branch at a head
    await pfs_client.create_branch("raw", "master", head="staging")  # an existing one moved
    await pfs_client.create_branch("raw", "master", head=first)  # already there: no move
    opened = await pfs_client.start_commit("raw", "master")
    await pfs_client.delete_commit("raw", opened.id)
    assert await moves_of(pfs, "raw", "master") == [
        (None, first),
        (first, second),
        (second, first),
        (first, opened.id),
        (opened.id, first),
    ]
    assert await moves_of(pfs, "raw", "staging") == [(None, first)]


async def test_size_trigger_moves_master_once_the_data_grew_enough(
    pfs: RunningPfs, pfs_client: PfsClient
) -> None:
    await pfs_client.create_repo("raw")
    info = await pfs_client.create_branch("raw", "master", trigger=Trigger("staging", size=1000))
    assert info.trigger == Trigger("staging", size=1000)
    await put(pfs_client, "raw", "staging", "/a", b"x" * 400)
    await put(pfs_client, "raw", "staging", "/b", b"x" * 400)
    assert await head(pfs_client, "raw", "master") is None
    crossing = await put(pfs_client, "raw", "staging", "/c", b"x" * 400)
    assert await head(pfs_client, "raw", "master") == crossing
    # Counting starts again from the move: 400 more bytes are not enough.
    await put(pfs_client, "raw", "staging", "/d", b"x" * 400)
    assert await head(pfs_client, "raw", "master") == crossing
    assert await moves_of(pfs, "raw", "master") == [(None, crossing)]


async def test_commits_trigger_and_a_chain_of_triggers(pfs_client: PfsClient) -> None:
    await pfs_client.create_repo("raw")
    await pfs_client.create_branch("raw", "master", trigger=Trigger("staging", commits=2))
    await pfs_client.create_branch("raw", "prod", trigger=Trigger("master"))
    await put(pfs_client, "raw", "staging", "/a", b"1")
    assert await head(pfs_client, "raw", "master") is None
    second = await put(pfs_client, "raw", "staging", "/b", b"2")
    # master jumped, and prod (following every move of master) jumped with it.
    assert await head(pfs_client, "raw", "master") == second
    assert await head(pfs_client, "raw", "prod") == second
    # A commit finished through start/finish counts like a put.
    opened = await pfs_client.start_commit("raw", "staging")
    await pfs_client.put_files("raw", "staging", files({"/c": b"3"}))
    await pfs_client.finish_commit("raw", opened.id)
    await put(pfs_client, "raw", "staging", "/d", b"4")
    fourth = await head(pfs_client, "raw", "staging")
    assert await head(pfs_client, "raw", "master") == fourth


async def test_cron_trigger_fires_on_its_schedule_without_a_commit(
    pfs: RunningPfs, pfs_client: PfsClient
) -> None:
    await pfs_client.create_repo("raw")
    await pfs_client.create_branch("raw", "master", trigger=Trigger("staging", cron="@every 2s"))
    # Due only from the last move (the trigger's creation counts as none: master never moved).
    staged = await put(pfs_client, "raw", "staging", "/a", b"1")
    deadline = asyncio.get_running_loop().time() + 10
    while await head(pfs_client, "raw", "master") != staged:
        assert asyncio.get_running_loop().time() < deadline, "cron trigger never fired"
        await asyncio.sleep(0.2)
    assert await moves_of(pfs, "raw", "master") == [(None, staged)]


async def test_bad_triggers_are_refused(pfs_client: PfsClient) -> None:
    await pfs_client.create_repo("raw")
    await pfs_client.create_repo("clean")
    await pfs_client.create_branch("raw", "master", trigger=Trigger("staging"))
    with pytest.raises(InvalidArgument, match="loop"):
        await pfs_client.create_branch("raw", "staging", trigger=Trigger("master"))
    with pytest.raises(InvalidArgument, match="itself"):
        await pfs_client.create_branch("raw", "dev", trigger=Trigger("dev"))
    with pytest.raises(InvalidArgument, match="cron"):
        await pfs_client.create_branch("raw", "dev", trigger=Trigger("master", cron="every day"))
    with pytest.raises(InvalidArgument, match="provenance and a trigger"):
        await pfs_client.create_branch(
            "clean", "master", provenance=["raw@master"], trigger=Trigger("staging")
        )
    # Each refusal changed nothing.
    assert [b.name for b in await pfs_client.list_branches("clean")] == []
    assert [b.name for b in await pfs_client.list_branches("raw")] == ["master"]
