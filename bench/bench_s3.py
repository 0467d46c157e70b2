"""The S3 gateway against a real embedded cluster (issue 13).

Run: ``.venv/bin/python -m bench.bench_s3 [--get-gib 1] [--big-gib 5] [--objects 100000] [--dir /tmp]``

Starts ``tusk up --detach`` in a temporary ``TUSK_HOME`` and measures:

0. PutObject of a ``--get-gib`` GiB random file (curl) beside ``tusk put file`` of it.
1. GetObject of that file through the gateway beside
   ``tusk get file`` of the same file (goal: >= 0.8x its speed), with curl (one stream,
   like ``tusk get file``), boto3 (one streamed get_object) and ``aws s3 cp`` (parallel
   ranged GETs); every client writes the file to disk in the same directory.
2. The gateway's RSS while a ``--big-gib`` GiB object (unique random bytes) goes up
   (streamed PUT) and down (streamed GET): it must stay flat, not grow with the object.
3. ListObjectsV2 over ``--objects`` keys under one prefix, 1,000 per page: the time of
   every page (median of two passes, the first warming caches), first vs last page
   (goal: within 1.5x), and a cold seek straight to the last page with StartAfter.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import boto3
from botocore.config import Config as BotoConfig

from bench.bench_cli_ingest import embedded_cluster
from shared.api.pfs_client import PfsClient

MiB = 1 << 20
GiB = 1 << 30
TUSK = str(Path(sys.executable).with_name("tusk"))
AWS = str(Path(sys.executable).with_name("aws"))


def s3_client(url: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        region_name="us-east-1",
        config=BotoConfig(retries={"max_attempts": 1}, read_timeout=600),
    )


def gateway_pid(home: Path) -> int:
    from tusk.embedded import status

    [component] = [c for c in status(home).components if c.name == "s3gateway"]
    assert component.pid is not None
    return component.pid


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class PeakRss:
    """Samples a process' RSS every 20 ms in a thread while the block runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = rss(pid)
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def __str__(self) -> str:
        return f"RSS {self.before / MiB:.0f} MiB -> peak {self.peak / MiB:.0f} MiB"


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{done.stderr.decode(errors='replace')}")
    return elapsed


def rate(size: int, seconds: float) -> str:
    return f"{size / seconds / 1e6:7.0f} MB/s ({seconds:.2f} s)"


