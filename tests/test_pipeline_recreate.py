"""Deleting a pipeline and recreating it under the same name: the new incarnation's jobs
finish, whatever the worker reconciler saw in between (its forgetting of the deleted
pipeline's task queue never takes the new job's tasks with it).

Real services (PFS, PPS, the scheduler in the test's loop), PostgreSQL, NATS, real
workers in bubblewrap.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from shared.api.pps_models import JobInfo
from tests.fixtures.cluster import Cluster

SPEC: dict[str, Any] = {
    "pipeline": {"name": "copy"},
    "transform": {"cmd": ["sh", "-c", "cp -r /pfs/raw/. /pfs/out/"]},
    "input": {"pfs": {"repo": "raw", "glob": "/*"}},
}
ROUNDS = 4


async def one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def files(items: dict[str, bytes]) -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
    for path, data in items.items():
        yield path, one(data)


async def only_job_done(cluster: Cluster, timeout: float = 20) -> JobInfo:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        jobs = await cluster.pps.list_jobs("copy")
        if len(jobs) == 1 and jobs[0].done:
            return jobs[0]
        assert asyncio.get_running_loop().time() < deadline, f"job not done: {jobs}"
        await asyncio.sleep(0.1)


async def test_a_recreated_pipeline_runs_its_jobs(cluster: Cluster) -> None:
    await cluster.pfs.create_repo("raw")
    await cluster.pfs.put_files("raw", "master", files({f"/f{i}": b"x" for i in range(4)}))
    await cluster.pps.create_pipeline(SPEC)
    assert (await only_job_done(cluster)).state == "JOB_SUCCESS"
    for round_ in range(ROUNDS):
        # Let a reconciler pass know the pipeline, then delete and recreate at once,
        # while its next pass (poked by the delete) may still be forgetting the old one.
        await cluster.engine.workers.reconcile()
        await cluster.pps.delete_pipeline("copy")
        await asyncio.sleep(0.05 * round_)
        await cluster.pps.create_pipeline(SPEC)
        job = await only_job_done(cluster)
        assert job.state == "JOB_SUCCESS", (round_, job)


async def test_a_stale_forget_spares_a_recreated_pipelines_tasks(cluster: Cluster) -> None:
    await cluster.pfs.create_repo("raw")
    await cluster.pfs.put_files("raw", "master", files({f"/f{i}": b"x" for i in range(4)}))
    await cluster.pps.create_pipeline(SPEC)
    await only_job_done(cluster)
    await cluster.pps.delete_pipeline("copy")
    await cluster.pps.create_pipeline(SPEC)
    # A reconciler pass that read the pipeline list between the delete and the create
    # reaches its forgetting now: the name exists again, so the queue stays.
    assert not await cluster.engine.workers.queues.forget_if_gone("copy")
    assert (await only_job_done(cluster)).state == "JOB_SUCCESS"
    # Gone for good: forgotten.
    await cluster.pps.delete_pipeline("copy")
    assert await cluster.engine.workers.queues.forget_if_gone("copy")
