"""Many writers on one branch, through the real PFS HTTP API (issue #16, finding 3).

Every put to a branch without an open commit makes a commit of its own; the head moves
by compare-and-set. These tests check that concurrent writers all land without errors,
and that the cost of N writers grows linearly with N, not quadratically (losers of the
head race once re-did all their work, again and again).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

from services.pfs.app import build_app
from shared.api.pfs_client import PfsClient
from tests.fixtures.apps import serve, stop
from tests.fixtures.pfs import RunningPfs
from tests.fixtures.servers import free_port


async def one_file(path: str, data: bytes) -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
    async def content() -> AsyncIterator[bytes]:
        yield data

    yield path, content()


async def run_writers(
    url: str | list[str], repo: str, writers: int, puts: int
) -> tuple[float, list[str]]:
    """``writers`` clients each putting ``puts`` files one request at a time (spread over
    the replicas when ``url`` lists several); (seconds, error messages)."""
    urls = [url] if isinstance(url, str) else url
    errors: list[str] = []

    async def writer(w: int) -> None:
        async with PfsClient(urls[w % len(urls)]) as client:
            for p in range(puts):
                path = f"/w{w:03d}/f{p:03d}"
                try:
                    await client.put_files(repo, "master", one_file(path, path.encode()))
                except Exception as exc:  # every failure counts, whatever its kind
                    errors.append(f"{path}: {type(exc).__name__}: {exc}")

    started = time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(writers)))
    return time.perf_counter() - started, errors


async def test_eight_writers_forty_puts_each_all_land_without_errors(pfs: RunningPfs) -> None:
    async with PfsClient(pfs.url) as client:
        await client.create_repo("data")

        seconds, errors = await run_writers(pfs.url, "data", writers=8, puts=40)

        print(f"8 writers x 40 puts: {seconds:.2f} s, {len(errors)} errors")
        assert errors == []
        head = await client.inspect_commit("data", "master")
        assert head.file_count == 8 * 40
        commits = [c async for c in client.iter_commits("data", "master", page=100)]
        assert len(commits) == 8 * 40
        for newer, older in itertools.pairwise(commits):
            assert newer.parent == older.id  # one chain, no lost or forked commit
        for w, p in [(0, 0), (3, 17), (7, 39)]:
            path = f"/w{w:03d}/f{p:03d}"
            data = b"".join([b async for b in client.get_file("data", "master", path)])
            assert data == path.encode()


async def test_concurrent_writers_cost_grows_linearly(pfs: RunningPfs) -> None:
    async with PfsClient(pfs.url) as client:
        await client.create_repo("small")
        await client.create_repo("large")
        # One round first, so connection set-up and caches are warm for both runs.
        await run_writers(pfs.url, "small", writers=5, puts=1)

        small, small_errors = await run_writers(pfs.url, "small", writers=10, puts=1)
        large, large_errors = await run_writers(pfs.url, "large", writers=50, puts=1)

        print(
            f"10 concurrent writers: {small:.2f} s; 50: {large:.2f} s "
            f"(x{large / small:.1f} for x5 writers)"
        )
        assert small_errors == [] and large_errors == []
        assert (await client.inspect_commit("large", "master")).file_count == 50
        # Linear is x5; quadratic (every loser redoing its work each round) is x25.
        assert large < 12 * small + 1.0, f"10 writers {small:.2f} s, 50 writers {large:.2f} s"


async def test_writers_on_two_replicas_all_land(pfs: RunningPfs) -> None:
    # A second PFS process on the same database and store: its writers race this one's
    # for the branch head, so losers of the compare-and-set re-apply their change.
    port = free_port()
    replica = await serve(build_app(pfs.config.replace(listen_port=port)), port)
    try:
        async with PfsClient(pfs.url) as client:
            await client.create_repo("data")

            urls = [pfs.url, f"http://127.0.0.1:{port}"]
            seconds, errors = await run_writers(urls, "data", writers=8, puts=10)

            print(f"8 writers on 2 replicas x 10 puts: {seconds:.2f} s")
            assert errors == []
            assert (await client.inspect_commit("data", "master")).file_count == 80
            commits = [c async for c in client.iter_commits("data", "master", page=100)]
            assert len(commits) == 80
            for newer, older in itertools.pairwise(commits):
                assert newer.parent == older.id
    finally:
        await stop(replica)
