"""Merge commits in a history that is rewritten, against a real PFS: squashing a merge
commit or the commit merged in keeps both lines reachable (reverts and later merges still
see them), a squash that would need three parents is refused with nothing changed, and a
merge commit's provenance names both parents' provenance."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from shared.api.pfs_client import PfsClient
from shared.api.pfs_models import CommitRef
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


async def parents(client: PfsClient, commit: str) -> tuple[str | None, str | None]:
    info = await client.inspect_commit("data", commit)
    return info.parent, info.second_parent


async def tusk(pfs: RunningPfs, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSK_")}
    env.update(TUSK_HOME=str(tmp_path / "home"), TUSK_PFS_URL=pfs.url)
    process = await asyncio.create_subprocess_exec(
        str(TUSK), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def merged_history(client: PfsClient) -> dict[str, str]:
    """base ─ m1 ─ M ─ m2 on master, base ─ d1 ─ d2 on dev, M merging d1 in (d1 writes /d, d2 /e)."""
    await client.create_repo("data")
    base = await put(client, "master", "/a", b"a0")
    await client.create_branch("data", "dev", head="master")
    d1 = await put(client, "dev", "/d", b"d1")
    m1 = await put(client, "master", "/m", b"m1")
    merge = (await client.merge_branch("data", "dev", "master"))[1].id
    m2 = await put(client, "master", "/m", b"m2")
    d2 = await put(client, "dev", "/e", b"d2")
    return {"base": base, "d1": d1, "m1": m1, "M": merge, "m2": m2, "d2": d2}


async def test_squashing_a_merge_commit_keeps_the_line_it_merged(
    pfs: RunningPfs, tmp_path: Path
) -> None:
    async with PfsClient(pfs.url) as client:
        c = await merged_history(client)
        code, _, err = await tusk(pfs, tmp_path, "squash", "commit", f"data@{c['M']}")
        m2_parents = await parents(client, c["m2"])
        # d1 came in through the squashed merge: still in master's history, so revertible.
        reverted = await client.revert_commit("data", c["d1"], branch="master")
        d_gone = [f.path for f in await client.glob_files("data", "master", "/d")]
        content = await read(client, "master", "/m")

    assert code == 0, err
    assert m2_parents == (c["m1"], c["d1"])
    assert reverted.parent == c["m2"]
    assert d_gone == [] and content == b"m2"


async def test_squashing_the_commit_merged_in_hands_its_parent_to_the_merge(
    pfs: RunningPfs, tmp_path: Path
) -> None:
    async with PfsClient(pfs.url) as client:
        c = await merged_history(client)
        await client.squash_commit("data", c["d1"])
        merge_parents = await parents(client, c["M"])
        d2_parents = await parents(client, c["d2"])
        # dev's line still meets master's: merging dev again is three-way against base
        # (d1's /d reached master through M, with the same content: no conflict).
        outcome, head = await client.merge_branch("data", "dev", "master")
        e_now = await read(client, "master", "/e")

    assert merge_parents == (c["m1"], c["base"])
    assert d2_parents == (c["base"], None)
    assert outcome == "merge" and (head.parent, head.second_parent) == (c["m2"], c["d2"])
    assert e_now == b"d2"


async def test_a_squash_that_would_leave_three_parents_is_refused_and_changes_nothing(
    pfs: RunningPfs, tmp_path: Path
) -> None:
    async with PfsClient(pfs.url) as client:
        c = await merged_history(client)
        await client.create_branch("data", "side", head=c["base"])
        s1 = await put(client, "side", "/s", b"s1")
        await client.put_files("data", "side", files(("/s2", b"s2")))
        # m2's child is a merge of side: without m2 it would have m2's parent M, and s1.
        second = (await client.merge_branch("data", "side", "master"))[1].id
        m2_kids_before = await parents(client, second)
        await put(client, "master", "/after", b"x")
        await client.squash_commit("data", c["m2"])  # ordinary commit: fine
        code, _, err = await tusk(pfs, tmp_path, "squash", "commit", f"data@{c['M']}")
        after = await parents(client, second)
        m_still = await parents(client, c["M"])

    assert m2_kids_before[0] == c["m2"] and s1
    assert code == 1
    assert err.startswith("error: ") and "three parents" in err and len(err.splitlines()) == 1
    assert after == (c["M"], m2_kids_before[1])
    assert m_still == (c["m1"], c["d1"])


async def test_a_merge_commit_names_both_parents_provenance(pfs: RunningPfs) -> None:
    async with PfsClient(pfs.url) as client:
        await client.create_repo("up")
        up1 = await client.put_files("up", "master", files(("/u", b"1")))
        up2 = await client.put_files("up", "master", files(("/u", b"2")))
        p1 = CommitRef(repo="up", branch="master", id=up1.commit.id)
        p2 = CommitRef(repo="up", branch="master", id=up2.commit.id)
        await client.create_repo("data")
        await put(client, "master", "/a", b"a")
        await client.create_branch("data", "dev", head="master")
        for branch, prov, path in (("master", p1, "/m"), ("dev", p2, "/d")):
            await client.start_commit("data", branch, provenance=[prov])
            await client.put_files("data", branch, files((path, b"x")))
            await client.finish_commit("data", branch)
        _, merged = await client.merge_branch("data", "dev", "master")
        upstream_of_second = await client.commit_subvenance("up", up2.commit.id)

    assert merged.second_parent is not None
    assert {(p.repo, p.id) for p in merged.provenance} == {("up", p1.id), ("up", p2.id)}
    assert merged.id in {c.id for c in upstream_of_second}
