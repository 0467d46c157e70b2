"""``scan_prefix``: S3's listing over the file index — keys by string prefix, rolled up at a
delimiter, resumed after any key — checked against a plain model, and its cost pinned by
counting node reads: a page costs the same wherever it starts."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest

from shared.storage.file_index import FileIndex, IndexEntry, key_successor, scan_prefix
from shared.storage.objstore.local import LocalStore
from tests.fixtures.counting_store import CountingStore

N = 20_000


def keys() -> list[str]:
    return sorted(
        {f"/d{i % 7}/{'x' if i % 3 else 'y'}{i % 11}/f{i:06d}" for i in range(N)}
        | {f"/d{i}-file" for i in range(7)}
        | {"/é/ü", "/a b/c%", "/d1"}
    )


@pytest.fixture(scope="module")
async def tree(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[CountingStore, str]]:
    store = CountingStore(LocalStore(tmp_path_factory.mktemp("prefix") / "objects"))
    root = await FileIndex(store).build(IndexEntry(k, b"v", 1) for k in keys())
    assert root is not None
    yield store, root
    await store.close()


def model(all_keys: list[str], prefix: str, after: str | None, delimiter: str | None) -> list[str]:
    """S3's listing, the obvious way: every key looked at."""
    out: list[str] = []
    for key in all_keys:
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix) :]
        item = key
        if delimiter and delimiter in rest:
            item = prefix + rest[: rest.index(delimiter) + len(delimiter)]
        if after is not None and (
            item <= after or (item.endswith(delimiter or "\0") and after.startswith(item))
        ):
            continue
        if not out or out[-1] != item:
            out.append(item)
    return out


async def listed(
    index: FileIndex, root: str, prefix: str, after: str | None, delimiter: str | None, limit: int
) -> list[str]:
    out: list[str] = []
    async for item in scan_prefix(index, root, prefix, after=after, delimiter=delimiter):
        out.append(item if isinstance(item, str) else item.key)
        if len(out) == limit:
            break
    return out


def test_key_successor() -> None:
    assert key_successor("/a/") == "/a0"
    assert key_successor("ab\U0010ffff") == "ac"
    assert key_successor("\U0010ffff") is None
    assert key_successor("") is None


async def test_listings_agree_with_the_model(tree: tuple[CountingStore, str]) -> None:
    store, root = tree
    index = FileIndex(store)
    all_keys = keys()
    rng = random.Random(7)
    cases = [("/", None, "/"), ("/d1", None, "/"), ("/d1", None, None), ("/d3/", None, "/")]
    cases += [("/", "/d2/", "/"), ("/d", "/d1", "/"), ("/", None, "-"), ("/é", None, "/")]
    for _ in range(40):
        prefix = rng.choice(["/", "/d", "/d4", "/d4/", "/d4/x", "/d5/y1", "/zz", "/a b/"])
        after = rng.choice([None, rng.choice(all_keys), rng.choice(all_keys)[:6]])
        cases.append((prefix, after, rng.choice([None, "/", "-", "x"])))
    for prefix, after, delimiter in cases:
        want = model(all_keys, prefix, after, delimiter)[:500]
        got = await listed(index, root, prefix, after, delimiter, 500)
        assert got == want, (prefix, after, delimiter)


async def test_a_page_costs_the_same_wherever_it_starts(tree: tuple[CountingStore, str]) -> None:
    store, root = tree
    all_keys = [k for k in keys() if k.startswith("/d")]
    costs = []
    for after in (None, all_keys[len(all_keys) // 2], all_keys[-1001]):
        index = FileIndex(store)  # a cold cache each time
        page = await listed(index, root, "/d", after, None, 1000)
        assert len(page) == 1000
        costs.append(index.nodes_read)
    # Leaves differ in size (content-defined), so a page reads 12-18 nodes; the last
    # page of 20,000 keys reads no more than the first, nowhere near the ~400 of a scan.
    assert max(costs) <= 2 * min(costs), costs


async def test_rolled_up_prefixes_are_skipped_not_read(tree: tuple[CountingStore, str]) -> None:
    store, root = tree
    index = FileIndex(store)
    top = await listed(index, root, "/", None, "/", 1000)
    assert [t for t in top if t.endswith("/")] == ["/a b/", *[f"/d{i}/" for i in range(7)], "/é/"]
    # Each of the 9 directories costs a seek, not a read of its ~3,000 keys.
    height = (await index.node(root)).level + 1
    assert index.nodes_read <= len(top) * (height + 1), (index.nodes_read, len(top), height)
