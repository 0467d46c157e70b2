"""The object-store contract, checked against every adapter: a local directory and real S3."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.platform.config import Config
from shared.platform.errors import InvalidArgument, NotFound, Unavailable
from shared.storage.objstore import ObjectStore, open_object_store
from shared.storage.objstore.local import LocalStore
from shared.storage.objstore.s3 import S3Store
from tests.fixtures.counting_store import CountingStore
from tests.fixtures.s3 import S3Server


@pytest.fixture(params=["local", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObjectStore]:
    """Each adapter in turn, opened from a ``Config`` as services open it."""
    if request.param == "local":
        config = Config(object_store=f"file://{tmp_path / 'objects'}")
    else:
        config = request.getfixturevalue("s3_config")
    async with open_object_store(config) as opened:
        yield opened


async def keys(store: ObjectStore, prefix: str) -> list[str]:
    return [key async for key in store.list(prefix)]


async def test_put_then_get_returns_the_bytes(store: ObjectStore) -> None:
    await store.put("chunks/ab/abc", b"hello world")
    assert await store.get("chunks/ab/abc") == b"hello world"
    await store.put("empty", b"")
    assert await store.get("empty") == b""


async def test_get_with_byte_range(store: ObjectStore) -> None:
    await store.put("r", b"0123456789")
    assert await store.get("r", 2, 5) == b"234"
    assert await store.get("r", 7) == b"789"
    assert await store.get("r", None, 3) == b"012"
    assert await store.get("r", 4, 4) == b""
    assert await store.get("r", 8, 100) == b"89"
    assert await store.get("r", 10, 20) == b""
    assert await store.get("r", 50) == b""
    with pytest.raises(InvalidArgument):
        await store.get("r", 5, 2)
    with pytest.raises(InvalidArgument):
        await store.get("r", -1, 2)


async def test_missing_key_is_not_found(store: ObjectStore) -> None:
    with pytest.raises(NotFound):
        await store.get("nope/nothing")
    with pytest.raises(NotFound):
        await store.get("nope/nothing", 0, 5)
    with pytest.raises(NotFound):
        await store.get("nope/nothing", 3, 3)
    assert not await store.exists("nope/nothing")


async def test_exists_and_delete(store: ObjectStore) -> None:
    await store.put("a/b", b"x")
    assert await store.exists("a/b")
    assert not await store.exists("a")
    await store.delete("a/b")
    assert not await store.exists("a/b")
    with pytest.raises(NotFound):
        await store.get("a/b")
    await store.delete("a/b")  # deleting a missing key is fine


async def test_list_is_sorted_and_filtered_by_string_prefix(store: ObjectStore) -> None:
    names = ["chunks/01/x", "chunks/0a/y", "chunks/0a/z", "chunks/ff/w", "index/n1", "chunksy"]
    for name in reversed(names):
        await store.put(name, b"1")
    assert await keys(store, "chunks/") == [
        "chunks/01/x",
        "chunks/0a/y",
        "chunks/0a/z",
        "chunks/ff/w",
    ]
    assert await keys(store, "chunks/0a") == ["chunks/0a/y", "chunks/0a/z"]
    assert await keys(store, "chunks") == [*sorted(names)[:4], "chunksy"]
    assert await keys(store, "") == sorted(names)
    assert await keys(store, "zzz") == []


async def test_overwrite_replaces_the_whole_value(store: ObjectStore) -> None:
    await store.put("k", b"a" * 100_000)
    await store.put("k", b"b" * 10)
    assert await store.get("k") == b"b" * 10


async def test_readers_never_see_a_partial_overwrite(store: ObjectStore) -> None:
    old, new = b"o" * 3_000_000, b"n" * 2_000_000
    await store.put("k", old)
    seen: set[bytes] = set()

    async def read_repeatedly() -> None:
        for _ in range(20):
            seen.add(await store.get("k"))

    await asyncio.gather(read_repeatedly(), store.put("k", new), read_repeatedly())
    assert seen <= {old, new}
    assert await store.get("k") == new


async def test_concurrent_puts_of_one_key_leave_one_whole_value(store: ObjectStore) -> None:
    values = [bytes([i]) * (500_000 + i) for i in range(8)]
    await asyncio.gather(*(store.put("same", value) for value in values))
    assert await store.get("same") in values
    assert await keys(store, "same") == ["same"]


async def test_counting_store_counts_per_key_prefix(store: ObjectStore) -> None:
    counting = CountingStore(store)
    await counting.put("index/a", b"12345")
    await counting.put("chunks/b", b"12")
    await counting.get("index/a")
    await counting.get("index/a", 1, 3)
    assert await counting.exists("index/a")
    assert (
        counting.count_puts(),
        counting.count_puts("index/"),
        counting.count_gets("index/"),
    ) == (
        2,
        1,
        2,
    )
    assert counting.bytes_written("index/") == 5
    assert counting.bytes_read("index/") == 7
    assert counting.count_exists() == 1
    counting.reset()
    assert counting.count_gets() == 0


async def test_unknown_object_store_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="not supported"):
        async with open_object_store(Config(object_store="ftp://x")):
            pass
    with pytest.raises(InvalidArgument, match="absolute"):
        async with open_object_store(Config(object_store="file://relative/dir")):
            pass


# --- local adapter only -----------------------------------------------------------------


async def test_local_rejects_keys_that_escape_the_root(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    try:
        for bad in ["../x", "/etc/passwd", "a/../../x", "a//b", "a/", "", "a/.tmp-x"]:
            with pytest.raises(InvalidArgument):
                await store.put(bad, b"x")
    finally:
        await store.close()


async def test_local_leftover_temp_file_is_never_a_key(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    try:
        await store.put("chunks/ab/old", b"old")
        # What a crash between writing the temp file and the rename leaves behind.
        (tmp_path / "chunks/ab/.tmp-k2x9").write_bytes(b"half a chu")
        assert await keys(store, "") == ["chunks/ab/old"]
        assert not await store.exists("chunks/ab/k2x9")
    finally:
        await store.close()


async def test_local_failed_rename_leaves_old_value_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path)
    try:
        await store.put("k", b"old")

        def crash(src: str, dst: str) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "replace", crash)
        with pytest.raises(Unavailable, match="No space"):
            await store.put("k", b"new")
        monkeypatch.undo()
        assert await store.get("k") == b"old"
        assert sorted(os.listdir(tmp_path)) == ["k"]
    finally:
        await store.close()


async def test_local_put_is_durable_file_on_disk(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    try:
        await store.put("x/y/z", b"data")
        assert (tmp_path / "x/y/z").read_bytes() == b"data"
    finally:
        await store.close()


# --- S3 adapter only ----------------------------------------------------------------------


async def test_s3_creates_a_missing_bucket(s3_server: S3Server) -> None:
    config = s3_server.s3_config(bucket="tusk-fresh-bucket")
    store = await S3Store.connect(config)
    try:
        await store.put("k", b"v")
        assert await store.get("k") == b"v"
    finally:
        await store.close()
    again = await S3Store.connect(config)  # an existing bucket is fine
    try:
        assert await again.get("k") == b"v"
    finally:
        await again.close()


async def test_s3_prefix_isolates_stores(s3_server: S3Server) -> None:
    one = await S3Store.connect(s3_server.s3_config(prefix="iso-one/"))
    two = await S3Store.connect(s3_server.s3_config(prefix="iso-two/"))
    try:
        await one.put("k", b"1")
        assert not await two.exists("k")
        assert [k async for k in one.list("")] == ["k"]
    finally:
        await one.close()
        await two.close()


async def test_s3_wrong_credentials_are_unavailable_not_botocore(s3_server: S3Server) -> None:
    config = s3_server.s3_config().__class__(
        endpoint_url=s3_server.endpoint_url, bucket="tusk-test", access_key="bad", secret_key="bad"
    )
    with pytest.raises(Unavailable):
        await S3Store.connect(config)


async def test_s3_unreachable_server_is_unavailable() -> None:
    from shared.platform.config import S3Config
    from tests.fixtures.servers import free_port

    config = S3Config(
        endpoint_url=f"http://127.0.0.1:{free_port()}", access_key="a", secret_key="b"
    )
    with pytest.raises(Unavailable, match="unreachable"):
        await S3Store.connect(config)
