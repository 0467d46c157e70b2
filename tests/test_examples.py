"""The examples in examples/ run as their READMEs say, with exactly the outputs they promise.

Each test loads the example's own spec file and sample data into a real cluster (PFS, PPS,
scheduler, sandboxed workers), so an example that drifts from the code fails here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from shared.api.pps_models import JobInfo
from shared.pipeline.spec import load_spec_documents
from tests.fixtures.cluster import Cluster

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


def read_folder(folder: Path) -> dict[str, bytes]:
    return {f"/{path.name}": path.read_bytes() for path in sorted(folder.iterdir())}


async def _files(items: dict[str, bytes]) -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
    for path, data in items.items():
        yield path, _one(data)


async def put_folder(cluster: Cluster, repo: str, folder: Path) -> str:
    """Put every file of ``folder`` at the repo's root in one commit; its id."""
    result = await cluster.pfs.put_files(repo, "master", _files(read_folder(folder)))
    return result.commit.id


def read_specs(spec_file: Path) -> list[dict[str, Any]]:
    return load_spec_documents(spec_file.read_text())


async def create_pipelines(cluster: Cluster, spec_file: Path) -> list[str]:
    names = []
    for spec in read_specs(spec_file):
        names.append((await cluster.pps.create_pipeline(spec)).name)
    return names


async def wait_jobs(cluster: Cluster, pipeline: str, count: int, timeout: float = 60) -> JobInfo:
    """Wait until the pipeline has ``count`` jobs, all done and successful; the newest."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        jobs = await cluster.pps.list_jobs(pipeline)
        if len(jobs) >= count and all(j.done for j in jobs):
            assert all(j.state == "JOB_SUCCESS" for j in jobs), jobs
            return jobs[0]
        assert loop.time() < deadline, f"{pipeline}: jobs not done in {timeout} s: {jobs}"
        await asyncio.sleep(0.1)


async def output_files(cluster: Cluster, repo: str) -> dict[str, str]:
    """Every file of the repo's master as text."""
    found = {}
    for info in await cluster.pfs.glob_files(repo, "master", "/**"):
        if info.type == "file":
            chunks = [c async for c in cluster.pfs.get_file(repo, "master", info.path)]
            found[info.path] = b"".join(chunks).decode()
    return found


def words(text: str) -> dict[str, int]:
    return {word: int(n) for word, n in (line.split() for line in text.splitlines())}


async def test_word_count_maps_per_file_and_reduces_only_what_changed(cluster: Cluster) -> None:
    example = EXAMPLES / "word-count"
    await cluster.pfs.create_repo("texts")
    await put_folder(cluster, "texts", example / "data")
    assert await create_pipelines(cluster, example / "pipelines.yaml") == ["count", "reduce"]
    await wait_jobs(cluster, "count", 1)
    await wait_jobs(cluster, "reduce", 1)

    per_file = await output_files(cluster, "count")
    assert sorted(per_file) == ["/fox.txt", "/rain.txt", "/river.txt"]
    assert per_file["/rain.txt"] == "and 1\nfox 1\nin 1\nmore 1\nrain 3\nstays 1\nthe 1\n"
    totals = await output_files(cluster, "reduce")
    counted = words(totals["/words"])
    assert (counted["the"], counted["rain"], counted["dog"], counted["mill"]) == (6, 3, 2, 2)
    assert len(counted) == 22 and totals["/total"] == "33\n"
    assert list(counted) == sorted(counted)

    # One more text: one count datum runs, the three others are reused; reduce sums again.
    await put_folder(cluster, "texts", example / "extra")
    count_job = await wait_jobs(cluster, "count", 2)
    assert (count_job.data_processed, count_job.data_skipped, count_job.data_total) == (1, 3, 4)
    (datum,) = await cluster.pps.list_datums("count", count_job.id)
    assert [part["match"] for part in datum.inputs] == ["/mill.txt"]
    await wait_jobs(cluster, "reduce", 2)
    totals = await output_files(cluster, "reduce")
    counted = words(totals["/words"])
    assert (counted["the"], counted["dog"], counted["mill"], counted["walks"]) == (8, 3, 3, 1)
    assert totals["/total"] == "40\n"


async def test_join_pairs_each_order_with_its_customer(cluster: Cluster) -> None:
    example = EXAMPLES / "join"
    for repo in ("orders", "customers"):
        await cluster.pfs.create_repo(repo)
        await put_folder(cluster, repo, example / repo)
    await create_pipelines(cluster, example / "pipeline.yaml")
    job = await wait_jobs(cluster, "receipts", 1)
    # c03 has no order and order 1004's customer c09 does not exist: an inner join drops both.
    assert job.data_total == 3
    assert await output_files(cluster, "receipts") == {
        "/c01-1001.txt": "order 1001: Ada Lovelace bought 3 notebooks\n",
        "/c02-1002.txt": "order 1002: Grace Hopper bought 1 lamp\n",
        "/c02-1003.txt": "order 1003: Grace Hopper bought 12 pencils\n",
    }


async def test_cross_counts_every_pattern_in_every_log(cluster: Cluster) -> None:
    example = EXAMPLES / "cross"
    for repo in ("logs", "patterns"):
        await cluster.pfs.create_repo(repo)
        await put_folder(cluster, repo, example / repo)
    await create_pipelines(cluster, example / "pipeline.yaml")
    job = await wait_jobs(cluster, "matches", 1)
    assert job.data_total == 4
    assert await output_files(cluster, "matches") == {
        "/error/api.log": "2\n",
        "/error/db.log": "0\n",
        "/slow/api.log": "2\n",
        "/slow/db.log": "1\n",
    }
