"""pachctl habits scripts rely on, through the installed ``tusk`` script against a real PFS.

stdin uploads, ``put file -i`` and ``--untar``, ``delete file -r``, ``list commit`` with no
repo, ``-o yaml`` and ``--raw``, ``mount -r`` and contexts (``tusk config …``).
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from services.pfs.refs import FULL_PROVENANCE_SQL, FULL_SUBVENANCE_SQL
from shared.api.pfs_client import PfsClient
from tests.fixtures.pfs import RunningPfs
from tests.fixtures.servers import free_port
from tests.test_cli import TUSK, Tusk, _tusk_env
from tusk.cli.output import render_document


@pytest.fixture
def tusk(pfs_url: str, tmp_path: Path) -> Iterator[Tusk]:
    if not TUSK.exists():
        pytest.fail("the tusk console script is not installed (pip install -e .)")
    work = tmp_path / "work"
    work.mkdir()
    yield Tusk(_tusk_env(tmp_path, pfs_url), work)


def _tar(members: dict[str, bytes], *, gz: bool = True) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_documents_render_as_json_yaml_and_raw_lines() -> None:
    docs = [{"name": "a", "n": 1}, {"name": "b", "n": 2}]
    assert json.loads(render_document(docs, "json")) == docs
    assert yaml.safe_load(render_document(docs, "yaml")) == docs
    assert [json.loads(line) for line in render_document(docs, "raw").splitlines()] == docs
    assert render_document(docs[0], "raw") == '{"name":"a","n":1}'
    # A stream of YAML documents is separated so a reader can split it.
    assert render_document(docs[0], "yaml", compact=True).startswith("---")


async def test_put_file_reads_stdin_without_f(tusk: Tusk) -> None:
    await tusk.ok("create", "repo", "piped")
    await tusk.ok("put", "file", "piped@master:/x", stdin=b"from a pipe\n")
    assert (await tusk.ok("get", "file", "piped@master:/x")).stdout == b"from a pipe\n"
    # Without a file path there is nowhere to put stdin: one clear line.
    line = await tusk.fails("put", "file", "piped@master")
    assert "needs a file path" in line


async def test_put_file_from_a_list_of_sources(tusk: Tusk) -> None:
    await tusk.ok("create", "repo", "listed")
    for name in ("a.txt", "b.txt"):
        (tusk.cwd / name).write_text(f"{name}\n")
    listing = tusk.cwd / "sources.txt"
    listing.write_text(f"# inputs\n{tusk.cwd / 'a.txt'}\n\n{tusk.cwd / 'b.txt'}\n")
    await tusk.ok("put", "file", "listed@master:/in/", "-i", str(listing))
    names = [
        f["path"] for f in (await tusk.ok("list", "file", "listed@master:/in", "-o", "json")).json()
    ]
    assert names == ["/in/a.txt", "/in/b.txt"]
    # One request, one commit.
    assert len((await tusk.ok("list", "commit", "listed", "-o", "json")).json()) == 1
    listing.write_text(f"{tusk.cwd / 'missing.txt'}\n")
    assert "missing.txt" in await tusk.fails(
        "put", "file", "listed@master:/in/", "-i", str(listing)
    )


async def test_put_file_untar_from_a_file_and_from_stdin(tusk: Tusk) -> None:
    await tusk.ok("create", "repo", "tarred")
    archive = tusk.cwd / "data.tar.gz"
    archive.write_bytes(_tar({"top.txt": b"top\n", "sub/deep.txt": b"deep\n"}))
    await tusk.ok("put", "file", "tarred@master:/unpacked", "--untar", "-f", str(archive))
    got = await tusk.ok("get", "file", "tarred@master:/unpacked/sub/deep.txt")
    assert got.stdout == b"deep\n"
    await tusk.ok(
        "put", "file", "tarred@master", "--untar", stdin=_tar({"s.txt": b"s\n"}, gz=False)
    )
    assert (await tusk.ok("get", "file", "tarred@master:/s.txt")).stdout == b"s\n"
    commits = len((await tusk.ok("list", "commit", "tarred", "-o", "json")).json())
    # A member escaping the destination refuses the whole archive: no commit is made.
    evil = tusk.cwd / "evil.tar"
    evil.write_bytes(_tar({"ok.txt": b"ok\n", "../escape.txt": b"no\n"}, gz=False))
    line = await tusk.fails("put", "file", "tarred@master", "--untar", "-f", str(evil))
    assert "not a readable tar archive" in line
    assert len((await tusk.ok("list", "commit", "tarred", "-o", "json")).json()) == commits
    assert not (tusk.cwd.parent / "escape.txt").exists()


async def test_delete_file_r_removes_a_directory(tusk: Tusk) -> None:
    await tusk.ok("create", "repo", "pruned")
    await tusk.ok("put", "file", "pruned@master:/dir/a", stdin=b"a")
    await tusk.ok("put", "file", "pruned@master:/keep", stdin=b"k")
    await tusk.ok("delete", "file", "-r", "pruned@master:/dir")
    names = [
        f["path"] for f in (await tusk.ok("list", "file", "pruned@master", "-o", "json")).json()
    ]
    assert names == ["/keep"]


async def test_list_commit_without_a_repo_and_every_output_form(tusk: Tusk) -> None:
    for repo in ("first", "second"):
        await tusk.ok("create", "repo", repo)
        await tusk.ok("put", "file", f"{repo}@master:/f", stdin=repo.encode())
    every = (await tusk.ok("list", "commit", "-o", "json")).json()
    assert {c["repo"] for c in every} >= {"first", "second"}
    # Newest first, across repos.
    assert every[0]["repo"] == "second"
    assert len((await tusk.ok("list", "commit", "-n", "1", "-o", "json")).json()) == 1
    table = (await tusk.ok("list", "commit")).text
    assert table.startswith("REPO") and "first" in table and "second" in table

    as_yaml = yaml.safe_load((await tusk.ok("list", "commit", "-o", "yaml")).text)
    assert as_yaml == every
    raw = (await tusk.ok("list", "commit", "--raw")).text.splitlines()
    assert [json.loads(line) for line in raw] == every
    inspected = (await tusk.ok("inspect", "commit", "first@master", "--raw")).text
    assert "\n" not in inspected.strip() and json.loads(inspected)["repo"] == "first"
    repos = yaml.safe_load((await tusk.ok("list", "repo", "-o", "yaml")).text)
    assert {r["name"] for r in repos} >= {"first", "second"}


async def test_mount_takes_repos_with_r(tusk: Tusk) -> None:
    # The -r form is checked like the positional one before anything is mounted.
    line = await tusk.fails("mount", str(tusk.cwd / "mnt"), "-r", "Bad Name@master")
    assert "Bad Name" in line


async def test_contexts_choose_the_cluster_and_name_it_in_errors(tusk: Tusk, pfs_url: str) -> None:
    # Without TUSK_PFS_URL the CLI follows the active context.
    plain = Tusk({k: v for k, v in tusk.env.items() if k != "TUSK_PFS_URL"}, tusk.cwd)
    await plain.ok("config", "set", "context", "near", "--pfs", pfs_url, "--pps", pfs_url)
    dead = f"http://127.0.0.1:{free_port()}"
    await plain.ok("config", "set", "context", "far", "--url", dead)
    await plain.ok("config", "set", "active-context", "near")
    await plain.ok("create", "repo", "ctx")
    listed = (await plain.ok("config", "list", "context", "-o", "json")).json()
    assert [(c["name"], c["active"]) for c in listed] == [("far", False), ("near", True)]
    assert listed[0]["pfs_url"] == dead
    table = (await plain.ok("config", "list", "context")).text
    assert "*" in table.splitlines()[2] and "near" in table.splitlines()[2]

    await plain.ok("config", "set", "active-context", "far")
    line = await plain.fails("list", "repo")
    assert f"context 'far' ({dead})" in line
    line = await plain.fails("list", "pipeline")
    assert f"context 'far' ({dead})" in line
    # The environment still wins over the active context.
    assert "ctx" in (await tusk.ok("list", "repo")).text

    assert "no context named 'nowhere'" in await plain.fails(
        "config", "set", "active-context", "nowhere"
    )
    assert "http(s) URL" in await plain.fails("config", "set", "context", "x", "--url", "ftp://a")
    await plain.ok("config", "delete", "context", "far")
    listed = (await plain.ok("config", "list", "context", "-o", "json")).json()
    assert [c["name"] for c in listed] == ["near"]


async def _chain(pfs: PfsClient, history: int) -> tuple[str, str]:
    """raw → mid → top by branch provenance, after ``history`` commits on raw."""
    for _ in range(history):
        await pfs.start_commit("raw", "master")
        await pfs.finish_commit("raw", "master")
    raw = await pfs.start_commit("raw", "master")
    await pfs.finish_commit("raw", "master")
    for repo in ("mid", "top"):
        await pfs.start_commit(repo, "master")
        await pfs.finish_commit(repo, "master")
    top = await pfs.inspect_commit("top", "master")
    return raw.id, top.id


async def _rows_read(conn: asyncpg.Connection, sql: str, commit_id: str, repo: str) -> int:
    """Rows the plan's scans of pfs_commits produced (actual rows x loops)."""
    (plan,) = json.loads(
        await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", commit_id, repo)
    )

    def walk(node: dict[str, Any]) -> int:
        own = 0
        if node.get("Relation Name") == "pfs_commits":
            own = int(node["Actual Rows"]) * int(node["Actual Loops"])
        return own + sum(walk(child) for child in node.get("Plans", []))

    return walk(plan["Plan"])


