"""Nothing lost in pipelines: a worker killed mid-datum, a scheduler restarted mid-job."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from urllib.parse import urlsplit

from services.scheduler.app import build_app as build_scheduler
from services.scheduler.backends.local import LocalBackend
from tests.fixtures.apps import serve, stop
from tests.fixtures.cluster import Cluster
from tests.test_pipelines import files, read, wait_for_jobs

SLOW_COPY = {
    "pipeline": {"name": "slow"},
    "transform": {"cmd": ["sh", "-c", 'sleep 2; cp "$words" /pfs/out/']},
    "input": {"pfs": {"repo": "words", "glob": "/*"}},
    "datum_tries": 3,
}


def children_of(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The parent pid is the 2nd field after the parenthesised command name.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


async def wait_until(predicate, timeout: float = 30):  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_worker_killed_mid_datum_is_retried_and_output_is_not_doubled(
    cluster: Cluster,
) -> None:
    await cluster.pfs.create_repo("words")
    await cluster.pfs.put_files("words", "master", files({"/only": b"payload"}))
    await cluster.pps.create_pipeline(SLOW_COPY)

    def running_worker() -> int | None:
        for pid in cluster.backend.worker_pids("slow"):
            if children_of(pid):  # the worker started a sandbox: the datum is running
                return pid
        return None

    pid = await wait_until(running_worker)
    os.killpg(pid, signal.SIGKILL)
    (job,) = await wait_for_jobs(cluster, "slow", 1, timeout=90)
    assert job.state == "JOB_SUCCESS", job
    (datum,) = await cluster.pps.list_datums("slow", job.id)
    assert datum.state == "SUCCESS" and datum.attempts >= 2
    assert [f.path async for f in cluster.pfs.iter_files("slow", "master")] == ["/only"]
    assert await read(cluster, "slow", "/only") == b"payload"


async def test_scheduler_restart_mid_job_finishes_the_job_once_and_catches_up(
    cluster: Cluster, tmp_path: Path
) -> None:
    await cluster.pfs.create_repo("words")
    await cluster.pfs.put_files("words", "master", files({"/a": b"1", "/b": b"2"}))
    await cluster.pps.create_pipeline(
        {**SLOW_COPY, "transform": {"cmd": ["sh", "-c", 'sleep 1; cp "$words" /pfs/out/']}}
    )

    async def job_running() -> bool:
        jobs = await cluster.pps.list_jobs("slow")
        return bool(jobs) and jobs[0].state == "JOB_RUNNING"

    deadline = asyncio.get_running_loop().time() + 30
    while not await job_running():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    # Stop the scheduler (and its workers) mid-job, and commit while it is away.
    await stop(cluster.runners.pop("scheduler"))
    await cluster.pfs.put_files("words", "master", files({"/c": b"3"}))

    backend = LocalBackend(cluster.config_path, tmp_path / "logs2")
    # Back at its address, where PPS asks it about jobs.
    cluster.runners["scheduler"] = await serve(
        build_scheduler(cluster.config, backend), urlsplit(cluster.config.scheduler_url).port or 0
    )

    jobs = await wait_for_jobs(cluster, "slow", 2, timeout=90)
    assert [j.state for j in jobs] == ["JOB_SUCCESS", "JOB_SUCCESS"], jobs
    assert len({j.trigger for j in jobs}) == 2  # one job per trigger, none run twice
    assert jobs[0].data_processed == 1 and jobs[0].data_skipped == 2
    listing = [f.path async for f in cluster.pfs.iter_files("slow", "master")]
    assert listing == ["/a", "/b", "/c"]
