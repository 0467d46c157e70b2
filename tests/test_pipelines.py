"""Pipelines end to end: real services, real workers in bubblewrap, incremental jobs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shared.api.pps_models import JobInfo
from shared.platform.errors import InvalidArgument
from tests.fixtures.cluster import Cluster

WORD_COUNT: dict[str, Any] = {
    "pipeline": {"name": "count"},
    "transform": {
        "cmd": ["sh", "-c", 'wc -w < "$words" | tr -d " " > /pfs/out/$(basename "$words").count'],
    },
    "input": {"pfs": {"repo": "words", "glob": "/*"}},
}


async def one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def files(items: dict[str, bytes]) -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
    for path, data in items.items():
        yield path, one(data)


async def read(cluster: Cluster, repo: str, path: str) -> bytes:
    return b"".join([c async for c in cluster.pfs.get_file(repo, "master", path)])


async def wait_for_jobs(
    cluster: Cluster, pipeline: str, count: int, timeout: float = 60
) -> list[JobInfo]:
    """Wait until ``count`` jobs exist and all are done; newest first."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        jobs = await cluster.pps.list_jobs(pipeline)
        if len(jobs) >= count and all(j.done for j in jobs):
            return jobs
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"jobs not done in {timeout} s: {jobs}")
        await asyncio.sleep(0.1)


async def test_only_changed_datums_run_and_outputs_follow_inputs(cluster: Cluster) -> None:
    await cluster.pfs.create_repo("words")
    first = await cluster.pfs.put_files(
        "words", "master", files({"/a.txt": b"one two", "/b.txt": b"three four five"})
    )
    await cluster.pps.create_pipeline(WORD_COUNT)
    (job1,) = await wait_for_jobs(cluster, "count", 1)
    assert job1.state == "JOB_SUCCESS", job1
    assert (job1.data_total, job1.data_processed, job1.data_skipped) == (2, 2, 0)
    assert await read(cluster, "count", "/a.txt.count") == b"2\n"
    assert await read(cluster, "count", "/b.txt.count") == b"3\n"
    out = await cluster.pfs.inspect_commit("count", "master")
    assert [p.id for p in out.provenance] == [first.commit.id]

    # One new file: exactly one datum runs, the others are skipped and their output reused.
    second = await cluster.pfs.put_files("words", "master", files({"/c.txt": b"six"}))
    job2 = (await wait_for_jobs(cluster, "count", 2))[0]
    assert job2.state == "JOB_SUCCESS", job2
    assert (job2.data_total, job2.data_processed, job2.data_skipped) == (3, 1, 2)
    assert len(await cluster.pps.list_datums("count", job2.id)) == 1
    listing = [f.path async for f in cluster.pfs.iter_files("count", "master")]
    assert listing == ["/a.txt.count", "/b.txt.count", "/c.txt.count"]
    out = await cluster.pfs.inspect_commit("count", "master")
    assert [p.id for p in out.provenance] == [second.commit.id]
    outputs_of_input = await cluster.pfs.commit_subvenance("words", second.commit.id)
    assert [c.id for c in outputs_of_input] == [out.id]

    # A deleted input takes its datum's output with it.
    await cluster.pfs.delete_file("words", "master", "/a.txt")
    job3 = (await wait_for_jobs(cluster, "count", 3))[0]
    assert job3.state == "JOB_SUCCESS", job3
    assert job3.data_processed == 0 and job3.data_total == 2
    listing = [f.path async for f in cluster.pfs.iter_files("count", "master")]
    assert listing == ["/b.txt.count", "/c.txt.count"]


