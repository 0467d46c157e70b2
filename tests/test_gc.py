"""``tusk garbage-collect`` against a real PFS (local store and SeaweedFS S3): what no
commit references goes, what is live or young stays, a dry run deletes nothing, and
collections running beside uploads — including uploads of the very bytes being collected —
break none of them (fsck stays clean, every file reads back)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.api.pfs_client import PfsClient
from shared.platform.config import Config
from shared.platform.errors import InvalidArgument
from tests.fixtures.pfs import RunningPfs

TUSK = Path(sys.executable).parent / "tusk"


@pytest.fixture(params=["local", "s3"])
def tusk_config(request: pytest.FixtureRequest, tusk_config: Config) -> Config:
    """PFS alone (no scheduler or gateway to ask), collecting only when told to."""
    config = tusk_config.replace(gc_reference_owners=(), gc_interval_s=0.0)
    if request.param == "s3":
        s3: Config = request.getfixturevalue("s3_config")
        config = config.replace(object_store="s3", s3=s3.s3)
    return config


async def files(*items: tuple[str, bytes]) -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
    for path, data in items:

        async def content(data: bytes = data) -> AsyncIterator[bytes]:
            yield data

        yield path, content()


def blob(seed: int, size: int = 300_000) -> bytes:
    return random.Random(seed).randbytes(size)


async def tusk(pfs: RunningPfs, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSK_")}
    env.update(TUSK_HOME=str(tmp_path / "home"), TUSK_PFS_URL=pfs.url)
    process = await asyncio.create_subprocess_exec(
        str(TUSK), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def stored_keys(pfs: RunningPfs) -> set[str]:
    store = pfs.service.store
    return {k async for k in store.list("chunks/")} | {k async for k in store.list("index/")}


async def read(client: PfsClient, repo: str, path: str) -> bytes:
    return b"".join([b async for b in client.get_file(repo, "master", path)])


async def test_a_deleted_repo_is_collected_and_live_data_stays(
    pfs: RunningPfs, tmp_path: Path
) -> None:
    async with PfsClient(pfs.url) as client:
        await client.create_repo("keep")
        await client.put_files("keep", "master", files(("/a", blob(1)), ("/b", blob(2))))
        await client.put_files("keep", "master", files(("/a", blob(3))))  # /a's old bytes: history
        await client.create_repo("gone")
        await client.put_files("gone", "master", files(("/x", blob(4)), ("/y", blob(5))))
        before = await stored_keys(pfs)
        await client.delete_repo("gone")

        young_code, young_out, _ = await tusk(pfs, tmp_path, "gc", "-o", "json")
        dry_code, dry_out, _ = await tusk(pfs, tmp_path, "gc", "--dry-run", "--grace", "0")
        after_dry = await stored_keys(pfs)
        code, out, err = await tusk(pfs, tmp_path, "garbage-collect", "--grace", "0", "-o", "json")
        freed = json.loads(out)
        after = await stored_keys(pfs)
        again = json.loads((await tusk(pfs, tmp_path, "gc", "--grace", "0", "-o", "json"))[1])
        fsck_code, _, _ = await tusk(pfs, tmp_path, "fsck")
        contents = [await read(client, "keep", p) for p in ("/a", "/b")]
        first = (await client.list_commits("keep", None, limit=10))[0][-1].id
        old_a = b"".join([b async for b in client.get_file("keep", first, "/a")])

    assert young_code == 0 and json.loads(young_out)["objects"] == 0  # an hour's grace
    assert dry_code == 0 and dry_out.startswith("would free ")
    assert after_dry == before
    assert code == 0, err
    assert freed["objects"] > 0 and freed["bytes"] > 0
    assert len(before - after) == freed["objects"]
    assert all(not k.startswith("index/") or k in before for k in after)
    assert again["objects"] == 0
    assert fsck_code == 0
    assert contents == [blob(3), blob(2)] and old_a == blob(1)


async def test_collections_beside_uploads_of_the_same_bytes_lose_nothing(
    pfs: RunningPfs, tmp_path: Path
) -> None:
    async with PfsClient(pfs.url) as client:
        await client.create_repo("gone")
        await client.put_files("gone", "master", files(*[(f"/{i}", blob(i)) for i in range(8)]))
        await client.delete_repo("gone")
        await client.create_repo("data")

        async def upload(i: int) -> None:
            # The same bytes the deleted repo held: their chunks are garbage until re-used.
            await client.put_files("data", "master", files((f"/f{i}", blob(i % 8))))

        async def collect_repeatedly() -> int:
            freed = 0
            for _ in range(4):
                freed += (await client.garbage_collect(grace_s=0)).objects
            return freed

        results = await asyncio.gather(collect_repeatedly(), *(upload(i) for i in range(16)))
        fsck_code, fsck_out, _ = await tusk(pfs, tmp_path, "fsck")
        contents = [await read(client, "data", f"/f{i}") for i in range(16)]

    assert isinstance(results[0], int)
    assert fsck_code == 0, fsck_out
    assert contents == [blob(i % 8) for i in range(16)]


async def test_grace_zero_spares_an_upload_in_flight(pfs: RunningPfs, tmp_path: Path) -> None:
    release = asyncio.Event()

    async def slow_files() -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
        async def content() -> AsyncIterator[bytes]:
            yield blob(7, 6 << 20)  # whole chunks are stored before the upload pauses
            await release.wait()
            yield blob(8, 1 << 20)

        yield "/big", content()

    async with PfsClient(pfs.url) as client:
        await client.create_repo("data")
        upload = asyncio.create_task(client.put_files("data", "master", slow_files()))
        for _ in range(200):
            if any([k async for k in pfs.service.store.list("chunks/")]):
                break
            await asyncio.sleep(0.05)
        report = await client.garbage_collect(grace_s=0)
        release.set()
        await upload
        fsck_code, fsck_out, _ = await tusk(pfs, tmp_path, "fsck")
        data = await read(client, "data", "/big")

    assert report.objects == 0
    assert fsck_code == 0, fsck_out
    assert data == blob(7, 6 << 20) + blob(8, 1 << 20)


async def test_a_tree_or_chunk_remembered_in_a_cache_is_stored_again_after_collection(
    pfs: RunningPfs, tmp_path: Path
) -> None:
    """PFS's caches (index nodes, chunks) must not answer "stored" for what a collection
    deleted: the same tree written again is stored again, and a landing by reference of a
    deleted chunk is refused rather than committed with a hole."""
    items = [(f"/{i}", blob(40 + i, 5_000)) for i in range(3)]
    async with PfsClient(pfs.url) as client:
        await client.create_repo("trash")
        await client.put_files("trash", "master", files(*items))
        entry = await client.file_entry("trash", "master", "/0")
        await read(client, "trash", "/0")  # its chunk is now in PFS's read cache
        await client.delete_repo("trash")
        freed = await client.garbage_collect(grace_s=0)
        await client.create_repo("keep")
        with pytest.raises(InvalidArgument, match="which is not in the object store"):
            await client.put_entries("keep", "master", [("/by-ref", entry)])
        await client.put_files("keep", "master", files(*items))  # the very same tree
        fsck_code, fsck_out, _ = await tusk(pfs, tmp_path, "fsck")
        contents = [await read(client, "keep", path) for path, _ in items]

    assert freed.objects > 0
    assert fsck_code == 0, fsck_out
    assert contents == [data for _, data in items]