def bench_get(cluster: Any, url: str, scratch: Path, size: int) -> None:
    source = scratch / "source.bin"
    with source.open("wb") as out:
        for _ in range(size // (64 * MiB)):
            out.write(os.urandom(64 * MiB))
    cluster.tusk("create", "repo", "bench")
    env = dict(
        cluster.env,
        AWS_ACCESS_KEY_ID="b",
        AWS_SECRET_ACCESS_KEY="b",
        AWS_DEFAULT_REGION="us-east-1",
    )
    # Uploads of the same file: the CLI, then one streamed PUT (curl) through the gateway.
    put_cli = cluster.tusk("put", "file", "bench@master:/big.bin", "-f", str(source))
    put_curl = timed(["curl", "-sSf", "-T", str(source), f"{url}/master.bench/put.bin"], env)
    source.unlink()
    print(f"\n0. PutObject of {size / GiB:g} GiB (page cache warm, one run)")
    print(f"   tusk put file  {rate(size, put_cli)}")
    print(f"   curl -T        {rate(size, put_curl)}   {put_cli / put_curl:.2f}x tusk put file")
    out = scratch / "out.bin"
    s3 = s3_client(url)
    pid = gateway_pid(cluster.home)

    def boto_get() -> None:
        body = s3.get_object(Bucket="master.bench", Key="big.bin")["Body"]
        with out.open("wb") as sink:
            for piece in body.iter_chunks(MiB):
                sink.write(piece)

    runs: dict[str, list[float]] = {"tusk get file": [], "curl": [], "boto3": [], "aws s3 cp": []}
    peaks = []
    for _ in range(3):
        runs["tusk get file"].append(
            timed([TUSK, "get", "file", "bench@master:/big.bin", "-o", str(out)], cluster.env)
        )
        out.unlink()
        with PeakRss(pid) as peak:
            runs["curl"].append(
                timed(["curl", "-sSf", "-o", str(out), f"{url}/master.bench/big.bin"], env)
            )
            out.unlink()
            started = time.perf_counter()
            boto_get()
            runs["boto3"].append(time.perf_counter() - started)
            out.unlink()
            runs["aws s3 cp"].append(
                timed(
                    [AWS, "--endpoint-url", url, "s3", "cp", "s3://master.bench/big.bin", str(out)],
                    env,
                )
            )
            out.unlink()
        peaks.append(peak)
    base = statistics.median(runs["tusk get file"])
    print(f"\n1. GetObject of {size / GiB:g} GiB (median of 3, written to disk)")
    for name, seconds in runs.items():
        median = statistics.median(seconds)
        ratio = base / median
        print(f"   {name:<14} {rate(size, median)}   {ratio:.2f}x tusk get file")
    print(f"   gateway {peaks[-1]} during the gateway's GETs")


async def bench_big(url: str, pid: int, size: int) -> None:
    block = 8 * MiB

    async def body() -> AsyncIterator[bytes]:
        for _ in range(size // block):
            yield await asyncio.to_thread(os.urandom, block)  # unique bytes: no deduplication

    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        with PeakRss(pid) as up:
            started = time.perf_counter()
            async with session.put(
                f"{url}/master.bench/huge.bin", data=body(), headers={"Content-Length": str(size)}
            ) as response:
                assert response.status == 200, await response.text()
            put_s = time.perf_counter() - started
        with PeakRss(pid) as down:
            started = time.perf_counter()
            received = 0
            async with session.get(f"{url}/master.bench/huge.bin") as response:
                async for piece in response.content.iter_chunked(MiB):
                    received += len(piece)
            get_s = time.perf_counter() - started
        assert received == size
    print(f"\n2. {size / GiB:g} GiB through the gateway, streamed")
    print(f"   PUT {rate(size, put_s)}  gateway {up}")
    print(f"   GET {rate(size, get_s)}  gateway {down}")


async def bench_list(url: str, pfs_url: str, count: int) -> None:
    async def files() -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
        for i in range(count):
            yield f"/many/obj{i:07d}.txt", one(b"x")

    async def one(data: bytes) -> AsyncIterator[bytes]:
        yield data

    async with PfsClient(pfs_url, timeout=600) as pfs:
        await pfs.create_repo("listing")
        await pfs.put_files("listing", "master", files())
    s3 = s3_client(url)

    def one_pass() -> list[float]:
        times = []
        token = None
        while True:
            args: dict[str, Any] = {"Bucket": "master.listing", "Prefix": "many/", "MaxKeys": 1000}
            if token:
                args["ContinuationToken"] = token
            started = time.perf_counter()
            page = s3.list_objects_v2(**args)
            times.append(time.perf_counter() - started)
            assert page["KeyCount"] == 1000
            token = page.get("NextContinuationToken")
            if not token:
                return times

    passes = [await asyncio.to_thread(one_pass) for _ in range(2)]
    pages = [statistics.median(t) for t in zip(*passes, strict=True)]
    first, last = pages[0], pages[-1]
    started = time.perf_counter()
    seek = await asyncio.to_thread(
        s3.list_objects_v2,
        Bucket="master.listing",
        Prefix="many/",
        MaxKeys=1000,
        StartAfter=f"many/obj{count - 1001:07d}.txt",
    )
    seek_s = time.perf_counter() - started
    assert seek["KeyCount"] == 1000
    head, tail = statistics.median(pages[:10]), statistics.median(pages[-10:])
    print(f"\n3. ListObjectsV2 over {count:,} objects, 1,000 per page ({len(pages)} pages)")
    print(
        f"   first page {first * 1000:.1f} ms, last page {last * 1000:.1f} ms "
        f"(last/first {last / first:.2f}x); first 10 pages {head * 1000:.1f} ms, "
        f"last 10 {tail * 1000:.1f} ms ({tail / head:.2f}x); median {statistics.median(pages) * 1000:.1f} ms"
    )
    print(f"   StartAfter straight to the last page: {seek_s * 1000:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--get-gib", type=float, default=1)
    parser.add_argument("--big-gib", type=float, default=5)
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    with embedded_cluster(args.dir) as cluster:
        url = cluster.config.s3gateway_url
        scratch = cluster.home / "bench-s3"
        scratch.mkdir()
        bench_get(cluster, url, scratch, int(args.get_gib * GiB))
        if args.big_gib:
            asyncio.run(bench_big(url, gateway_pid(cluster.home), int(args.big_gib * GiB)))
        if args.objects:
            asyncio.run(bench_list(url, cluster.config.pfs_url, args.objects))


if __name__ == "__main__":
    main()
