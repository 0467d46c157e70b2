"""``tusk merge branch`` and ``tusk revert commit`` against a real PFS: fast-forward,
three-way merges with two parents, conflicts refused (DEST unchanged) or resolved by a
strategy, reverts, output branches refused, and a merge whose cost follows the changes."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from shared.api.pfs_client import PfsClient
from shared.storage.chunking import FileEntry
from tests.fixtures.pfs import RunningPfs

TUSK = Path(sys.executable).parent / "tusk"


async def files(*items: tuple[str, bytes]) -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
    for path, data in items:

        async def content(data: bytes = data) -> AsyncIterator[bytes]:
            yield data

        yield path, content()


async def put(client: PfsClient, branch: str, path: str, data: bytes) -> str:
    return (await client.put_files("data", branch, files((path, data)))).commit.id


async def read(client: PfsClient, ref: str, path: str) -> bytes:
    return b"".join([b async for b in client.get_file("data", ref, path)])


async def tusk(pfs: RunningPfs, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSK_")}
    env.update(TUSK_HOME=str(tmp_path / "home"), TUSK_PFS_URL=pfs.url)
    process = await asyncio.create_subprocess_exec(
        str(TUSK),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def repo_with_dev(client: PfsClient) -> str:
    """data@master with /a and /b; dev branched from it. The base commit's id."""
    await client.create_repo("data")
    base = (await client.put_files("data", "master", files(("/a", b"a0"), ("/b", b"b0")))).commit
    await client.create_branch("data", "dev", head="master")
    return base.id


async def test_a_branch_ahead_is_fast_forwarded(pfs: RunningPfs, tmp_path: Path) -> None:
    async with PfsClient(pfs.url) as client:
        await repo_with_dev(client)
        dev_head = await put(client, "dev", "/c", b"c1")

        code, out, err = await tusk(pfs, tmp_path, "merge", "branch", "data@dev", "data@master")
        master = await client.inspect_commit("data", "master")

    assert code == 0, err
    assert out.strip() == f"fast-forwarded data@master to {dev_head}"
    assert master.id == dev_head


async def test_diverged_branches_merge_into_a_commit_with_two_parents(
    pfs: RunningPfs, tmp_path: Path
) -> None:
    async with PfsClient(pfs.url) as client:
        await repo_with_dev(client)
        dev_head = await put(client, "dev", "/a", b"a-dev")
        master_head = await put(client, "master", "/b", b"b-master")

        code, out, err = await tusk(
            pfs, tmp_path, "merge", "branch", "data@dev", "data@master", "-m", "bring dev in"
        )
        _, shown, _ = await tusk(pfs, tmp_path, "inspect", "commit", "data@master", "-o", "json")
        _, text, _ = await tusk(pfs, tmp_path, "inspect", "commit", "data@master")
        merged = json.loads(shown)
        a, b = await read(client, "master", "/a"), await read(client, "master", "/b")

    assert code == 0, err
    assert out.startswith("merged dev into data@master: commit ")
    assert (merged["parent"], merged["second_parent"]) == (master_head, dev_head)
    assert merged["description"] == "bring dev in"
    assert f"{master_head}, {dev_head}" in text
    assert (a, b) == (b"a-dev", b"b-master")


async def test_conflicts_are_refused_listing_every_path_and_leave_dest_unchanged(
    pfs: RunningPfs, tmp_path: Path
) -> None:
    async with PfsClient(pfs.url) as client:
        await repo_with_dev(client)
        await client.put_files("data", "dev", files(("/a", b"a-dev"), ("/b", b"b-dev")))
        await client.put_files("data", "master", files(("/a", b"a-m"), ("/b", b"b-m")))
        await put(client, "dev", "/same", b"same")
        await put(client, "master", "/same", b"same")  # the same change on both: no conflict
        before = (await client.inspect_commit("data", "master")).id

        code, _, err = await tusk(pfs, tmp_path, "merge", "branch", "data@dev", "data@master")
        after = (await client.inspect_commit("data", "master")).id

        ours, _, _ = await tusk(
            pfs, tmp_path, "merge", "branch", "data@dev", "data@master", "--strategy", "dest"
        )
        kept = await read(client, "master", "/a")
        theirs, _, _ = await tusk(
            pfs, tmp_path, "merge", "branch", "data@dev", "data@master", "--strategy", "source"
        )
        taken = await read(client, "master", "/a")

    assert code == 1
    lines = err.splitlines()
    assert lines[0].startswith("error: merge of data@dev into data@master refused: 2 path(s)")
    assert [line.strip() for line in lines[1:]] == ["/a", "/b"]
    assert after == before
    assert (ours, kept) == (0, b"a-m")
    # After the dest-strategy merge, dev is merged: a source merge has nothing left to take.
    assert (theirs, taken) == (0, b"a-m")


