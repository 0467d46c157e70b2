"""Nothing lost: PFS as a real process, killed with SIGKILL at awkward moments."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from shared.api.events import CommitFinished, subject_filter
from shared.api.pfs_client import PfsClient
from shared.platform.bus import connect
from shared.platform.config import Config, dump_config_toml
from tests.fixtures.servers import free_port


class PfsProcess:
    """``python -m services.pfs`` with a config file, started and killed on demand."""

    def __init__(self, config: Config, workdir: Path) -> None:
        self.config = config
        self.config_path = workdir / "config.toml"
        self.config_path.write_text(dump_config_toml(config))
        self.log = workdir / "pfs.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ, TUSK_CONFIG=str(self.config_path))
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.pfs"], env=env, stdout=log, stderr=log
            )

    async def ready(self, client: PfsClient) -> None:
        for _ in range(300):
            try:
                await client.list_repos()
                return
            except Exception:
                assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
                await asyncio.sleep(0.05)
        raise AssertionError("PFS did not become ready:\n" + self.log.read_text())

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def pfs_process(tusk_config: Config, tmp_path: Path) -> Iterator[PfsProcess]:
    port = free_port()
    config = tusk_config.replace(listen_port=port, pfs_url=f"http://127.0.0.1:{port}")
    process = PfsProcess(config, tmp_path)
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
async def client(pfs_process: PfsProcess) -> AsyncIterator[PfsClient]:
    async with PfsClient(pfs_process.config.pfs_url) as c:
        await pfs_process.ready(c)
        yield c


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _files(items: dict[str, bytes]) -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
    for path, data in items.items():
        yield path, _one(data)


async def test_committed_data_survives_kill_9(pfs_process: PfsProcess, client: PfsClient) -> None:
    await client.create_repo("data")
    result = await client.put_files(
        "data", "master", _files({"/a": b"alpha", "/b": b"beta" * 1000})
    )
    pfs_process.kill()
    pfs_process.start()
    await pfs_process.ready(client)
    head = await client.inspect_commit("data", "master")
    assert head.id == result.commit.id and head.file_count == 2
    got = b"".join([c async for c in client.get_file("data", "master", "/b")])
    assert got == b"beta" * 1000


async def test_commit_left_finishing_by_a_crash_is_finished_at_restart(
    pfs_process: PfsProcess, client: PfsClient
) -> None:
    await client.create_repo("data")
    commit = await client.start_commit("data", "master")
    await client.put_files("data", "master", _files({"/staged": b"x"}))
    pfs_process.kill()
    # The crash happened after 'finishing' was recorded, before the index was written.
    conn = await asyncpg.connect(pfs_process.config.database_url)
    try:
        await conn.execute("UPDATE pfs_commits SET state = 'finishing' WHERE id = $1", commit.id)
    finally:
        await conn.close()
    bus = await connect(pfs_process.config)
    try:
        async with bus.subscribe_events(
            subject_filter(pfs_process.config.nats_prefix, "commit.finished", "data"), deliver="all"
        ) as events:
            pfs_process.start()
            await pfs_process.ready(client)
            event = await asyncio.wait_for(anext(aiter(events)), 10)
    finally:
        await bus.close()
    info = await client.inspect_commit("data", commit.id)
    assert info.state == "finished" and info.file_count == 1
    # ...and its trigger event was not lost.
    assert isinstance(event.payload, CommitFinished) and event.payload.commit == commit.id
