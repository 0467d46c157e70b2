"""PFS end to end over HTTP: the real app, real PostgreSQL, NATS and object store."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from shared.api.events import CommitFinished, subject_filter
from shared.api.filestream import CONTENT_TYPE, encode_block, encode_header
from shared.api.pfs_client import PfsClient
from shared.platform.config import Config
from shared.platform.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    TooLarge,
)
from shared.storage.chunking import PackWriter, read_range
from tests.fixtures.pfs import RunningPfs


async def blocks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def files(items: dict[str, bytes]) -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
    for path, data in items.items():
        yield path, blocks(data)


async def read_all(it: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in it])


async def test_repo_lifecycle(pfs_client: PfsClient) -> None:
    info = await pfs_client.create_repo("images", "raw images")
    assert info.name == "images" and info.description == "raw images"
    assert [r.name for r in await pfs_client.list_repos()] == ["images"]
    with pytest.raises(AlreadyExists):
        await pfs_client.create_repo("images")
    await pfs_client.delete_repo("images")
    with pytest.raises(NotFound):
        await pfs_client.inspect_repo("images")


@pytest.mark.parametrize("name", ["", "a b", "x" * 64, "dots.no", "slash/no", "ünï"])
async def test_bad_repo_names_are_refused_and_create_nothing(
    pfs_client: PfsClient, name: str
) -> None:
    with pytest.raises((InvalidArgument, NotFound)):
        await pfs_client.create_repo(name)
    assert await pfs_client.list_repos() == []


async def test_put_makes_one_commit_per_put_and_reads_back(pfs_client: PfsClient) -> None:
    await pfs_client.create_repo("data")
    first = await pfs_client.put_files("data", "master", files({"/a.txt": b"hello"}))
    second = await pfs_client.put_files("data", "master", files({"/dir/b.txt": b"world"}))
    assert first.commit.state == "finished" and second.commit.parent == first.commit.id
    assert await read_all(pfs_client.get_file("data", "master", "/a.txt")) == b"hello"
    assert await read_all(pfs_client.get_file("data", "master", "/dir/b.txt")) == b"world"
    # Ancestry refs read the past.
    with pytest.raises(NotFound):
        await read_all(pfs_client.get_file("data", "master^", "/dir/b.txt"))
    assert (await pfs_client.inspect_commit("data", "master~1")).id == first.commit.id
    commits, cursor = await pfs_client.list_commits("data", "master")
    assert [c.id for c in commits] == [second.commit.id, first.commit.id] and cursor is None
    head = await pfs_client.inspect_commit("data", "master")
    assert head.file_count == 2 and head.size_bytes == 10


async def test_start_finish_groups_puts_into_one_commit(pfs_client: PfsClient) -> None:
    await pfs_client.create_repo("data")
    commit = await pfs_client.start_commit("data", "master")
    for i in range(5):
        await pfs_client.put_files("data", "master", files({f"/f{i}": str(i).encode()}))
    # Reads of the branch show only finished commits: nothing yet.
    with pytest.raises(NotFound):
        await pfs_client.inspect_file("data", "master", "/f0")
    with pytest.raises(FailedPrecondition):
        await pfs_client.inspect_file("data", commit.id, "/f0")
    done = await pfs_client.finish_commit("data", "master")
    assert done.id == commit.id and done.file_count == 5
    commits, _ = await pfs_client.list_commits("data")
    assert len(commits) == 1
    with pytest.raises(FailedPrecondition):
        await pfs_client.finish_commit("data", commit.id)
    assert (await pfs_client.inspect_commit("data", commit.id)).state == "finished"


async def test_put_to_a_commit_id_is_refused_and_changes_nothing(pfs_client: PfsClient) -> None:
    await pfs_client.create_repo("data")
    result = await pfs_client.put_files("data", "master", files({"/a": b"1"}))
    with pytest.raises(InvalidArgument, match="commits are immutable"):
        await pfs_client.put_files("data", result.commit.id, files({"/b": b"2"}))
    commits, _ = await pfs_client.list_commits("data")
    assert len(commits) == 1
    assert [b.name for b in await pfs_client.list_branches("data")] == ["master"]


@pytest.mark.parametrize("path", ["/a/../b", "/a//b", "/./a", "/a\x00b"])
async def test_bad_paths_are_refused_and_change_nothing(pfs_client: PfsClient, path: str) -> None:
    await pfs_client.create_repo("data")
    with pytest.raises(InvalidArgument):
        await pfs_client.put_files("data", "master", files({path: b"x"}))
    assert (await pfs_client.list_commits("data"))[0] == []


async def test_cut_off_upload_leaves_no_commit(pfs: RunningPfs, pfs_client: PfsClient) -> None:
    await pfs_client.create_repo("data")

    async def truncated() -> AsyncIterator[bytes]:
        yield encode_header({"path": "/complete"})
        yield encode_block(b"x" * 1000)
        yield encode_block(b"")
        yield encode_header({"path": "/partial"})
        yield encode_block(b"y" * 1000)
        # no end-of-file block and no end record: the client went away

    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{pfs.url}/v1/repos/data/branches/master/files",
            data=truncated(),
            headers={"Content-Type": CONTENT_TYPE},
        ) as resp,
    ):
        assert resp.status == 400
        body = await resp.json()
        assert "cut off" in body["error"]["message"]
    assert (await pfs_client.list_commits("data"))[0] == []
    assert await pfs_client.list_branches("data") == []


async def test_malformed_json_body_is_a_clear_400(pfs: RunningPfs, pfs_client: PfsClient) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{pfs.url}/v1/repos", data=b"{nope", headers={"Content-Type": "application/json"}
        ) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["code"] == "invalid_argument"
        async with session.post(f"{pfs.url}/v1/repos", json={"name": 5}) as resp:
            assert resp.status == 400
            assert "name" in (await resp.json())["error"]["message"]
    assert await pfs_client.list_repos() == []


async def test_concurrent_puts_from_many_clients_all_land(pfs: RunningPfs) -> None:
    async with PfsClient(pfs.url) as admin:
        await admin.create_repo("data")

    async def writer(i: int) -> None:
        async with PfsClient(pfs.url) as client:
            await client.put_files("data", "master", files({f"/w{i:02d}": f"{i}".encode()}))

    await asyncio.gather(*(writer(i) for i in range(16)))
    async with PfsClient(pfs.url) as client:
        head = await client.inspect_commit("data", "master")
        assert head.file_count == 16
        commits = [c async for c in client.iter_commits("data", "master", page=5)]
        assert len(commits) == 16
        # The history is one chain: every commit's parent is the next older one.
        for newer, older in itertools.pairwise(commits):
            assert newer.parent == older.id


async def test_append_concatenates(pfs_client: PfsClient) -> None:
    await pfs_client.create_repo("data")
    await pfs_client.put_files("data", "master", files({"/log": b"one\n"}))
    await pfs_client.put_files("data", "master", files({"/log": b"two\n"}), append=True)
    assert await read_all(pfs_client.get_file("data", "master", "/log")) == b"one\ntwo\n"
    await pfs_client.put_files("data", "master", files({"/log": b"new\n"}))
    assert await read_all(pfs_client.get_file("data", "master", "/log")) == b"new\n"


async def test_list_glob_diff_delete_copy(pfs_client: PfsClient) -> None:
    await pfs_client.create_repo("data")
    await pfs_client.put_files(
        "data",
        "master",
        files(
            {
                "/a/1.csv": b"1",
                "/a/2.csv": b"22",
                "/a/x.txt": b"x",
                "/b/3.csv": b"333",
                "/top": b"t",
            }
        ),
    )
    listing = [f async for f in pfs_client.iter_files("data", "master", "/", page=2)]
    assert [(f.path, f.type) for f in listing] == [("/a", "dir"), ("/b", "dir"), ("/top", "file")]
    assert listing[0].size_bytes == 4 and listing[0].file_count == 3
    assert [f.path for f in await pfs_client.glob_files("data", "master", "/*/*.csv")] == [
        "/a/1.csv",
        "/a/2.csv",
        "/b/3.csv",
    ]
    assert [f.path for f in await pfs_client.glob_files("data", "master", "/**.txt")] == [
        "/a/x.txt"
    ]
    await pfs_client.delete_file("data", "master", "/a")
    await pfs_client.copy_file("data", "master", "/b/3.csv", "data", "master", "/c/3.csv")
    changes = await pfs_client.diff_files("data", "master")
    assert [(c.path, c.change) for c in changes] == [("/c/3.csv", "added")]
    changes = await pfs_client.diff_files("data", "master", old_ref="master~2")
    assert [(c.path, c.change) for c in changes] == [
        ("/a/1.csv", "deleted"),
        ("/a/2.csv", "deleted"),
        ("/a/x.txt", "deleted"),
        ("/c/3.csv", "added"),
    ]
    with pytest.raises(NotFound):
        await pfs_client.delete_file("data", "master", "/nothing")


async def test_file_and_directory_collisions_are_refused(pfs_client: PfsClient) -> None:
    await pfs_client.create_repo("data")
    await pfs_client.put_files("data", "master", files({"/a/b": b"1", "/f": b"2"}))
    with pytest.raises(InvalidArgument, match="is a file"):
        await pfs_client.put_files("data", "master", files({"/f/g": b"3"}))
    with pytest.raises(InvalidArgument, match="is a directory"):
        await pfs_client.put_files("data", "master", files({"/a": b"3"}))
    assert len((await pfs_client.list_commits("data"))[0]) == 1


async def test_commit_finished_event_is_published(pfs: RunningPfs, pfs_client: PfsClient) -> None:
    bus = pfs.runner.app[__import__("services.pfs.api", fromlist=["BUS"]).BUS]
    await pfs_client.create_repo("data")
    async with bus.subscribe_events(
        subject_filter(pfs.config.nats_prefix, "commit.finished", "data"), deliver="all"
    ) as events:
        result = await pfs_client.put_files("data", "master", files({"/a": b"1"}))
        event = await asyncio.wait_for(anext(aiter(events)), 10)
    assert isinstance(event.payload, CommitFinished)
    assert event.payload.commit == result.commit.id and event.payload.branch == "master"


async def test_subscribe_commit_streams_new_commits(pfs_client: PfsClient) -> None:
    await pfs_client.create_repo("data")
    first = await pfs_client.put_files("data", "master", files({"/a": b"1"}))
    stream = pfs_client.subscribe_commits("data", "master", all_=True)
    assert (await asyncio.wait_for(anext(stream), 10)).id == first.commit.id
    second = await pfs_client.put_files("data", "master", files({"/b": b"2"}))
    assert (await asyncio.wait_for(anext(stream), 10)).id == second.commit.id
    await stream.aclose()


async def test_wait_commit_returns_when_finished(pfs_client: PfsClient) -> None:
    await pfs_client.create_repo("data")
    commit = await pfs_client.start_commit("data", "master")
    waiter = asyncio.create_task(pfs_client.wait_commit("data", commit.id))
    await asyncio.sleep(0.2)
    assert not waiter.done()
    await pfs_client.finish_commit("data", commit.id)
    assert (await asyncio.wait_for(waiter, 10)).state == "finished"


async def test_delete_open_commit_restores_head(pfs_client: PfsClient) -> None:
    await pfs_client.create_repo("data")
    first = await pfs_client.put_files("data", "master", files({"/a": b"1"}))
    open_commit = await pfs_client.start_commit("data", "master")
    await pfs_client.put_files("data", "master", files({"/b": b"2"}))
    await pfs_client.delete_commit("data", open_commit.id)
    assert (await pfs_client.inspect_branch("data", "master")).head == first.commit.id
    with pytest.raises(FailedPrecondition):
        await pfs_client.delete_commit("data", first.commit.id)


async def test_squash_removes_a_middle_commit(pfs_client: PfsClient) -> None:
    await pfs_client.create_repo("data")
    c1 = await pfs_client.put_files("data", "master", files({"/a": b"1"}))
    c2 = await pfs_client.put_files("data", "master", files({"/b": b"2"}))
    c3 = await pfs_client.put_files("data", "master", files({"/c": b"3"}))
    await pfs_client.squash_commit("data", c2.commit.id)
    assert (await pfs_client.inspect_commit("data", c3.commit.id)).parent == c1.commit.id
    assert (await pfs_client.inspect_commit("data", "master")).file_count == 3
    with pytest.raises(FailedPrecondition):
        await pfs_client.squash_commit("data", "master")


async def test_provenance_blocks_repo_delete_unless_forced(pfs_client: PfsClient) -> None:
    await pfs_client.create_repo("raw")
    await pfs_client.create_repo("clean")
    await pfs_client.put_files("raw", "master", files({"/a": b"1"}))
    branch = await pfs_client.create_branch("clean", "master", provenance=["raw@master"])
    assert branch.provenance == ["raw@master"]
    with pytest.raises(FailedPrecondition, match="provenance"):
        await pfs_client.delete_repo("raw")
    assert await pfs_client.inspect_repo("raw")
    commit = await pfs_client.start_commit("clean", "master")
    assert [p.repo for p in commit.provenance] == ["raw"]
    with pytest.raises(InvalidArgument, match="cycle"):
        await pfs_client.create_branch("raw", "master", provenance=["clean@master"])
    await pfs_client.delete_repo("raw", force=True)


async def test_openapi_and_health(pfs: RunningPfs) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{pfs.url}/openapi.json") as resp:
            doc = json.loads(await resp.read())
        assert "/v1/repos/{repo}/commits/{ref}/files/{path}" in doc["paths"]
        async with session.get(f"{pfs.url}/readyz") as resp:
            assert resp.status == 200


async def test_put_entries_lands_stored_files_by_reference(
    pfs: RunningPfs, pfs_client: PfsClient
) -> None:
    # A worker writes chunks straight into the object store, then hands PFS the entries.
    async with PackWriter(pfs.service.store) as writer:
        writer.start_file()
        await writer.write(b"computed output")
        writer.end_file()
        (entry,) = await writer.close()
    await pfs_client.create_repo("out")
    commit = await pfs_client.start_commit("out", "master")
    with pytest.raises(FailedPrecondition):
        await pfs_client.put_entries("out", "master", [("/x", entry)], commit="0" * 32)
    await pfs_client.put_entries("out", "master", [("/x", entry)], commit=commit.id)
    await pfs_client.finish_commit("out", commit.id)
    assert await read_all(pfs_client.get_file("out", "master", "/x")) == b"computed output"
    # None deletes; a missing path is no error (outputs of a vanished datum).
    await pfs_client.put_entries("out", "master", [("/x", None), ("/never", None)])
    assert (await pfs_client.inspect_commit("out", "master")).file_count == 0


async def test_finish_with_error_keeps_the_branch_on_its_last_good_commit(
    pfs_client: PfsClient,
) -> None:
    await pfs_client.create_repo("data")
    good = await pfs_client.put_files("data", "master", files({"/a": b"1"}))
    bad = await pfs_client.start_commit("data", "master")
    await pfs_client.put_files("data", "master", files({"/b": b"2"}))
    done = await pfs_client.finish_commit("data", bad.id, error="datum d1 failed")
    assert done.error == "datum d1 failed" and done.state == "finished"
    assert (await pfs_client.inspect_branch("data", "master")).head == good.commit.id
    assert (await pfs_client.inspect_commit("data", bad.id)).error == "datum d1 failed"


async def test_a_file_over_the_size_limit_is_refused_and_changes_nothing(
    tusk_config: Config,
) -> None:
    from aiohttp import web

    from services.pfs.app import build_app
    from tests.fixtures.servers import free_port

    port = free_port()
    runner = web.AppRunner(build_app(tusk_config.replace(max_file_bytes=1000)), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with PfsClient(f"http://127.0.0.1:{port}") as client:
            await client.create_repo("data")
            with pytest.raises(TooLarge):
                await client.put_files("data", "master", files({"/big": b"x" * 5000}))
            assert (await client.list_commits("data"))[0] == []
    finally:
        await runner.cleanup()


async def test_file_entry_gives_the_chunks_to_read_directly(
    pfs: RunningPfs, pfs_client: PfsClient
) -> None:
    await pfs_client.create_repo("data")
    await pfs_client.put_files("data", "master", files({"/a": b"direct bytes"}))
    entry = await pfs_client.file_entry("data", "master", "/a")
    data = b"".join([c async for c in read_range(pfs.service.store, entry)])
    assert data == b"direct bytes" and entry.size == 12
    with pytest.raises(NotFound):
        await pfs_client.file_entry("data", "master", "/missing")