async def test_the_source_strategy_takes_the_source_side(pfs: RunningPfs, tmp_path: Path) -> None:
    async with PfsClient(pfs.url) as client:
        await repo_with_dev(client)
        await put(client, "dev", "/a", b"a-dev")
        await put(client, "master", "/a", b"a-m")

        code, _, err = await tusk(
            pfs, tmp_path, "merge", "branch", "data@dev", "data@master", "--strategy", "source"
        )
        taken = await read(client, "master", "/a")

    assert code == 0, err
    assert taken == b"a-dev"


async def test_revert_undoes_a_commit_and_refuses_when_later_commits_touched_its_files(
    pfs: RunningPfs, tmp_path: Path
) -> None:
    async with PfsClient(pfs.url) as client:
        await repo_with_dev(client)
        change = await put(client, "master", "/a", b"a1")
        await put(client, "master", "/c", b"c1")

        code, out, err = await tusk(pfs, tmp_path, "revert", "commit", f"data@{change}")
        restored = await read(client, "master", "/a")
        c_kept = await read(client, "master", "/c")

        later = await put(client, "master", "/c", b"c2")
        await put(client, "master", "/c", b"c3")
        refused, _, why = await tusk(pfs, tmp_path, "revert", "commit", f"data@{later}")
        elsewhere, _, not_in = await tusk(
            pfs, tmp_path, "revert", "commit", f"data@{later}", "--branch", "dev"
        )

    assert code == 0, err
    assert out.startswith(f"reverted data@{change} on master: commit ")
    assert (restored, c_kept) == (b"a0", b"c1")
    assert refused == 1
    assert "changed again by later commits" in why and "  /c" in why
    assert elsewhere == 1
    assert f"commit {later} is not in the history of data@dev" in not_in


async def test_output_branches_of_pipelines_refuse_merges(pfs: RunningPfs, tmp_path: Path) -> None:
    async with PfsClient(pfs.url) as client:
        await repo_with_dev(client)
        await client.create_repo("out")
        await client.create_branch("out", "master", provenance=["data@master"])
        await client.create_branch("out", "dev", provenance=["data@dev"])

        code, _, err = await tusk(pfs, tmp_path, "merge", "branch", "out@dev", "out@master")

    assert code == 1
    assert err.strip() == (
        "error: cannot merge into out@master: it is a pipeline's output, computed from "
        "data@master; merge into the inputs instead"
    )


async def test_a_merge_reads_index_nodes_in_proportion_to_the_changes(pfs: RunningPfs) -> None:
    n, k = 20_000, 10
    async with PfsClient(pfs.url) as client:
        await client.create_repo("data")
        await put(client, "master", "/seed", b"x")
        entry: FileEntry = await client.file_entry("data", "master", "/seed")
        await client.put_entries("data", "master", [(f"/f/{i:06d}", entry) for i in range(n)])
        await client.create_branch("data", "dev", head="master")
        await client.put_entries(
            "data", "dev", [(f"/f/{i:06d}", None) for i in range(0, n, n // k)]
        )
        await client.put_entries("data", "master", [(f"/g/{i:06d}", entry) for i in range(k)])
        index = pfs.service.files.index
        index.clear_cache()
        index.reset_counters()

        result, _ = await client.merge_branch("data", "dev", "master")
        read = index.nodes_read
        files_now = (await client.inspect_commit("data", "master")).file_count

    assert result == "merge"
    assert files_now == n + 1 + k - k
    # Two diffs against the base and one apply, each O(k log N): far below the ~N/64 leaves.
    assert read < 12 * k * 3, read
