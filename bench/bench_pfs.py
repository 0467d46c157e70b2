"""Commit and diff through PFS in a 1,000,000-file repo vs a 1,000-file one (issue 3).

Run: ``.venv/bin/python -m bench.bench_pfs [--files 1000000] [--batch 100000] [--dir /tmp]``

Starts ``tusk up --detach`` in a temporary ``TUSK_HOME`` (real PostgreSQL, NATS, PFS), and
builds two repos through the PFS HTTP API: ``big`` with N files (default 1,000,000: paths
``/dataset/part-NNN/file-NNNNNNN.parquet``, 16 unique bytes each, put in batches of
``--batch`` files by ``PfsClient.put_files``, one commit per batch) and ``small`` with 1,000
files of the same shape. Then:

1. commit 1 file (a put of one new 1 KiB file = one commit) into each repo, alternating,
   median of 21 each, with an HTTP client in this process; ratio big/small (goal <= 1.5).
   The same through the CLI (``tusk put file``, median of 5) for the user's view.
2. a commit that changes 10 files of ``big`` (4 modified, 3 added, 3 deleted, one commit),
   then ``diff`` of it against its parent through the API: the first call (the PFS node
   cache has not seen the new nodes) and the median of 11 more (goal <= 100 ms); and the
   CLI's ``tusk diff file`` wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from bench.bench_cli_ingest import EmbeddedCluster, embedded_cluster
from shared.api.pfs_client import PfsClient


def path_of(i: int) -> str:
    return f"/dataset/part-{i % 1000:03d}/file-{i:07d}.parquet"


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _numbered(start: int, stop: int) -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
    for i in range(start, stop):
        yield path_of(i), _one(b"%016x" % i)


async def build_repo(pfs: PfsClient, repo: str, count: int, batch: int) -> float:
    """Create ``repo`` with ``count`` files, one commit per ``batch``; returns seconds."""
    await pfs.create_repo(repo)
    started = time.perf_counter()
    for start in range(0, count, batch):
        stop = min(count, start + batch)
        t0 = time.perf_counter()
        result = await pfs.put_files(repo, "master", _numbered(start, stop))
        assert result.files == stop - start, result
        if count > batch:
            print(
                f"  {repo}: files {start:,}-{stop:,} in {time.perf_counter() - t0:.1f} s",
                flush=True,
            )
    took = time.perf_counter() - started
    info = await pfs.inspect_commit(repo, "master")
    assert info.file_count == count, info
    return took


async def commit_one(pfs: PfsClient, repo: str, n: int) -> float:
    async def source() -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
        yield f"/incoming/new-{n:05d}.bin", _one(b"x" * 1024 + b"%d" % n)

    started = time.perf_counter()
    await pfs.put_files(repo, "master", source())
    return time.perf_counter() - started


async def bench_commits(pfs: PfsClient, n: int, runs: int = 21) -> tuple[float, float]:
    for k in range(3):  # warm-up: connections, caches
        await commit_one(pfs, "big", 90_000 + k)
        await commit_one(pfs, "small", 90_000 + k)
    big: list[float] = []
    small: list[float] = []
    for k in range(runs):
        big.append(await commit_one(pfs, "big", k))
        small.append(await commit_one(pfs, "small", k))
    t_big, t_small = statistics.median(big), statistics.median(small)
    ratio = t_big / t_small
    print(
        f"commit 1 file, API (median of {runs}): {n:,}-file repo {t_big * 1000:.1f} ms, "
        f"1,000-file repo {t_small * 1000:.1f} ms; ratio {ratio:.2f} (goal <= 1.5: "
        f"{'met' if ratio <= 1.5 else 'MISSED'})",
        flush=True,
    )
    return t_big, t_small


def bench_cli_commits(cluster: EmbeddedCluster, work: Path, n: int, runs: int = 5) -> None:
    local = work / "one.bin"
    local.write_bytes(b"y" * 1024)
    big = []
    small = []
    for k in range(runs):
        big.append(cluster.tusk("put", "file", f"big@master:/cli/f{k}.bin", "-f", str(local)))
        small.append(cluster.tusk("put", "file", f"small@master:/cli/f{k}.bin", "-f", str(local)))
    t_big, t_small = statistics.median(big), statistics.median(small)
    print(
        f"commit 1 file, CLI wall (median of {runs}): {n:,}-file repo {t_big:.3f} s, "
        f"1,000-file repo {t_small:.3f} s; ratio {t_big / t_small:.2f}",
        flush=True,
    )


async def bench_diff(pfs: PfsClient, n: int, runs: int = 11) -> tuple[str, str]:
    parent = (await pfs.inspect_commit("big", "master")).id
    step = n // 10
    picked = [i * step + 17 for i in range(10)]
    await pfs.start_commit("big", "master", description="10 changes")

    async def changes() -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
        for j, i in enumerate(picked[:7]):
            path = path_of(i) if j < 4 else path_of(i) + ".new"
            yield path, _one(b"changed %d" % i)

    await pfs.put_files("big", "master", changes())
    for i in picked[7:]:
        await pfs.delete_file("big", "master", path_of(i))
    child = (await pfs.finish_commit("big", "master")).id

    started = time.perf_counter()
    found = await pfs.diff_files("big", child, old_repo="big", old_ref=parent)
    first = time.perf_counter() - started
    assert len(found) == 10, found
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        found = await pfs.diff_files("big", child, old_repo="big", old_ref=parent)
        times.append(time.perf_counter() - started)
    warm = statistics.median(times)
    print(
        f"diff of two {n:,}-file commits differing in 10 files, API: first {first * 1000:.1f} ms, "
        f"then median {warm * 1000:.1f} ms (goal <= 100 ms: "
        f"{'met' if max(first, warm) <= 0.1 else 'MISSED'})",
        flush=True,
    )
    return parent, child


async def run_api(cluster: EmbeddedCluster, n: int, batch: int) -> tuple[str, str]:
    async with PfsClient(cluster.config.pfs_url) as pfs:
        print(f"building a {n:,}-file repo with put_files in batches of {batch:,}", flush=True)
        took = await build_repo(pfs, "big", n, batch)
        print(f"built {n:,} files in {took:.1f} s ({n / took:,.0f} files/s)", flush=True)
        took = await build_repo(pfs, "small", 1000, batch)
        print(f"built 1,000 files in {took:.2f} s", flush=True)
        await bench_commits(pfs, n)
        return await bench_diff(pfs, n)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=100_000)
    parser.add_argument("--dir", default=None, help="where the cluster goes")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="tusk-bench-pfs-", dir=args.dir) as tmp,
        embedded_cluster(args.dir) as cluster,
    ):
        parent, child = asyncio.run(run_api(cluster, args.files, args.batch))
        bench_cli_commits(cluster, Path(tmp), args.files)
        took = statistics.median(
            cluster.tusk("diff", "file", f"big@{child}", f"big@{parent}") for _ in range(3)
        )
        print(f"tusk diff file (CLI wall, median of 3): {took:.3f} s", flush=True)


if __name__ == "__main__":
    main()
