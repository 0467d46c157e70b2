"""Real S3 clients against the S3 gateway of a cluster started by ``tusk up``: aws-cli,
boto3, DuckDB's httpfs, pandas through s3fs and rclone, each doing what its users do;
a pipeline fed through S3; the gateway's memory while 512 MiB stream through it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from services.scheduler.sandbox import bwrap_available
from shared.api.pfs_client import PfsClient
from shared.api.pps_client import PpsClient
from tests.fixtures.embedded_cluster import EmbeddedCluster, eventually, start_embedded_cluster
from tests.fixtures.s3gateway import s3_client

AWS = Path(sys.executable).parent / "aws"
BUCKET = "master.data"


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmbeddedCluster]:
    reason = bwrap_available()
    assert reason is None, f"the pipeline test needs bubblewrap: {reason}"
    yield from start_embedded_cluster("tusk-s3-clients-")


@pytest.fixture
async def gateway(cluster: EmbeddedCluster) -> str:
    await cluster.healthy()
    return cluster.config.s3gateway_url


@pytest.fixture
async def pfs(cluster: EmbeddedCluster, gateway: str) -> AsyncIterator[PfsClient]:
    async with PfsClient(cluster.config.pfs_url) as client:
        yield client


@pytest.fixture
async def repo(pfs: PfsClient) -> AsyncIterator[str]:
    await pfs.create_repo("data")
    try:
        yield "data"
    finally:
        with contextlib.suppress(Exception):
            await pfs.delete_repo("data", force=True)


def client_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TUSK_"))}
    env.update(
        AWS_ACCESS_KEY_ID="any",
        AWS_SECRET_ACCESS_KEY="any",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=str(tmp_path / "aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
        HOME=str(tmp_path),
    )
    return env


async def run(argv: list[str], env: dict[str, str], timeout: float = 120) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, f"{argv[:4]} exited {process.returncode}: {err.decode()}"
    return out.decode()


async def test_tusk_status_lists_the_gateway(cluster: EmbeddedCluster, gateway: str) -> None:
    status = await cluster.tusk_status()
    [component] = [c for c in status["components"] if c["name"] == "s3gateway"]
    assert component["state"] == "up" and component["address"] == gateway


async def test_aws_cli_copies_lists_syncs_reads_ranges_and_removes(
    repo: str, gateway: str, tmp_path: Path, pfs: PfsClient
) -> None:
    env = client_env(tmp_path)
    aws = [str(AWS), "--endpoint-url", gateway, "s3"]
    local = tmp_path / "photos"
    (local / "2024 trip").mkdir(parents=True)
    for i in range(5):
        (local / "2024 trip" / f"été {i}.jpg").write_bytes(os.urandom(1000 + i))
    (local / "notes.txt").write_text("hello\n")
    big = os.urandom(20 << 20)  # above aws-cli's 8 MiB multipart threshold
    (local / "big.bin").write_bytes(big)
    await run([*aws, "cp", str(local), f"s3://{BUCKET}/photos", "--recursive"], env)
    listed = await run([*aws, "ls", f"s3://{BUCKET}/photos/", "--recursive"], env)
    assert listed.count("\n") == 7 and "photos/2024 trip/été 3.jpg" in listed
    top = await run([*aws, "ls", f"s3://{BUCKET}/photos/"], env)
    assert "PRE 2024 trip/" in top
    buckets = await run([*aws, "ls"], env)
    assert BUCKET in buckets
    # The big file went up in parts and landed as one file.
    info = await pfs.inspect_file("data", "master", "/photos/big.bin")
    assert info.size_bytes == len(big)
    # A range read, through s3api.
    await run(
        [
            str(AWS),
            "--endpoint-url",
            gateway,
            "s3api",
            "get-object",
            "--bucket",
            BUCKET,
            "--key",
            "photos/big.bin",
            "--range",
            "bytes=100-199",
            str(tmp_path / "range.bin"),
        ],
        env,
    )
    assert (tmp_path / "range.bin").read_bytes() == big[100:200]
    # Sync: only the changed file goes up again.
    (local / "notes.txt").write_text("hello, changed\n")
    synced = await run([*aws, "sync", str(local), f"s3://{BUCKET}/photos"], env)
    assert re.findall(r"upload: .*? to (s3://[^\r\n]+)", synced) == [
        f"s3://{BUCKET}/photos/notes.txt"
    ], synced
    again = await run([*aws, "sync", str(local), f"s3://{BUCKET}/photos"], env)
    assert "upload" not in again
    down = tmp_path / "down"
    await run([*aws, "sync", f"s3://{BUCKET}/photos", str(down)], env)
    assert (down / "big.bin").read_bytes() == big
    assert (down / "notes.txt").read_text() == "hello, changed\n"
    await run([*aws, "rm", f"s3://{BUCKET}/photos/2024 trip", "--recursive"], env)
    left = await run([*aws, "ls", f"s3://{BUCKET}/photos/", "--recursive"], env)
    assert "trip" not in left and "notes.txt" in left


async def test_duckdb_reads_a_csv_from_a_branch(repo: str, gateway: str) -> None:
    import duckdb
    import duckdb_ext  # type: ignore[import-not-found]

    rows = "\n".join(f"{i},name {i},{i * 1.5}" for i in range(1000))
    s3 = s3_client(gateway)
    await asyncio.to_thread(
        s3.put_object, Bucket=BUCKET, Key="file.csv", Body=f"id,name,score\n{rows}\n".encode()
    )
    extensions = Path(duckdb_ext.__path__[0]) / "extensions"

    def query() -> Any:
        con = duckdb.connect(config={"extension_directory": str(extensions)})
        con.execute("LOAD httpfs")
        host = gateway.removeprefix("http://")
        con.execute(
            f"CREATE SECRET tusk (TYPE s3, KEY_ID 'any', SECRET 'any', REGION 'us-east-1', "
            f"ENDPOINT '{host}', URL_STYLE 'path', USE_SSL false)"
        )
        return con.execute(
            f"SELECT count(*), sum(score) FROM read_csv('s3://{BUCKET}/file.csv')"
        ).fetchone()

    assert await asyncio.to_thread(query) == (1000, sum(i * 1.5 for i in range(1000)))


async def test_pandas_reads_and_writes_through_s3fs(
    repo: str, gateway: str, pfs: PfsClient
) -> None:
    import pandas as pd

    options = {"key": "any", "secret": "any", "client_kwargs": {"endpoint_url": gateway}}

    def round_trip() -> Any:
        frame = pd.DataFrame({"city": ["Oslo", "Zürich", "São Paulo"], "people": [0.7, 0.4, 12.3]})
        frame.to_csv(f"s3://{BUCKET}/tables/cities.csv", index=False, storage_options=options)
        return pd.read_csv(f"s3://{BUCKET}/tables/cities.csv", storage_options=options)

    back = await asyncio.to_thread(round_trip)
    assert list(back["city"]) == ["Oslo", "Zürich", "São Paulo"]
    assert (await pfs.inspect_file("data", "master", "/tables/cities.csv")).size_bytes > 0


async def test_rclone_copies_a_directory_and_checks_it(
    repo: str, gateway: str, tmp_path: Path
) -> None:
    rclone = shutil.which("rclone")
    assert rclone, "rclone is installed by scripts/install-system-packages.sh"
    local = tmp_path / "docs"
    (local / "sub dir").mkdir(parents=True)
    for i in range(4):
        (local / "sub dir" / f"f{i}.txt").write_bytes(os.urandom(2000 * (i + 1)))
    env = client_env(tmp_path)
    env.update(
        RCLONE_CONFIG_TUSK_TYPE="s3",
        RCLONE_CONFIG_TUSK_PROVIDER="Other",
        RCLONE_CONFIG_TUSK_ENDPOINT=gateway,
        RCLONE_CONFIG_TUSK_ACCESS_KEY_ID="any",
        RCLONE_CONFIG_TUSK_SECRET_ACCESS_KEY="any",
        RCLONE_CONFIG_TUSK_FORCE_PATH_STYLE="true",
        RCLONE_CONFIG="/dev/null",
    )
    await run([rclone, "copy", str(local), f"tusk:{BUCKET}/docs"], env)
    listed = await run([rclone, "ls", f"tusk:{BUCKET}/docs"], env)
    assert sorted(line.split(None, 1)[1] for line in listed.splitlines()) == [
        f"sub dir/f{i}.txt" for i in range(4)
    ]
    await run([rclone, "check", str(local), f"tusk:{BUCKET}/docs", "--size-only"], env)
    back = tmp_path / "back"
    await run([rclone, "copy", f"tusk:{BUCKET}/docs", str(back)], env)
    assert (back / "sub dir" / "f3.txt").read_bytes() == (local / "sub dir" / "f3.txt").read_bytes()


# Open: about one full two-worker run in five, the pipeline's first job stays JOB_STARTING
# (the next one JOB_CREATED behind it) — seen before this wave too (3 of 7 runs then).
# docs/reliability.md; the failure message carries the scheduler's lines about the jobs.
@pytest.mark.xfail(reason="open: a job stuck in JOB_STARTING, intermittently", strict=False)
async def test_a_pipeline_runs_on_a_commit_made_through_s3(
    repo: str, gateway: str, cluster: EmbeddedCluster
) -> None:
    spec = {
        "pipeline": {"name": "shout"},
        "transform": {"cmd": ["sh", "-c", 'tr a-z A-Z < "$data" > "/pfs/out/$(basename "$data")"']},
        "input": {"pfs": {"repo": "data", "glob": "/*"}},
    }
    async with PpsClient(cluster.config.pps_url) as pps:
        await pps.create_pipeline(spec)
        try:
            s3 = s3_client(gateway)
            await asyncio.to_thread(
                s3.put_object, Bucket=BUCKET, Key="hello.txt", Body=b"hello s3\n"
            )

            async def output() -> bytes | None:
                with contextlib.suppress(Exception):
                    got = await asyncio.to_thread(
                        s3.get_object, Bucket="master.shout", Key="hello.txt"
                    )
                    return await asyncio.to_thread(got["Body"].read)
                return None

            try:
                got = await eventually(output, 90, "the pipeline's output read through S3")
            except AssertionError as exc:
                listed = await pps.list_jobs("shout")
                jobs = [(j.id, j.state, j.reason) for j in listed]
                log = (cluster.home / "logs" / "scheduler.log").read_text().splitlines()
                said = [line for line in log if any(j.id in line for j in listed)][-8:]
                raise AssertionError(f"{exc}; jobs of shout: {jobs}; scheduler: {said}") from None
            assert got == b"HELLO S3\n"
        finally:
            await pps.request("DELETE", "/v1/pipelines/shout", params={"force": True})


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


async def test_gateway_memory_stays_flat_while_512_mib_stream_through(
    repo: str, gateway: str, cluster: EmbeddedCluster
) -> None:
    pid = cluster.pid("s3gateway")
    size = 512 << 20
    block = os.urandom(1 << 20)
    peak = baseline = rss_bytes(pid)
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss_bytes(pid))
            await asyncio.sleep(0.05)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(size // len(block)):
            yield block

    sampler = asyncio.create_task(sample())
    started = time.monotonic()
    try:
        timeout = aiohttp.ClientTimeout(total=300)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.put(
                f"{gateway}/{BUCKET}/big.bin", data=body(), headers={"Content-Length": str(size)}
            ) as response:
                assert response.status == 200, await response.text()
            received = 0
            async with session.get(f"{gateway}/{BUCKET}/big.bin") as response:
                assert response.status == 200
                async for piece in response.content.iter_chunked(1 << 20):
                    received += len(piece)
            assert received == size
    finally:
        stop.set()
        await sampler
    growth = peak - baseline
    print(
        f"\ngateway RSS {baseline >> 20} MiB -> peak {peak >> 20} MiB for 512 MiB up and down "
        f"in {time.monotonic() - started:.1f} s"
    )
    assert growth < 200 << 20, f"the gateway grew by {growth >> 20} MiB"
