"""JobKills: a killed job's running datum steps are cancelled, its later ones never start,
and a cancel of the worker itself is not mistaken for a kill."""

from __future__ import annotations

import asyncio

import pytest

from services.scheduler.job_kills import REMEMBERED, JobKilled, JobKills


async def test_kill_cancels_the_jobs_running_steps_only() -> None:
    kills = JobKills()
    started = asyncio.Event()
    cancelled: list[str] = []

    async def step(name: str) -> str:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(name)
            raise
        return name

    async def quick() -> str:
        await asyncio.sleep(0.05)
        return "other"

    doomed = asyncio.create_task(kills.run("job-a", step("a")))
    other = asyncio.create_task(kills.run("job-b", quick()))
    await started.wait()
    assert kills.kill("job-a") == 1
    with pytest.raises(JobKilled):
        await doomed
    assert cancelled == ["a"]
    assert await other == "other"  # another job's step runs on

    # A later step of a killed job does not start.
    late = step("late")
    with pytest.raises(JobKilled):
        await kills.run("job-a", late)
    assert cancelled == ["a"]


async def test_a_cancelled_worker_is_not_a_killed_job() -> None:
    kills = JobKills()
    running = asyncio.Event()

    async def step() -> None:
        running.set()
        await asyncio.sleep(60)

    task = asyncio.create_task(kills.run("job", step()))
    await running.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not kills.killed("job")


def test_killed_jobs_are_remembered_within_a_bound() -> None:
    kills = JobKills()
    for n in range(REMEMBERED + 5):
        kills.kill(f"job-{n}")
    assert not kills.killed("job-0") and kills.killed(f"job-{REMEMBERED + 4}")
