"""Which commits a pipeline's jobs read: pinned inputs, branch moves, branch triggers.

Real services (PFS, PPS, scheduler in the test's loop, PostgreSQL, NATS) and real workers
in bubblewrap; the CLI runs as the installed ``tusk`` script.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from shared.api.events import BranchMoved, CommitFinished, Event, subject_filter
from shared.api.pps_models import JobInfo
from shared.platform.errors import InvalidArgument
from tests.fixtures.cluster import Cluster
from tests.fixtures.parts import require, tusk_script_missing

TUSK = Path(sys.executable).parent / "tusk"
# Long enough for the scheduler to have acted on an event had it wanted to.
SETTLE_S = 3.0

LIST_FILES: dict[str, Any] = {
    "pipeline": {"name": "listing"},
    "transform": {"cmd": ["sh", "-c", "ls /pfs/raw > /pfs/out/files"]},
    "input": {"pfs": {"repo": "raw", "glob": "/"}},
}


async def one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def files(items: dict[str, bytes]) -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
    for path, data in items.items():
        yield path, one(data)


async def put(cluster: Cluster, repo: str, branch: str, path: str, data: bytes = b"x") -> str:
    return (await cluster.pfs.put_files(repo, branch, files({path: data}))).commit.id


async def read(cluster: Cluster, repo: str, path: str) -> bytes:
    return b"".join([c async for c in cluster.pfs.get_file(repo, "master", path)])


async def jobs_done(
    cluster: Cluster, pipeline: str, count: int, timeout: float = 60
) -> list[JobInfo]:
    """Wait until exactly ``count`` jobs exist and all are done; newest first."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        jobs = await cluster.pps.list_jobs(pipeline)
        assert len(jobs) <= count, f"more jobs than expected: {jobs}"
        if len(jobs) == count and all(j.done for j in jobs):
            return jobs
        assert asyncio.get_running_loop().time() < deadline, f"jobs not done: {jobs}"
        await asyncio.sleep(0.1)


async def no_new_jobs(cluster: Cluster, pipeline: str, count: int) -> None:
    """The pipeline still has ``count`` jobs after the scheduler had time to act."""
    await asyncio.sleep(SETTLE_S)
    assert len(await cluster.pps.list_jobs(pipeline)) == count


def read_commits(job: JobInfo) -> list[str]:
    return [c.id for c in job.input_commits]


async def test_a_pinned_input_reads_exactly_its_commit(cluster: Cluster) -> None:
    await cluster.pfs.create_repo("raw")
    await cluster.pfs.create_repo("params")
    pinned = await put(cluster, "raw", "master", "/a")
    await put(cluster, "raw", "master", "/b")
    first_params = await put(cluster, "params", "master", "/p1")
    spec = {
        "pipeline": {"name": "listing"},
        "transform": {"cmd": ["sh", "-c", "{ ls /pfs/raw; ls /pfs/params; } > /pfs/out/files"]},
        "input": {
            "cross": [
                {"pfs": {"repo": "raw", "glob": "/", "commit": pinned}},
                {"pfs": {"repo": "params", "glob": "/"}},
            ]
        },
    }
    await cluster.pps.create_pipeline(spec)
    (job,) = await jobs_done(cluster, "listing", 1)
    assert job.state == "JOB_SUCCESS", job
    assert read_commits(job) == [pinned, first_params]
    assert (await read(cluster, "listing", "/files")).split() == [b"a", b"p1"]

    # New commits on the pinned input's branch start nothing...
    await put(cluster, "raw", "master", "/c")
    await cluster.pfs.create_branch("raw", "master", head="master^")
    await no_new_jobs(cluster, "listing", 1)
    # ...while the other input still starts jobs, which read the pinned commit.
    second_params = await put(cluster, "params", "master", "/p2")
    job2 = (await jobs_done(cluster, "listing", 2))[0]
    assert read_commits(job2) == [pinned, second_params]
    assert (await read(cluster, "listing", "/files")).split() == [b"a", b"p1", b"p2"]


