"""``tusk fsck`` against a real PFS whose object store we damage: deleted and corrupted
chunks and index nodes, and provenance naming a commit that is gone."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from shared.api.pfs_client import PfsClient
from shared.storage.chunking import chunk_key
from shared.storage.file_index.node import store_key
from tests.fixtures.pfs import RunningPfs

TUSK = Path(sys.executable).parent / "tusk"


async def one_file(path: str, data: bytes) -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
    async def content() -> AsyncIterator[bytes]:
        yield data

    yield path, content()


async def tusk(pfs: RunningPfs, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSK_")}
    env.update(TUSK_HOME=str(tmp_path / "home"), TUSK_PFS_URL=pfs.url)
    process = await asyncio.create_subprocess_exec(
        str(TUSK),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def two_commits(client: PfsClient, repo: str) -> tuple[str, str]:
    """``/a.txt`` in a first commit, ``/b.txt`` added by a second: ids of both."""
    await client.create_repo(repo)
    first = await client.put_files(repo, "master", one_file("/a.txt", f"{repo} a\n".encode()))
    second = await client.put_files(repo, "master", one_file("/b.txt", f"{repo} b\n".encode()))
    return first.commit.id, second.commit.id


async def test_a_whole_store_passes_and_exits_zero(pfs: RunningPfs, tmp_path: Path) -> None:
    async with PfsClient(pfs.url) as client:
        await two_commits(client, "data")

    code, out, err = await tusk(pfs, tmp_path, "fsck")

    assert code == 0, err
    assert "no problems" in out
    assert "checked 2 commit(s)" in out


async def test_a_missing_chunk_is_reported_for_every_commit_and_path_it_breaks(
    pfs: RunningPfs, tmp_path: Path
) -> None:
    async with PfsClient(pfs.url) as client:
        first, second = await two_commits(client, "data")
        chunk = (await client.file_entry("data", "master", "/a.txt")).chunks[0].chunk
    await pfs.service.store.delete(chunk_key(chunk))

    code, out, err = await tusk(pfs, tmp_path, "fsck")

    assert code == 1
    assert out.splitlines() == [
        f"data@{first}:/a.txt: chunk {chunk} is missing",
        f"data@{second}:/a.txt: chunk {chunk} is missing",
    ]
    assert "2 problem(s)" in err


async def test_corrupt_chunks_and_index_nodes_are_found_and_limited_by_repo(
    pfs: RunningPfs, tmp_path: Path
) -> None:
    async with PfsClient(pfs.url) as client:
        _, data_head = await two_commits(client, "data")
        await two_commits(client, "other")
        chunk = (await client.file_entry("data", "master", "/b.txt")).chunks[0].chunk
        other_root = (await client.inspect_commit("other", "master")).index_root
    assert other_root is not None
    store = pfs.service.store
    blob = bytearray(await store.get(chunk_key(chunk)))
    blob[len(blob) // 2] ^= 0xFF  # one flipped byte in the middle of the stored frame
    await store.put(chunk_key(chunk), bytes(blob))
    await store.put(store_key(other_root), b"not an index node")

    code, out, _ = await tusk(pfs, tmp_path, "fsck", "--repo", "data", "-o", "json")
    report = json.loads(out)
    code_other, out_other, _ = await tusk(pfs, tmp_path, "fsck", "--repo", "other")

    assert code == 1
    [problem] = report["problems"]
    assert (problem["repo"], problem["commit"], problem["path"]) == ("data", data_head, "/b.txt")
    assert problem["detail"].startswith(f"chunk {chunk} is corrupt")
    assert code_other == 1
    assert f"index node {other_root} is corrupt" in out_other
    assert "data@" not in out_other


async def test_provenance_naming_a_missing_commit_is_reported(
    pfs: RunningPfs, tmp_path: Path
) -> None:
    async with PfsClient(pfs.url) as client:
        _, head = await two_commits(client, "data")
    # Damage the table directly: no API makes dangling provenance, which is why fsck looks.
    async with pfs.service.pool.acquire() as conn:
        await conn.execute(
            """UPDATE pfs_commits SET provenance = '[{"repo": "gone", "id": "deadbeef"}]'
            WHERE id = $1""",
            head,
        )

    code, out, _ = await tusk(pfs, tmp_path, "fsck")

    assert code == 1
    assert f"data@{head}: provenance names commit gone@deadbeef, which does not exist" in out


async def test_an_unknown_repo_is_one_error_line(pfs: RunningPfs, tmp_path: Path) -> None:
    code, _, err = await tusk(pfs, tmp_path, "fsck", "--repo", "nope")

    assert code == 1
    assert err.strip() == "error: repo nope not found"
