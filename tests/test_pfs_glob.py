"""Glob requests against the real PFS: a hostile pattern neither hangs nor stalls it
(issue #16, finding 4). The matcher itself is tested in test_glob_matcher.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from shared.api.pfs_client import PfsClient
from tests.fixtures.pfs import RunningPfs

HOSTILE = "/**a**a**a**a**a**c"
FILES = 5_000


async def long_names() -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
    """Files under /d<k>/ named by a long run of 'a's: a backtracking matcher tries every
    way to split each run among the pattern's stars; a few end in 'c' and match."""

    async def content(i: int) -> AsyncIterator[bytes]:
        yield str(i).encode()

    for i in range(FILES):
        tail = "c" if i % 1000 == 0 else "b"
        yield f"/d{i % 10}/{'a' * 120}{i:05d}{tail}", content(i)


async def test_a_hostile_glob_answers_fast_and_other_requests_go_on(pfs: RunningPfs) -> None:
    async with PfsClient(pfs.url) as client:
        await client.create_repo("data")
        await client.put_files("data", "master", long_names())
        waits: list[float] = []
        glob_done = asyncio.Event()

        async def ping() -> None:
            # Other requests while the glob runs: each must be answered promptly.
            while not glob_done.is_set():
                started = time.perf_counter()
                await client.inspect_repo("data")
                waits.append(time.perf_counter() - started)
                await asyncio.sleep(0.01)

        pinger = asyncio.create_task(ping())
        started = time.perf_counter()
        matches = await client.glob_files("data", "master", HOSTILE)
        elapsed = time.perf_counter() - started
        glob_done.set()
        await pinger

        print(f"glob {HOSTILE} over {FILES} paths: {elapsed:.2f} s; slowest other request "
              f"{max(waits) * 1000:.0f} ms of {len(waits)}")  # fmt: skip
        assert sorted(m.path for m in matches) == sorted(
            f"/d0/{'a' * 120}{i:05d}c" for i in range(0, FILES, 1000)
        )
        # The regex took 6.7 s for ONE 100-character path; linear matching takes ~1 ms here.
        assert elapsed < 10.0
        assert waits and max(waits) < 2.0
