"""Lost bytes are reported, never served (issue #16, finding 2), against the real PFS.

A file whose chunk is gone from the object store must not come back as a 200 with wrong
bytes: a chunk missing at the start is a clean 500 naming it; one missing further on
breaks the transfer off, which curl, the Python client and the CLI all report as a
failure. Landing entries by reference refuses chunks the store does not hold.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from shared.api.pfs_client import PfsClient
from shared.platform.errors import Internal, InvalidArgument, Unavailable
from shared.storage.chunking import EMPTY_HASH, ChunkRef, FileEntry, chunk_key
from tests.fixtures.counting_store import CountingStore
from tests.fixtures.pfs import RunningPfs

TUSK = Path(sys.executable).parent / "tusk"
BIG = 6 << 20  # several content-defined chunks (average 1 MiB, at most 4 MiB)


async def one_file(path: str, data: bytes) -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
    async def content() -> AsyncIterator[bytes]:
        yield data

    yield path, content()


async def stored_file(pfs: RunningPfs, client: PfsClient, path: str, size: int) -> FileEntry:
    """Put ``size`` random bytes at ``path`` on data@master; the file's entry."""
    data = random.Random(size).randbytes(size)
    await client.put_files("data", "master", one_file(path, data))
    return await client.file_entry("data", "master", path)


async def lose_chunk(pfs: RunningPfs, chunk: str) -> None:
    await pfs.service.store.delete(chunk_key(chunk))
    assert not await pfs.service.store.exists(chunk_key(chunk))


async def read_all(blocks: AsyncIterator[bytes]) -> bytes:
    return b"".join([block async for block in blocks])


async def curl(url: str, out: Path, *options: str) -> int:
    process = await asyncio.create_subprocess_exec(
        "curl", "-sS", *options, "-o", str(out), url, stderr=asyncio.subprocess.DEVNULL
    )
    return await process.wait()


async def test_a_file_missing_its_first_chunk_is_a_clean_500_naming_the_chunk(
    pfs: RunningPfs, tmp_path: Path
) -> None:
    async with PfsClient(pfs.url) as client:
        await client.create_repo("data")
        entry = await stored_file(pfs, client, "/small.bin", 1000)
        await lose_chunk(pfs, entry.chunks[0].chunk)
        url = f"{pfs.url}/v1/repos/data/commits/master/files/small.bin"

        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            body = await resp.json()
        with pytest.raises(Internal) as raised:
            await read_all(client.get_file("data", "master", "/small.bin"))

    assert resp.status == 500
    expected = f"data corrupted: chunk {entry.chunks[0].chunk} of data@master:/small.bin is missing"
    assert body["error"]["message"].startswith(expected)
    assert raised.value.message.startswith(expected)
    assert await curl(url, tmp_path / "out", "--fail") == 22  # an HTTP error status


async def test_a_chunk_lost_mid_file_breaks_the_transfer_off(
    pfs: RunningPfs, tmp_path: Path
) -> None:
    async with PfsClient(pfs.url) as client:
        await client.create_repo("data")
        entry = await stored_file(pfs, client, "/big.bin", BIG)
        assert len({ref.chunk for ref in entry.chunks}) >= 2
        await lose_chunk(pfs, entry.chunks[-1].chunk)
        url = f"{pfs.url}/v1/repos/data/commits/master/files/big.bin"

        # Raw HTTP: the headers promised BIG bytes; the body stops short, never an error
        # document passed off as content.
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            assert resp.status == 200 and resp.content_length == BIG
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
        # curl exits non-zero (18: transfer closed with outstanding read data).
        assert await curl(url, tmp_path / "out") == 18
        # The SDK raises one of our errors, saying how far it got.
        with pytest.raises(Unavailable, match=r"reading data@master:/big.bin broke off after"):
            await read_all(client.get_file("data", "master", "/big.bin"))
        # And the service keeps serving.
        assert (await client.inspect_repo("data")).name == "data"