async def test_failed_datum_fails_the_job_and_keeps_the_branch(cluster: Cluster) -> None:
    await cluster.pfs.create_repo("words")
    await cluster.pfs.put_files("words", "master", files({"/ok": b"x", "/bad": b"y"}))
    spec = {
        "pipeline": {"name": "picky"},
        "transform": {
            "cmd": ["sh", "-c", 'test "$(basename $words)" != bad && cp "$words" /pfs/out/']
        },
        "input": {"pfs": {"repo": "words", "glob": "/*"}},
        "datum_tries": 1,
    }
    await cluster.pps.create_pipeline(spec)
    (job,) = await wait_for_jobs(cluster, "picky", 1)
    assert job.state == "JOB_FAILURE"
    assert job.data_failed == 1 and "exited with code 1" in (job.reason or "")
    failed = await cluster.pfs.inspect_commit("picky", job.output_commit or "")
    assert failed.error is not None
    # The branch was not advanced to the broken output.
    assert (await cluster.pfs.inspect_branch("picky", "master")).head != failed.id


async def test_two_datums_writing_one_path_fail_with_both_ids(cluster: Cluster) -> None:
    await cluster.pfs.create_repo("words")
    await cluster.pfs.put_files("words", "master", files({"/a": b"1", "/b": b"2"}))
    spec = {
        "pipeline": {"name": "clash"},
        "transform": {"cmd": ["sh", "-c", "echo x > /pfs/out/same"]},
        "input": {"pfs": {"repo": "words", "glob": "/*"}},
    }
    await cluster.pps.create_pipeline(spec)
    (job,) = await wait_for_jobs(cluster, "clash", 1)
    assert job.state == "JOB_FAILURE"
    datums = await cluster.pps.list_datums("clash", job.id)
    reason = job.reason or ""
    assert "/same" in reason and all(d.id in reason for d in datums), reason


async def test_bad_specs_are_refused_and_create_nothing(cluster: Cluster) -> None:
    await cluster.pfs.create_repo("words")
    bad_specs = [
        ({**WORD_COUNT, "transfrom": {}}, "did you mean 'transform'"),
        ({**WORD_COUNT, "input": {"pfs": {"repo": "nope", "glob": "/*"}}}, "repo nope not found"),
        ({**WORD_COUNT, "input": {"pfs": {"repo": "words", "glob": "/[a"}}}, "input.pfs.glob"),
        ({**WORD_COUNT, "input": {"pfs": {"repo": "count", "glob": "/"}}}, "own output repo"),
    ]
    for spec, fragment in bad_specs:
        with pytest.raises(InvalidArgument, match=fragment):
            await cluster.pps.create_pipeline(spec)
    assert await cluster.pps.list_pipelines() == []
    assert [r.name for r in await cluster.pfs.list_repos()] == ["words"]


async def test_a_cycle_in_the_dag_is_refused(cluster: Cluster) -> None:
    await cluster.pfs.create_repo("words")
    await cluster.pps.create_pipeline(WORD_COUNT)
    downstream = {
        **WORD_COUNT,
        "pipeline": {"name": "down"},
        "input": {"pfs": {"repo": "count", "glob": "/"}},
    }
    await cluster.pps.create_pipeline(downstream)
    loop = {**WORD_COUNT, "input": {"pfs": {"repo": "down", "glob": "/*"}}}
    with pytest.raises(InvalidArgument, match="cycle"):
        await cluster.pps.create_pipeline(loop, update=True)
    assert (await cluster.pps.inspect_pipeline("count")).version == 1


async def test_update_with_new_transform_reprocesses_everything(cluster: Cluster) -> None:
    await cluster.pfs.create_repo("words")
    await cluster.pfs.put_files("words", "master", files({"/a": b"1", "/b": b"2"}))
    spec = {
        "pipeline": {"name": "copy"},
        "transform": {"cmd": ["sh", "-c", 'cp "$words" /pfs/out/']},
        "input": {"pfs": {"repo": "words", "glob": "/*"}},
    }
    await cluster.pps.create_pipeline(spec)
    await wait_for_jobs(cluster, "copy", 1)
    # Only parallelism changes: the datum hash ignores it, nothing reprocesses.
    await cluster.pps.create_pipeline({**spec, "parallelism_spec": {"constant": 2}}, update=True)
    job2 = (await wait_for_jobs(cluster, "copy", 2))[0]
    assert (job2.data_processed, job2.data_skipped) == (0, 2)
    changed = {
        **spec,
        "transform": {
            "cmd": ["sh", "-c", 'cp "$words" /pfs/out/; echo v2 >> /pfs/out/$(basename $words)']
        },
    }
    await cluster.pps.create_pipeline(changed, update=True)
    job3 = (await wait_for_jobs(cluster, "copy", 3))[0]
    assert job3.state == "JOB_SUCCESS" and job3.data_processed == 2
    assert await read(cluster, "copy", "/a") == b"1v2\n"
    history = await cluster.pps.pipeline_history("copy")
    assert [v["version"] for v in history] == [1, 2, 3]