async def test_a_pin_to_a_missing_commit_is_refused(cluster: Cluster) -> None:
    await cluster.pfs.create_repo("raw")
    await put(cluster, "raw", "master", "/a")
    spec = {**LIST_FILES, "input": {"pfs": {"repo": "raw", "glob": "/", "commit": "f" * 32}}}
    with pytest.raises(InvalidArgument, match="not found in repo raw"):
        await cluster.pps.create_pipeline(spec)
    assert await cluster.pps.list_pipelines() == []


async def test_each_head_move_runs_one_job_over_the_new_head(cluster: Cluster) -> None:
    await cluster.pfs.create_repo("raw")
    await cluster.pfs.create_branch("raw", "master")
    await cluster.pps.create_pipeline(LIST_FILES)
    s1 = await put(cluster, "raw", "staging", "/a")
    s2 = await put(cluster, "raw", "staging", "/b")
    await no_new_jobs(cluster, "listing", 0)  # staging is not an input

    # Deferred processing: master jumps to a commit of staging, then to its head.
    await cluster.pfs.create_branch("raw", "master", head="staging^")
    assert read_commits((await jobs_done(cluster, "listing", 1))[0]) == [s1]
    await cluster.pfs.create_branch("raw", "master", head="staging")
    assert read_commits((await jobs_done(cluster, "listing", 2))[0]) == [s2]
    assert (await read(cluster, "listing", "/files")).split() == [b"a", b"b"]
    # Moving back runs the older commit again: the output follows the branch.
    await cluster.pfs.create_branch("raw", "master", head=s1)
    assert read_commits((await jobs_done(cluster, "listing", 3))[0]) == [s1]
    assert (await read(cluster, "listing", "/files")).split() == [b"a"]

    # A put moves the head and finishes a commit: two events, one job.
    put_commit = await put(cluster, "raw", "master", "/c")
    assert read_commits((await jobs_done(cluster, "listing", 4))[0]) == [put_commit]
    await no_new_jobs(cluster, "listing", 4)

    # A redelivered move (same event) makes no second job.
    moves = await branch_moved_events(cluster, "raw")
    assert [m.payload.new_head for m in moves if isinstance(m.payload, BranchMoved)][-1] == (
        put_commit
    )
    for event in moves:
        assert not await cluster.engine.jobs.on_events([event.to_bytes()])
    assert len(await cluster.pps.list_jobs("listing")) == 4


async def branch_moved_events(cluster: Cluster, repo: str) -> list[Event]:
    """Every branch.moved event of ``repo`` in the stream, in order."""
    bus = cluster.runners["pfs"].app[__import__("services.pfs.api", fromlist=["BUS"]).BUS]
    found: list[Event] = []
    subject = subject_filter(cluster.config.nats_prefix, "branch.moved", repo)
    async with bus.subscribe_events(subject, deliver="all") as events:
        stream = aiter(events)
        while True:
            try:
                found.append(await asyncio.wait_for(anext(stream), 1.0))
            except TimeoutError:
                return found


async def test_an_input_trigger_defers_jobs_until_its_condition_holds(cluster: Cluster) -> None:
    await cluster.pfs.create_repo("raw")
    spec = {
        **LIST_FILES,
        "input": {
            "pfs": {
                "repo": "raw",
                "branch": "master",
                "glob": "/",
                "trigger": {"branch": "staging", "size": "1K"},
            }
        },
    }
    await cluster.pps.create_pipeline(spec)
    trigger = (await cluster.pfs.inspect_branch("raw", "master")).trigger
    assert trigger is not None and (trigger.branch, trigger.size) == ("staging", 1000)

    # Below the threshold: master stays where it is, nothing runs.
    await put(cluster, "raw", "staging", "/a", b"x" * 400)
    await put(cluster, "raw", "staging", "/b", b"x" * 400)
    await no_new_jobs(cluster, "listing", 0)
    assert (await cluster.pfs.inspect_branch("raw", "master")).head is None

    # Crossing it moves master to staging's head, and one job runs over it.
    crossing = await put(cluster, "raw", "staging", "/c", b"x" * 400)
    assert (await cluster.pfs.inspect_branch("raw", "master")).head == crossing
    (job,) = await jobs_done(cluster, "listing", 1)
    assert job.state == "JOB_SUCCESS" and read_commits(job) == [crossing]
    assert (await read(cluster, "listing", "/files")).split() == [b"a", b"b", b"c"]
    await no_new_jobs(cluster, "listing", 1)


