"""Garbage collection, merge and fsck end to end on a real cluster (PFS, PPS, the
scheduler with sandboxed workers, the S3 gateway): collections running beside pipeline
jobs and a multipart upload in flight, with ``--grace 0``, lose nothing; the collector
asks the scheduler and the gateway what they reference; a merge commit triggers the
pipeline like any other commit."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.s3gateway.app import build_app as build_gateway
from shared.platform.config import Config
from tests.fixtures.apps import serve, stop
from tests.fixtures.cluster import Cluster
from tests.fixtures.s3gateway import s3_client
from tests.fixtures.servers import free_port

TUSK = Path(sys.executable).parent / "tusk"
COPY: dict[str, Any] = {
    "pipeline": {"name": "copy"},
    "transform": {"cmd": ["sh", "-c", 'cp "$in" /pfs/out/'], "env": {}},
    "input": {"pfs": {"repo": "in", "name": "in", "glob": "/*"}},
}


@pytest.fixture
def tusk_config(tusk_config: Config) -> Config:
    """The gateway on a port of its own, known before PFS starts; no scheduled collection."""
    port = free_port()
    return tusk_config.replace(
        s3gateway_url=f"http://127.0.0.1:{port}", listen_port=port, gc_interval_s=0.0
    )


async def files(*items: tuple[str, bytes]) -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
    for path, data in items:

        async def content(data: bytes = data) -> AsyncIterator[bytes]:
            yield data

        yield path, content()


async def tusk(cluster: Cluster, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSK_")}
    env.update(TUSK_HOME=str(tmp_path / "home"), TUSK_PFS_URL=cluster.config.pfs_url)
    process = await asyncio.create_subprocess_exec(
        str(TUSK), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def read(cluster: Cluster, repo: str, path: str) -> bytes:
    return b"".join([c async for c in cluster.pfs.get_file(repo, "master", path)])


async def jobs_done(cluster: Cluster, count: int, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        jobs = await cluster.pps.list_jobs("copy")
        if len(jobs) >= count and all(j.done for j in jobs):
            assert all(j.state == "JOB_SUCCESS" for j in jobs), jobs
            return
        assert asyncio.get_running_loop().time() < deadline, f"jobs not done: {jobs}"
        await asyncio.sleep(0.1)


async def test_collections_beside_jobs_merges_and_a_multipart_upload_lose_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    config = cluster.config
    gateway = await serve(build_gateway(config), config.listen_port)
    try:
        pfs = cluster.pfs
        await pfs.create_repo("in")
        await pfs.create_repo("trash")
        await pfs.put_files("trash", "master", files(("/t", os.urandom(200_000))))
        await pfs.delete_repo("trash")
        await pfs.put_files("in", "master", files(("/a", b"a\n")))
        await cluster.pps.create_pipeline(COPY)

        s3 = s3_client(config.s3gateway_url)
        part = os.urandom(5 << 20)
        upload = await asyncio.to_thread(s3.create_multipart_upload, Bucket="master.in", Key="big")
        etag = (
            await asyncio.to_thread(
                s3.upload_part,
                Bucket="master.in",
                Key="big",
                UploadId=upload["UploadId"],
                PartNumber=1,
                Body=part,
            )
        )["ETag"]

        async def collect() -> int:
            freed = 0
            for _ in range(3):
                freed += (await pfs.garbage_collect(grace_s=0)).objects
            return freed

        async def commits() -> None:
            await pfs.create_branch("in", "dev", head="master")
            await pfs.put_files("in", "dev", files(("/d", b"d\n")))
            await pfs.put_files("in", "master", files(("/m", b"m\n")))
            await pfs.merge_branch("in", "dev", "master")  # a merge commit: a job like any

        freed, _ = await asyncio.gather(collect(), commits())
        await jobs_done(cluster, 3)  # create, the put on master, the merge commit
        await asyncio.to_thread(
            s3.complete_multipart_upload,
            Bucket="master.in",
            Key="big",
            UploadId=upload["UploadId"],
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]},
        )
        code, out, err = await tusk(cluster, tmp_path, "gc", "--grace", "0")
        fsck_code, fsck_out, _ = await tusk(cluster, tmp_path, "fsck")
        outputs = [await read(cluster, "copy", p) for p in ("/a", "/d", "/m")]
        big = await read(cluster, "in", "/big")
        merged = await pfs.inspect_commit("in", "master^")  # before the multipart landed
    finally:
        await stop(gateway)

    assert freed > 0  # the deleted repo's objects went
    assert code == 0, err
    assert out.startswith("freed ")
    assert fsck_code == 0, fsck_out
    assert outputs == [b"a\n", b"d\n", b"m\n"]
    assert big == part
    assert merged.second_parent is not None