async def test_provenance_both_ways_all_the_way(tusk: Tusk, pfs: RunningPfs) -> None:
    conn = await asyncpg.connect(pfs.config.database_url)
    try:
        async with PfsClient(pfs.url) as client:
            for repo in ("raw", "mid", "top"):
                await client.create_repo(repo)
            await client.start_commit("raw", "master")
            await client.finish_commit("raw", "master")
            await client.create_branch("mid", "master", provenance=["raw@master"])
            await client.create_branch("top", "master", provenance=["mid@master"])
            raw_short, top_short = await _chain(client, 5)
            short = await _walk_cost(conn, raw_short, top_short)

            got = (await tusk.ok("inspect", "commit", f"top@{top_short}", "-o", "json")).json()
            assert [p["repo"] for p in got["direct_provenance"]] == ["mid"]
            full = got["full_provenance"]
            assert [(p["repo"], p["branch"]) for p in full] == [
                ("raw", "master"),
                ("mid", "master"),
            ]
            assert full[0]["id"] == raw_short
            text = (await tusk.ok("inspect", "commit", f"top@{top_short}")).text
            assert f"raw@{raw_short}" in text.split("Full Provenance:")[1]
            down = (
                await tusk.ok("inspect", "commit", f"raw@{raw_short}", "--subvenance", "-o", "json")
            ).json()
            assert [c["repo"] for c in down] == ["mid", "top"] and down[1]["id"] == top_short
            made = (
                await tusk.ok(
                    "list", "commit", "top", "--provenance-of", f"raw@{raw_short}", "-o", "json"
                )
            ).json()
            assert [c["id"] for c in made] == [top_short]

            # The cost follows the DAG, not the history: 300 more commits read no more rows.
            raw_long, top_long = await _chain(client, 300)
        long = await _walk_cost(conn, raw_long, top_long)
        print("rows of pfs_commits read (provenance, subvenance): 5 commits", short, "305", long)
        assert long == short and max(long) <= 10
    finally:
        await conn.close()


async def _walk_cost(conn: asyncpg.Connection, raw: str, top: str) -> tuple[int, int]:
    """Rows each walk reads when the planner takes the indexes, as it does on a table of
    real size (on a few hundred rows it may prefer reading the table: cheaper there)."""
    async with conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        return (
            await _rows_read(conn, FULL_PROVENANCE_SQL, top, "top"),
            await _rows_read(conn, FULL_SUBVENANCE_SQL, raw, "raw"),
        )