async def test_cli_sets_a_branch_trigger(cluster: Cluster, tmp_path: Path) -> None:
    require(tusk_script_missing(), "the tusk console script")
    await cluster.pfs.create_repo("raw")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSK_")}
    env.update(TUSK_HOME=str(tmp_path / "home"), TUSK_PFS_URL=cluster.config.pfs_url)

    async def tusk(*args: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            str(TUSK),
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        return process.returncode or 0, out.decode(), err.decode()

    code, _, err = await tusk(
        "create", "branch", "raw@master", "--trigger", "staging",
        "--trigger-size", "1KB", "--trigger-commits", "3", "--trigger-all",
    )  # fmt: skip
    assert code == 0, err
    trigger = (await cluster.pfs.inspect_branch("raw", "master")).trigger
    assert trigger is not None
    assert (trigger.branch, trigger.size, trigger.commits, trigger.all) == (
        "staging",
        1000,
        3,
        True,
    )
    code, out, _ = await tusk("inspect", "branch", "raw@master")
    assert "staging (size >= 1000 bytes and 3 commits)" in out
    code, _, err = await tusk("create", "branch", "raw@dev", "--trigger-size", "1KB")
    assert code != 0 and "--trigger BRANCH" in err and "Traceback" not in err


async def commit_finished_events(cluster: Cluster, repo: str) -> list[Event]:
    """Every commit.finished event of ``repo`` in the stream, in order."""
    bus = cluster.runners["pfs"].app[__import__("services.pfs.api", fromlist=["BUS"]).BUS]
    found: list[Event] = []
    subject = subject_filter(cluster.config.nats_prefix, "commit.finished", repo)
    async with bus.subscribe_events(subject, deliver="all") as events:
        stream = aiter(events)
        while True:
            try:
                found.append(await asyncio.wait_for(anext(stream), 1.0))
            except TimeoutError:
                return found


async def test_a_late_event_of_an_older_commit_makes_no_job(cluster: Cluster) -> None:
    await cluster.pfs.create_repo("raw")
    older = await put(cluster, "raw", "master", "/a")
    newer = await put(cluster, "raw", "master", "/b")
    # The pipeline starts over the head: no job has read the older commit.
    await cluster.pps.create_pipeline(LIST_FILES)
    (job,) = await jobs_done(cluster, "listing", 1)
    assert read_commits(job) == [newer]

    # JetStream redelivers the older commit's commit.finished after the newer job ran.
    finished = {
        e.payload.commit: e for e in await commit_finished_events(cluster, "raw")
        if isinstance(e.payload, CommitFinished)
    }  # fmt: skip
    assert not await cluster.engine.jobs.on_events([finished[older].to_bytes()])
    await no_new_jobs(cluster, "listing", 1)
    assert (await read(cluster, "listing", "/files")).split() == [b"a", b"b"]

    # In order, each later commit still makes its own job.
    later = await put(cluster, "raw", "master", "/c")
    assert read_commits((await jobs_done(cluster, "listing", 2))[0]) == [later]
    assert not await cluster.engine.jobs.on_events([finished[newer].to_bytes()])
    assert (await read(cluster, "listing", "/files")).split() == [b"a", b"b", b"c"]
