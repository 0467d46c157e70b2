"""Every commit records who made it (issue #15): a user, a pipeline's job, the S3 gateway,
a cron tick, a merge or a revert — set by the caller through PFS's API, stored, and shown
by ``tusk inspect commit`` (a real PFS, a real S3 gateway, the real CLI)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from shared.api.pfs_client import PfsClient
from shared.platform.errors import InvalidArgument
from shared.storage.chunking import EMPTY_FILE
from tests.fixtures.pfs import RunningPfs

TUSK = Path(sys.executable).parent / "tusk"


async def one_file(path: str, data: bytes) -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
    async def content() -> AsyncIterator[bytes]:
        yield data

    yield path, content()


async def test_each_way_of_making_a_commit_records_its_origin(
    pfs_client: PfsClient, s3: Any
) -> None:
    await pfs_client.create_repo("data")
    by_user = (await pfs_client.put_files("data", "master", one_file("/a", b"1"))).commit
    assert by_user.origin == "user"
    await asyncio.to_thread(s3.put_object, Bucket="master.data", Key="b", Body=b"2")
    by_s3 = await pfs_client.inspect_commit("data", "master")
    assert by_s3.origin == "s3" and by_s3.parent == by_user.id
    by_cron = (
        await pfs_client.put_entries("data", "master", [("/tick", EMPTY_FILE)], origin="cron")
    ).commit
    assert by_cron.origin == "cron"

    opened = await pfs_client.start_commit("data", "dev", origin="job")
    assert opened.origin == "job"
    # A write into an open commit keeps the commit's origin.
    await pfs_client.put_files("data", "dev", one_file("/c", b"3"))
    assert (await pfs_client.finish_commit("data", "dev")).origin == "job"

    kind, merged = await pfs_client.merge_branch("data", "dev", "master")
    assert (kind, merged.origin) == ("merge", "merge")
    reverted = await pfs_client.revert_commit("data", by_cron.id, branch="master")
    assert reverted.origin == "revert"
    # Listings carry it too, newest first.
    commits, _ = await pfs_client.list_commits("data", "master", limit=10)
    assert [c.origin for c in commits] == ["revert", "merge", "cron", "s3", "user"]

    with pytest.raises(InvalidArgument, match="origin"):
        await pfs_client.start_commit("data", "other", origin="robot")  # type: ignore[arg-type]


async def test_inspect_commit_shows_the_origin(
    pfs: RunningPfs, pfs_client: PfsClient, tmp_path: Path
) -> None:
    await pfs_client.create_repo("data")
    await pfs_client.put_entries("data", "master", [("/b", EMPTY_FILE)], origin="s3")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSK_")}
    env.update(TUSK_HOME=str(tmp_path / "home"), TUSK_PFS_URL=pfs.url)

    async def tusk(*args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            str(TUSK),
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        return out.decode()

    text = await tusk("inspect", "commit", "data@master")
    assert "Origin: s3" in text.splitlines(), text
    assert (
        json.loads(await tusk("inspect", "commit", "data@master", "-o", "json"))["origin"] == "s3"
    )