async def test_a_recursive_download_with_a_lost_chunk_fails(pfs: RunningPfs) -> None:
    async with PfsClient(pfs.url) as client:
        await client.create_repo("data")
        await stored_file(pfs, client, "/dir/a.bin", 1000)
        entry = await stored_file(pfs, client, "/dir/b.bin", BIG)
        await lose_chunk(pfs, entry.chunks[-1].chunk)

        with pytest.raises(Unavailable, match="broke off"):
            async for _, blocks in client.get_files("data", "master", "/dir"):
                await read_all(blocks)


def tusk_env(tmp_path: Path, pfs_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSK_")}
    env.update(TUSK_HOME=str(tmp_path / "tusk-home"), TUSK_PFS_URL=pfs_url)
    return env


async def run_tusk(tmp_path: Path, pfs_url: str, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        str(TUSK),
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=tusk_env(tmp_path, pfs_url),
        cwd=tmp_path,
    )
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, err.decode()


@pytest.mark.usefixtures("tusk_script")
async def test_the_cli_reports_lost_chunks_in_one_line_and_exits_non_zero(
    pfs: RunningPfs, tmp_path: Path
) -> None:
    async with PfsClient(pfs.url) as client:
        await client.create_repo("data")
        small = await stored_file(pfs, client, "/small.bin", 1000)
        big = await stored_file(pfs, client, "/big.bin", BIG)
    await lose_chunk(pfs, small.chunks[0].chunk)
    await lose_chunk(pfs, big.chunks[-1].chunk)

    for path, says in [("/small.bin", "data corrupted: chunk"), ("/big.bin", "broke off after")]:
        out = tmp_path / path.lstrip("/")
        code, stderr = await run_tusk(
            tmp_path, pfs.url, "get", "file", f"data@master:{path}", "-o", str(out)
        )
        lines = stderr.strip().splitlines()
        assert code == 1 and len(lines) == 1, stderr
        assert lines[0].startswith("error: ") and says in lines[0], stderr
        assert not out.exists()  # no partial file left behind


async def test_entries_naming_chunks_that_are_not_stored_are_refused(
    pfs: RunningPfs,
) -> None:
    async with PfsClient(pfs.url) as client:
        await client.create_repo("data")
        real = await stored_file(pfs, client, "/real.bin", 1000)
        absent = "ab" * 32
        ghost = FileEntry(10, EMPTY_HASH, (ChunkRef(absent, 0, 10),))

        with pytest.raises(InvalidArgument) as raised:
            await client.put_entries(
                "data", "master", [("/out/ok.bin", real), ("/out/ghost.bin", ghost)]
            )
        assert raised.value.message.startswith(
            f"entry for /out/ghost.bin references chunk {absent}, which is not in the object store"
        )
        with pytest.raises(InvalidArgument, match="not a chunk name"):
            bad = FileEntry(10, EMPTY_HASH, (ChunkRef("../../etc/passwd", 0, 10),))
            await client.put_entries("data", "master", [("/out/bad.bin", bad)])
        # Nothing landed: the only commit is the one that stored /real.bin.
        commits, _ = await client.list_commits("data", "master")
        assert len(commits) == 1


async def test_checking_entries_asks_the_store_once_per_distinct_chunk(pfs: RunningPfs) -> None:
    async with PfsClient(pfs.url) as client:
        await client.create_repo("data")
        entries = [await stored_file(pfs, client, f"/src/{i}.bin", 1000 + i) for i in range(3)]
        counting = CountingStore(pfs.service.store)
        pfs.service.store = counting
        # 600 outputs sharing 3 chunks (as small files packed together do).
        changes: list[tuple[str, FileEntry | None]] = [
            (f"/out/{i:04d}.bin", entries[i % 3]) for i in range(600)
        ]

        result = await client.put_entries("data", "master", changes)

        assert result.files == 600
        assert counting.count_exists("chunks/") == 3
