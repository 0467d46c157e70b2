"""The scheduler outlives PostgreSQL: its postmaster killed with SIGKILL, then started again.

A private PostgreSQL (the session's is shared by every test and must not die) on the
embedded cluster's own launch recipe; PFS, PPS and the scheduler on it in the test's loop,
real NATS, real workers.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import psutil
import pytest

from services.scheduler.app import ENGINE_TASK
from shared.api.pps_models import JobInfo
from shared.platform.config import Config
from shared.platform.db import ensure_database
from tests.fixtures.cluster import Cluster, running_cluster
from tests.fixtures.servers import NatsServer, free_port, server_scratch_dir
from tusk.embedded.components import (
    init_postgres,
    postgres_admin_url,
    postgres_launch,
    run_as,
    secure_postgres,
)
from tusk.embedded.layout import Layout

WORD_COUNT = {
    "pipeline": {"name": "count"},
    "transform": {
        "cmd": ["sh", "-c", 'wc -w < "$words" | tr -d " " > /pfs/out/$(basename "$words")']
    },
    "input": {"pfs": {"repo": "words", "glob": "/*"}},
}


class Postgres:
    """One PostgreSQL server process on a fixed port, killed and started at will."""

    def __init__(self, home: Path) -> None:
        self.layout = Layout(home)
        self.layout.make_dirs()
        init_postgres(self.layout)
        self.password = self.layout.postgres_password()
        secure_postgres(self.layout, self.password)
        self.port = free_port()
        self.launch = postgres_launch(self.layout, self.port, self.password)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        uid, gid, groups = run_as(self.launch.user)
        with self.layout.log("postgres").open("ab") as log:
            self.process = subprocess.Popen(
                self.launch.argv,
                stdout=log,
                stderr=log,
                cwd=self.launch.cwd,
                user=uid,
                group=gid,
                extra_groups=groups,
            )

    async def ready(self) -> None:
        for _ in range(300):
            assert self.process is not None and self.process.poll() is None, self._log()
            if await self.launch.ready():
                return
            await asyncio.sleep(0.05)
        raise AssertionError("PostgreSQL did not start:\n" + self._log())

    def kill_postmaster(self) -> None:
        """SIGKILL the postmaster, then wait for its backends to notice and exit (a new
        postmaster refuses to start while they hold the old shared memory)."""
        assert self.process is not None
        backends = psutil.Process(self.process.pid).children(recursive=True)
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        _, alive = psutil.wait_procs(backends, timeout=20)
        assert not alive, f"backends outlived their postmaster: {alive}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _log(self) -> str:
        return self.layout.log("postgres").read_text(errors="replace")[-2000:]


@pytest.fixture
def own_postgres() -> Iterator[Postgres]:
    scratch = server_scratch_dir("tusk-test-pgrestart-")
    server = Postgres(scratch / "home")
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture
async def cluster_on_own_postgres(
    own_postgres: Postgres, nats_server: NatsServer, tmp_path: Path
) -> AsyncIterator[Cluster]:
    await own_postgres.ready()
    await ensure_database(postgres_admin_url(own_postgres.port, own_postgres.password), "tusk")
    config = Config(
        database_url=postgres_admin_url(own_postgres.port, own_postgres.password, "tusk"),
        nats_url=nats_server.url,
        nats_prefix="t" + uuid.uuid4().hex[:12],
        object_store=f"file://{tmp_path}/objects",
    )
    async with running_cluster(config, tmp_path) as cluster:
        yield cluster


async def one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def put(cluster: Cluster, path: str, data: bytes) -> str:
    async def files() -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
        yield path, one(data)

    return (await cluster.pfs.put_files("words", "master", files())).commit.id


async def eventually_succeeds(cluster: Cluster, count: int, timeout: float = 90) -> JobInfo:
    """The newest job once ``count`` jobs exist and all are done; it must have succeeded."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        jobs = await cluster.pps.list_jobs("count")
        if len(jobs) == count and all(j.done for j in jobs):
            assert jobs[0].state == "JOB_SUCCESS", jobs[0]
            return jobs[0]
        assert asyncio.get_running_loop().time() < deadline, f"jobs not done: {jobs}"
        await asyncio.sleep(0.2)


async def scheduler_ready(cluster: Cluster) -> bool:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{cluster.config.scheduler_url}/readyz") as response,
    ):
        return response.status == 200


async def test_a_put_after_postgres_restarts_still_runs_its_job(
    own_postgres: Postgres, cluster_on_own_postgres: Cluster
) -> None:
    cluster = cluster_on_own_postgres
    await cluster.pfs.create_repo("words")
    await put(cluster, "/a", b"one two")
    await cluster.pps.create_pipeline(WORD_COUNT)
    await eventually_succeeds(cluster, 1)

    own_postgres.kill_postmaster()
    # PostgreSQL stays away long enough for every loop of the scheduler to meet it.
    for _ in range(10):
        await asyncio.sleep(0.5)
        assert not cluster.runners["scheduler"].app[ENGINE_TASK].done()
    assert not await scheduler_ready(cluster)

    own_postgres.start()
    await own_postgres.ready()
    deadline = asyncio.get_running_loop().time() + 60
    while not (await scheduler_ready(cluster) and cluster.engine.leader):
        assert asyncio.get_running_loop().time() < deadline, "the scheduler did not come back"
        await asyncio.sleep(0.2)

    commit = await put(cluster, "/b", b"three four five")
    job = await eventually_succeeds(cluster, 2)
    assert [c.id for c in job.input_commits] == [commit]
    assert b"".join([c async for c in cluster.pfs.get_file("count", "master", "/b")]) == b"3\n"
    assert not cluster.runners["scheduler"].app[ENGINE_TASK].done()
