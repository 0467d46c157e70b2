"""A garbage collection killed with SIGKILL at varying moments loses nothing live: PFS as
a real process, a deleted repo's trees as garbage sharing chunks with a live repo."""

from __future__ import annotations

import asyncio
import os
import random
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shared.api.pfs_client import PfsClient
from shared.platform.config import Config
from tests.fixtures.servers import free_port
from tests.test_pfs_crash import PfsProcess

TUSK = Path(sys.executable).parent / "tusk"


@pytest.fixture
def pfs_process(tusk_config: Config, tmp_path: Path) -> Iterator[PfsProcess]:
    port = free_port()
    config = tusk_config.replace(
        listen_port=port,
        pfs_url=f"http://127.0.0.1:{port}",
        gc_reference_owners=(),
        gc_interval_s=0.0,
    )
    process = PfsProcess(config, tmp_path)
    process.start()
    try:
        yield process
    finally:
        process.stop()


async def files(*items: tuple[str, bytes]) -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
    for path, data in items:

        async def content(data: bytes = data) -> AsyncIterator[bytes]:
            yield data

        yield path, content()


def blob(seed: int) -> bytes:
    return random.Random(seed).randbytes(200_000)


async def fsck(pfs: PfsProcess, tmp_path: Path) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSK_")}
    env.update(TUSK_HOME=str(tmp_path / "home"), TUSK_PFS_URL=pfs.config.pfs_url)
    process = await asyncio.create_subprocess_exec(
        str(TUSK), "fsck", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_kill_9_during_collections_loses_nothing_live(
    pfs_process: PfsProcess, tmp_path: Path
) -> None:
    live = {f"/k{i}": blob(i) for i in range(6)}
    async with PfsClient(pfs_process.config.pfs_url) as client:
        await pfs_process.ready(client)
        await client.create_repo("keep")
        await client.put_files("keep", "master", files(*live.items()))
        shared = await client.file_entry("keep", "master", "/k0")
        cut_off = 0
        for round_ in range(3):
            # Garbage: trees of thousands of paths naming a live chunk, then deleted.
            await client.create_repo("gone")
            await client.put_entries(
                "gone", "master", [(f"/r{round_}/{i:05d}", shared) for i in range(60000)]
            )
            await client.put_files("gone", "master", files(("/own", blob(100 + round_))))
            await client.delete_repo("gone")
            collecting = asyncio.create_task(client.garbage_collect(grace_s=0))
            await asyncio.sleep(random.Random(round_).uniform(0.01, 0.15))
            pfs_process.kill()
            try:
                await collecting
            except Exception:
                cut_off += 1  # the usual case; a run may also finish just before the kill
            pfs_process.start()
            await pfs_process.ready(client)
            code, out = await fsck(pfs_process, tmp_path)
            assert code == 0, out
            for path, data in live.items():
                assert b"".join([b async for b in client.get_file("keep", "master", path)]) == data
        final = await client.garbage_collect(grace_s=0)
        again = await client.garbage_collect(grace_s=0)
    code, out = await fsck(pfs_process, tmp_path)

    assert code == 0, out
    assert cut_off >= 1
    assert final.objects >= 0 and again.objects == 0
