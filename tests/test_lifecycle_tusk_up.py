"""fsck, merge, revert and garbage-collect through the CLI against ``tusk up``: every
service a real process, the collector asking the real scheduler and S3 gateway."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.embedded_cluster import EmbeddedCluster, start_embedded_cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmbeddedCluster]:
    yield from start_embedded_cluster("tusk-lifecycle-")


async def test_merge_revert_gc_and_fsck_through_the_cli(
    cluster: EmbeddedCluster, tmp_path: Path
) -> None:
    await cluster.healthy()
    for name, text in [("a", "a0"), ("b", "b0"), ("junk", "junk" * 50_000)]:
        (tmp_path / name).write_text(text)

    async def ok(*args: str) -> str:
        code, out, err = await cluster.tusk(*args)
        assert code == 0, f"tusk {' '.join(args)}: {err}"
        return out

    await ok("create", "repo", "data")
    await ok("put", "file", "data@master:/a", "-f", str(tmp_path / "a"))
    await ok("create", "branch", "data@dev", "--head", "master")
    await ok("put", "file", "data@dev:/b", "-f", str(tmp_path / "b"))
    await ok("put", "file", "data@master:/a", "-f", str(tmp_path / "b"))
    merged = await ok("merge", "branch", "data@dev", "data@master")
    change = await ok("list", "commit", "data@master", "-o", "json")
    reverted = await ok("revert", "commit", "data@master^")
    await ok("create", "repo", "trash")
    await ok("put", "file", "trash@master:/junk", "-f", str(tmp_path / "junk"))
    await ok("delete", "repo", "trash")
    freed = await ok("garbage-collect", "--grace", "0")
    checked = await ok("fsck")
    a_now = await ok("get", "file", "data@master:/a")

    assert merged.startswith("merged dev into data@master: commit ")
    assert "second_parent" in change
    assert reverted.startswith("reverted data@master^ on master")
    assert freed.startswith("freed ") and not freed.startswith("freed 0 ")
    assert "no problems" in checked
    assert a_now == "a0"