async def test_downstream_pipeline_triggers_from_upstream_output(cluster: Cluster) -> None:
    await cluster.pfs.create_repo("words")
    await cluster.pps.create_pipeline(WORD_COUNT)
    total = {
        "pipeline": {"name": "total"},
        "transform": {
            "cmd": ["sh", "-c", "cat /pfs/count/* | awk '{s+=$1} END {print s}' > /pfs/out/total"]
        },
        "input": {"pfs": {"repo": "count", "glob": "/"}},
    }
    await cluster.pps.create_pipeline(total)
    source = await cluster.pfs.put_files("words", "master", files({"/a": b"x y", "/b": b"z"}))
    await wait_for_jobs(cluster, "count", 1)
    (job,) = await wait_for_jobs(cluster, "total", 1)
    assert job.state == "JOB_SUCCESS", job
    assert await read(cluster, "total", "/total") == b"3\n"
    final = await cluster.pfs.inspect_commit("total", "master")
    count_commit = final.provenance[0]
    assert count_commit.repo == "count"
    upstream = await cluster.pfs.inspect_commit("count", count_commit.id)
    assert [p.id for p in upstream.provenance] == [source.commit.id]


async def test_cron_input_ticks_and_triggers_jobs(cluster: Cluster) -> None:
    spec = {
        "pipeline": {"name": "ticker"},
        "transform": {"cmd": ["sh", "-c", "ls /pfs/tick > /pfs/out/seen"]},
        "input": {"cron": {"name": "tick", "spec": "@every 1s", "overwrite": True}},
    }
    await cluster.pps.create_pipeline(spec)
    # The first two jobs, done: ticks keep coming every second, so on a loaded machine
    # (a job slower than a tick) there may never be a moment when *every* job is done.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while True:
        jobs = (await cluster.pps.list_jobs("ticker"))[::-1][:2]
        if len(jobs) == 2 and all(j.done for j in jobs):
            break
        if loop.time() > deadline:
            raise AssertionError(f"the first two cron jobs not done in 60 s: {jobs}")
        await asyncio.sleep(0.1)
    assert all(j.state == "JOB_SUCCESS" for j in jobs), jobs
    ticks = [f.path async for f in cluster.pfs.iter_files("ticker_tick", "master")]
    assert len(ticks) == 1  # overwrite keeps only the latest tick
    seen = (await read(cluster, "ticker", "/seen")).decode().split()
    assert len(seen) == 1 and seen[0].endswith("Z")
    await cluster.pps.delete_pipeline("ticker")
    assert [r.name for r in await cluster.pfs.list_repos()] == []


async def test_job_timeout_kills_the_job(cluster: Cluster) -> None:
    await cluster.pfs.create_repo("words")
    await cluster.pfs.put_files("words", "master", files({"/a": b"1"}))
    spec = {
        "pipeline": {"name": "sleepy"},
        "transform": {"cmd": ["sleep", "30"]},
        "input": {"pfs": {"repo": "words", "glob": "/*"}},
        "job_timeout": "2s",
    }
    await cluster.pps.create_pipeline(spec)
    (job,) = await wait_for_jobs(cluster, "sleepy", 1, timeout=30)
    assert job.state == "JOB_KILLED" and "timed out after 2 s" in (job.reason or "")
