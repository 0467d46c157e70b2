"""The file index: correctness against a plain dict model, and costs counted in node I/O.

Costs are asserted by counting node reads and writes (``FileIndex`` counters, checked
against the ``CountingStore`` underneath), never by timing. A "cold" index is a new
``FileIndex`` over the same store, so every node it needs is fetched.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from shared.platform.errors import Internal, InvalidArgument, NotFound
from shared.storage.file_index import FileIndex, IndexEntry, list_dir
from shared.storage.file_index.node import InternalNode, LeafNode, node_hash, store_key
from shared.storage.objstore.local import LocalStore
from tests.fixtures.counting_store import CountingStore

BIG_N = 100_000


def entry(key: str, tag: str = "v1", size: int | None = None) -> IndexEntry:
    """A file entry whose value looks like PFS's JSON and whose size derives from the key."""
    value = f'{{"hash":"{tag}","chunks":[["{key}",0,{len(key)}]]}}'.encode()
    return IndexEntry(key, value, len(key) * 7 if size is None else size)


def big_keys() -> list[str]:
    """100k paths in 40 top-level dirs × 10 subdirs, sorted."""
    return sorted(f"/dir{i % 40:02d}/sub{i % 10}/file{i:06d}.csv" for i in range(BIG_N))


@dataclass
class Big:
    store: CountingStore
    keys: list[str]
    entries: dict[str, IndexEntry]
    root: str
    height: int
    total_nodes: int

    def cold(self, **kwargs: int) -> FileIndex:
        """A fresh index with an empty cache over the same store."""
        return FileIndex(self.store, **kwargs)


async def tree_height(index: FileIndex, root: str | None) -> int:
    return 0 if root is None else (await index.node(root)).level + 1


@dataclass(frozen=True)
class NodeSpan:
    level: int
    low: str | None  # keys are > low
    high: str  # keys are <= high


async def all_nodes(index: FileIndex, root: str | None) -> list[NodeSpan]:
    """Every node of the tree with the key span it covers (an independent walk)."""
    spans: list[NodeSpan] = []
    if root is None:
        return spans

    async def walk(digest: str, low: str | None) -> None:
        node = await index.node(digest)
        spans.append(NodeSpan(node.level, low, node.keys[-1]))
        if isinstance(node, InternalNode):
            for i, child in enumerate(node.children):
                await walk(child.hash, node.keys[i - 1] if i else low)

    await walk(root, None)
    return spans


@pytest.fixture(scope="module")
async def big(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Big]:
    counting = CountingStore(LocalStore(tmp_path_factory.mktemp("big") / "objects"))
    keys = big_keys()
    entries = {k: entry(k) for k in keys}
    index = FileIndex(counting)
    root = await index.build(entries[k] for k in keys)
    assert root is not None
    height = await tree_height(index, root)
    total = len(await all_nodes(index, root))
    yield Big(counting, keys, entries, root, height, total)
    await counting.close()


def apply_to_model(
    model: dict[str, IndexEntry], changes: list[tuple[str, IndexEntry | None]]
) -> dict[str, IndexEntry]:
    out = dict(model)
    for key, value in changes:
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def sorted_entries(model: dict[str, IndexEntry]) -> Iterator[IndexEntry]:
    return (model[k] for k in sorted(model))


async def collect(
    index: FileIndex, root: str | None, start: str = "", end: str | None = None
) -> list[IndexEntry]:
    return [e async for e in index.scan(root, start, end)]


# -- basics -------------------------------------------------------------------------------


async def test_build_then_get_scan_and_stats_agree_with_the_input(store: CountingStore) -> None:
    index = FileIndex(store, fanout=8)
    keys = sorted(f"/k/{i:05d}" for i in range(3000))
    model = {k: entry(k) for k in keys}
    root = await index.build(sorted_entries(model))

    assert await collect(index, root) == list(sorted_entries(model))
    for key in random.Random(1).sample(keys, 200):
        assert await index.get(root, key) == model[key]
    assert await index.get(root, "/k/00000.5") is None
    assert await index.get(root, "/zzz") is None
    assert await index.get(root, "") is None
    assert await index.stats(root) == (3000, sum(e.size for e in model.values()))
    assert await tree_height(index, root) >= 3  # deep enough to exercise internal levels


async def test_build_accepts_an_async_iterable(store: CountingStore) -> None:
    index = FileIndex(store, fanout=4)
    items = [entry(f"/f{i:03d}") for i in range(100)]

    async def stream() -> AsyncIterator[IndexEntry]:
        for item in items:
            yield item

    assert await index.build(stream()) == await index.build(items)


async def test_empty_tree_cases(store: CountingStore) -> None:
    index = FileIndex(store)
    assert await index.build([]) is None
    assert await index.get(None, "/a") is None
    assert await collect(index, None) == []
    assert await index.stats(None) == (0, 0)
    assert [d async for d in index.diff(None, None)] == []
    assert [c async for c in list_dir(index, None, "/")] == []
    assert await index.apply(None, []) is None
    assert await index.apply(None, [("/a", None)]) is None

    one = entry("/a")
    root = await index.apply(None, [("/a", one)])
    assert root == await index.build([one])
    assert [d async for d in index.diff(None, root)] == [("/a", None, one)]
    assert [d async for d in index.diff(root, None)] == [("/a", one, None)]
    assert await index.apply(root, []) == root
    assert store.count_gets("index/") == 0  # none of this needed to read a node back


async def test_deleting_everything_gives_none(store: CountingStore) -> None:
    index = FileIndex(store, fanout=4)
    keys = [f"/x/{i:04d}" for i in range(500)]
    root = await index.build(entry(k) for k in keys)
    # in two steps, so the second starts from a partly emptied tree
    half = await index.apply(root, [(k, None) for k in keys[::2]])
    assert await index.stats(half) == (250, sum(len(k) * 7 for k in keys[1::2]))
    assert await index.apply(half, [(k, None) for k in keys[1::2]]) is None


async def test_deleting_a_missing_key_is_a_no_op(store: CountingStore) -> None:
    index = FileIndex(store, fanout=4)
    root = await index.build(entry(f"/{i:03d}") for i in range(200))
    assert await index.apply(root, [("/0005", None), ("/zz", None)]) == root


async def test_unsorted_or_repeated_input_is_refused(store: CountingStore) -> None:
    index = FileIndex(store)
    with pytest.raises(InvalidArgument, match="sorted"):
        await index.build([entry("/b"), entry("/a")])
    with pytest.raises(InvalidArgument, match="sorted"):
        await index.build([entry("/a"), entry("/a")])
    root = await index.build([entry("/a")])
    with pytest.raises(InvalidArgument, match="sorted"):
        await index.apply(root, [("/b", None), ("/a", None)])
    with pytest.raises(InvalidArgument, match="carries an entry"):
        await index.apply(root, [("/b", entry("/c"))])
    with pytest.raises(InvalidArgument):
        FileIndex(store, fanout=1)


async def test_non_ascii_paths_sort_by_code_point_and_round_trip(store: CountingStore) -> None:
    names = ["/données/é.txt", "/données/z.txt", "/日本/ファイル", "/a/🦣.bin", "/a/b", "/Z"]
    keys = sorted(names)
    assert keys == sorted(names, key=lambda k: k.encode())  # str order == UTF-8 byte order
    index = FileIndex(store, fanout=2)
    root = await index.build(entry(k) for k in keys)
    cold = FileIndex(store, fanout=2)
    assert [e.key for e in await collect(cold, root)] == keys
    assert await cold.get(root, "/日本/ファイル") == entry("/日本/ファイル")
    assert [c.name async for c in list_dir(cold, root, "/données")] == ["z.txt", "é.txt"]


async def test_a_negative_size_is_refused(store: CountingStore) -> None:
    with pytest.raises(InvalidArgument, match="negative size"):
        await FileIndex(store).build([IndexEntry("/a", b"", -1)])


# -- storage -------------------------------------------------------------------------------


async def test_nodes_are_content_addressed_and_written_once(store: CountingStore) -> None:
    index = FileIndex(store, fanout=8)
    entries = [entry(f"/p/{i:04d}") for i in range(2000)]
    root = await index.build(entries)
    assert root is not None
    written = index.nodes_written
    assert written == store.count_puts("index/") > 1

    keys = [k async for k in store.list("index/")]
    assert len(keys) == written
    for key in keys:
        digest = key.rsplit("/", 1)[1]
        assert key == store_key(digest) == f"index/{digest[:2]}/{digest}"
        plain = zstandard.ZstdDecompressor().decompress(await store.get(key))
        assert node_hash(plain) == digest

    # Same content again, from an index that has never seen it: nothing new is put.
    again = FileIndex(store, fanout=8)
    assert await again.build(entries) == root
    assert again.nodes_written == 0
    assert store.count_puts("index/") == written


class SlowPuts(CountingStore):
    """Writes take 20 ms, so concurrent operations overlap."""

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.sleep(0.02)
        await super().put(key, data)


async def test_concurrent_builds_share_writes_and_return_only_stored_trees(
    tmp_path: Path,
) -> None:
    slow = SlowPuts(LocalStore(tmp_path / "objects"))
    index = FileIndex(slow, fanout=8)
    entries = [entry(f"/s/{i:04d}") for i in range(400)]
    builds = [asyncio.create_task(index.build(entries)) for _ in range(2)]

    done, _ = await asyncio.wait(builds, return_when=asyncio.FIRST_COMPLETED)
    root = next(iter(done)).result()
    # Whichever returned first, its whole tree is readable from the store already.
    nodes = await all_nodes(FileIndex(slow, fanout=8), root)
    assert await asyncio.gather(*builds) == [root, root]
    assert slow.count_puts("index/") == index.nodes_written == len(nodes)
    await slow.close()


async def test_a_top_node_still_being_written_is_not_read_back_as_missing(
    tmp_path: Path,
) -> None:
    # With fanout 2 the top of many trees closes with their last key, so the node an
    # apply ends with was handed to the (slow) writer before the apply finishes. The
    # apply must wait for that write rather than read the node back from the store.
    for n in range(2, 40):
        slow = SlowPuts(LocalStore(tmp_path / f"objects{n}"))
        keys = [f"/k{i:04d}" for i in range(n)]
        root = await FileIndex(slow, fanout=2).build([entry(k) for k in keys])
        index = FileIndex(slow, fanout=2)

        new_root = await index.apply(root, [(keys[-1], entry(keys[-1], "v2"))])

        assert await collect(FileIndex(slow, fanout=2), new_root) == [
            *(entry(k) for k in keys[:-1]),
            entry(keys[-1], "v2"),
        ]
        await slow.close()


async def test_a_corrupt_node_is_reported_not_returned(store: CountingStore) -> None:
    index = FileIndex(store, fanout=8)
    root = await index.build(entry(f"/c/{i:04d}") for i in range(100))
    assert root is not None
    blob = zstandard.ZstdCompressor().compress(b"\x01\x00\x00\x00\x00\x00")
    await store.put(store_key(root), blob)
    with pytest.raises(Internal, match="corrupt"):
        await FileIndex(store).get(root, "/c/0001")


async def test_a_missing_root_is_not_found(store: CountingStore) -> None:
    with pytest.raises(NotFound, match="missing"):
        await FileIndex(store).get("ab" * 32, "/a")


async def test_the_node_cache_stays_within_its_byte_bound(big: Big) -> None:
    index = big.cold(cache_bytes=256 * 1024)
    assert len(await collect(index, big.root)) == BIG_N
    assert 0 < index._cache_used <= 256 * 1024
    assert index.nodes_read == big.total_nodes


# -- costs of apply ------------------------------------------------------------------------


async def test_apply_one_change_to_100k_tree_writes_log_n_nodes(big: Big) -> None:
    key = big.keys[BIG_N // 2]
    edited = entry(key, tag="v2", size=12345)
    index = big.cold()
    puts_before = big.store.count_puts("index/")

    root = await index.apply(big.root, [(key, edited)])

    # A value edit moves no boundary: exactly the path from leaf to root is new.
    assert index.nodes_written == big.height == big.store.count_puts("index/") - puts_before
    assert index.nodes_read == big.height
    assert big.total_nodes > 300 * big.height
    assert await index.get(root, key) == edited
    model = dict(big.entries)
    model[key] = edited
    assert root == await FileIndex(big.store).build(sorted_entries(model))


async def test_apply_insert_and_delete_into_100k_tree_touch_log_n_nodes(big: Big) -> None:
    key = big.keys[BIG_N // 3]
    inserted = key.replace(".csv", ".csv.bak")
    changes: list[tuple[str, IndexEntry | None]] = [(key, None), (inserted, entry(inserted))]
    index = big.cold()

    root = await index.apply(big.root, changes)

    # A deleted boundary key merges two leaves (and maybe parents): a few extra nodes.
    assert index.nodes_written <= 2 * big.height + 2
    assert index.nodes_read <= 2 * big.height + 2
    count, size = await index.stats(root)
    assert (count, size) == (BIG_N, sum(e.size for e in big.entries.values()) + 7 * len(".bak"))
    assert root == await FileIndex(big.store).build(
        sorted_entries(apply_to_model(big.entries, changes))
    )


async def test_apply_k_changes_costs_o_k_log_n(big: Big) -> None:
    rng = random.Random(7)
    picked = sorted(rng.sample(big.keys, 60))
    changes: list[tuple[str, IndexEntry | None]] = []
    for n, key in enumerate(picked):
        if n % 3 == 0:
            changes.append((key, None))
        elif n % 3 == 1:
            changes.append((key, entry(key, tag="v2")))
        else:
            changes.append((key, entry(key, tag="v2")))
            changes.append((key + "~", entry(key + "~")))  # "~" sorts after ".csv": an insert
    index = big.cold()

    root = await index.apply(big.root, changes)

    k = len(changes)
    assert index.nodes_written <= 2 * k * big.height
    assert index.nodes_read <= 2 * k * big.height
    assert index.nodes_written < big.total_nodes // 4
    assert root == await FileIndex(big.store).build(
        sorted_entries(apply_to_model(big.entries, changes))
    )


async def test_appending_past_the_last_key_rewrites_only_the_right_spine(big: Big) -> None:
    index = big.cold()
    tail = [f"/zzz/new{i:03d}" for i in range(10)]
    root = await index.apply(big.root, [(k, entry(k)) for k in tail])
    assert index.nodes_read <= 2 * big.height
    assert index.nodes_written <= 2 * big.height
    assert [e.key for e in await collect(index, root, "/zzz/")] == tail
    model = dict(big.entries) | {k: entry(k) for k in tail}
    assert root == await FileIndex(big.store).build(sorted_entries(model))


# -- history independence --------------------------------------------------------------------


def random_changes(
    rng: random.Random, model: dict[str, IndexEntry], universe: list[str], n: int
) -> list[tuple[str, IndexEntry | None]]:
    changes: dict[str, IndexEntry | None] = {}
    for _ in range(n):
        roll = rng.random()
        if roll < 0.4 and model:
            changes[rng.choice(list(model))] = None  # delete an existing key
        elif roll < 0.6 and model:
            key = rng.choice(list(model))
            changes[key] = entry(key, tag=str(rng.random()))  # edit
        elif roll < 0.65:
            changes[rng.choice(universe)] = None  # maybe a missing key: a no-op
        else:
            key = rng.choice(universe)
            changes[key] = entry(key, tag=str(rng.random()))  # insert or edit
    return sorted(changes.items())


@pytest.mark.parametrize(
    ("seed", "fanout", "max_items", "max_bytes"),
    [
        (0, 4, None, 1 << 20),
        (1, 4, None, 1 << 20),
        (2, 8, None, 1 << 20),
        (3, 3, 4, 1 << 20),  # item caps cut often
        (4, 16, 20, 1 << 20),
        (5, 6, 7, 1 << 20),
        (6, 16, None, 700),  # byte caps cut most leaves
    ],
)
async def test_history_independence_random_ops(
    store: CountingStore, seed: int, fanout: int, max_items: int | None, max_bytes: int
) -> None:
    rng = random.Random(seed)

    def new_index() -> FileIndex:
        return FileIndex(store, fanout=fanout, max_node_items=max_items, max_node_bytes=max_bytes)

    index = new_index()
    universe = sorted({f"/{rng.choice('abc')}/{rng.randrange(3000):04d}" for _ in range(2500)})
    model = {k: entry(k) for k in rng.sample(universe, 600)}
    root = await index.build(sorted_entries(model))

    for step in range(30):
        size = rng.choice([1, 2, 5, 30, 200])
        if step == 20:  # empty the tree once, then grow it again
            changes: list[tuple[str, IndexEntry | None]] = [(k, None) for k in sorted(model)]
        else:
            changes = random_changes(rng, model, universe, size)
        root = await index.apply(root, changes)
        model = apply_to_model(model, changes)
        fresh = await new_index().build(sorted_entries(model))
        assert root == fresh, f"step {step}: applying changes gave another shape"
        if step == 20:
            assert root is None

    assert await collect(index, root) == list(sorted_entries(model))
    assert await index.stats(root) == (len(model), sum(e.size for e in model.values()))


async def test_a_reused_node_left_alone_at_the_top_is_collapsed(store: CountingStore) -> None:
    # Find a tree whose root's last child is an internal node with a single child, then
    # delete everything before it: apply reuses that child unopened, and must still
    # collapse it, as a build from scratch never makes a one-child root.
    index = FileIndex(store, fanout=4)
    for n in range(10, 2000):
        keys = [f"/k{i:04d}" for i in range(n)]
        root = await index.build(entry(k) for k in keys)
        assert root is not None
        top = await index.node(root)
        if not isinstance(top, InternalNode) or len(top.children) < 2:
            continue
        last = await index.node(top.children[-1].hash)
        if isinstance(last, InternalNode) and len(last.children) == 1:
            break
    else:
        pytest.fail("no tree with a one-child right spine node found")
    cut = top.keys[-2]
    changes: list[tuple[str, IndexEntry | None]] = [(k, None) for k in keys if k <= cut]

    root = await index.apply(root, changes)

    assert root is not None
    assert root == await index.build(entry(k) for k in keys if k > cut)
    assert root != top.children[-1].hash  # the one-child node itself is not the root


async def test_shape_does_not_depend_on_values(store: CountingStore) -> None:
    index = FileIndex(store, fanout=8)
    keys = [f"/v/{i:05d}" for i in range(3000)]
    a = await index.build(entry(k, tag="a") for k in keys)
    b = await index.build(entry(k, tag="b" * 50, size=1) for k in keys)
    assert a != b
    leaf_spans_a = [(s.low, s.high) for s in await all_nodes(index, a) if s.level == 0]
    leaf_spans_b = [(s.low, s.high) for s in await all_nodes(index, b) if s.level == 0]
    assert leaf_spans_a == leaf_spans_b


async def test_oversized_values_force_smaller_leaves(store: CountingStore) -> None:
    index = FileIndex(store, fanout=64, max_node_bytes=64 * 1024)
    big_value = b"x" * 20_000
    root = await index.build(IndexEntry(f"/b/{i:04d}", big_value, 1) for i in range(300))
    leaves = [s for s in await all_nodes(index, root) if s.level == 0]
    assert len(leaves) >= 300 // 4  # at most 4 × 20 kB values per 64 kB leaf
    assert [e.key for e in await collect(FileIndex(store), root)] == [
        f"/b/{i:04d}" for i in range(300)
    ]


# -- diff -------------------------------------------------------------------------------------


async def test_diff_of_trees_differing_in_10_keys_reads_log_n_nodes(big: Big) -> None:
    rng = random.Random(11)
    picked = sorted(rng.sample(big.keys, 10))
    changes: list[tuple[str, IndexEntry | None]] = []
    for n, key in enumerate(picked):
        if n % 3 == 0:
            changes.append((key, None))
        elif n % 3 == 1:
            changes.append((key, entry(key, tag="v2")))
        else:
            changes.append((key + "~", entry(key + "~")))
    new_root = await FileIndex(big.store).apply(big.root, changes)

    index = big.cold()
    gets_before = big.store.count_gets("index/")
    got = [d async for d in index.diff(big.root, new_root)]

    expected = [(k, big.entries.get(k), v) for k, v in changes]
    assert got == expected
    assert index.nodes_read == big.store.count_gets("index/") - gets_before
    # each change costs at most a root-to-leaf path on each side, plus resync slack
    assert index.nodes_read <= 2 * len(changes) * big.height
    assert index.nodes_read < big.total_nodes // 20

    index.reset_counters()
    reverse = [d async for d in index.diff(new_root, big.root)]
    assert reverse == [(k, new, old) for k, old, new in expected]


async def test_diff_of_equal_trees_reads_nothing(big: Big) -> None:
    index = big.cold()
    assert [d async for d in index.diff(big.root, big.root)] == []
    assert index.nodes_read == 0


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
async def test_diff_matches_the_model_diff_within_ranges(store: CountingStore, seed: int) -> None:
    rng = random.Random(100 + seed)
    index = FileIndex(store, fanout=4)
    universe = sorted(f"/{rng.choice('abcd')}/{i:04d}" for i in range(1500))
    old_model = {k: entry(k) for k in rng.sample(universe, 700)}
    changes = random_changes(rng, old_model, universe, rng.choice([3, 40, 400]))
    new_model = apply_to_model(old_model, changes)
    old = await index.build(sorted_entries(old_model))
    new = await index.build(sorted_entries(new_model))

    for start, end in [("", None), ("/b", "/c"), ("/a/0100", "/d/1000"), ("/c/0500", None)]:
        expected = []
        for key in sorted(old_model.keys() | new_model.keys()):
            if key < start or (end is not None and key >= end):
                continue
            before, after = old_model.get(key), new_model.get(key)
            if before != after:
                expected.append((key, before, after))
        assert [d async for d in index.diff(old, new, start, end)] == expected


# -- scans, stats and listings -------------------------------------------------------------------


async def test_scan_range_reads_only_overlapping_nodes(big: Big) -> None:
    start, end = "/dir07/sub7/", "/dir07/sub7/file070000"
    index = big.cold()

    got = await collect(index, big.root, start, end)

    assert [e.key for e in got] == [k for k in big.keys if start <= k < end]
    assert len(got) > 500
    overlapping = [
        s
        for s in await all_nodes(big.cold(), big.root)
        if s.high >= start and (s.low is None or s.low < end)
    ]
    assert index.nodes_read == len(overlapping)
    assert index.nodes_read < big.total_nodes // 10


async def test_a_scan_stopped_early_leaves_no_read_ahead_running(big: Big) -> None:
    index = big.cold()
    # Tasks of the test session (fixtures) were there before and are not the scan's.
    before = asyncio.all_tasks()
    scan = index.scan(big.root, "/dir03/", read_ahead=8)
    first = await anext(scan)
    await scan.aclose()
    assert first.key.startswith("/dir03/")
    assert index.nodes_read <= big.height + 8
    pending = [t for t in asyncio.all_tasks() - before if not t.done()]
    assert pending == []


class GatedStore(CountingStore):
    """Reads wait for ``gate``, so a test can act while a read is in flight."""

    def __init__(self, inner: LocalStore) -> None:
        super().__init__(inner)
        self.gate = asyncio.Event()
        self.reading = asyncio.Event()
        self.started_reads = 0

    async def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        self.started_reads += 1
        self.reading.set()
        await self.gate.wait()
        return await super().get(key, start, end)


async def test_a_read_shared_with_a_cancelled_reader_still_completes(tmp_path: Path) -> None:
    gated = GatedStore(LocalStore(tmp_path / "objects"))
    root = await FileIndex(gated).build([entry("/a"), entry("/b")])
    assert root is not None
    index = FileIndex(gated)
    first = asyncio.create_task(index.node(root))
    await gated.reading.wait()
    second = asyncio.create_task(index.node(root))
    await asyncio.sleep(0)  # the second reader joins the read in flight
    first.cancel()
    await asyncio.sleep(0)
    gated.gate.set()

    node = await second

    assert isinstance(node, LeafNode) and node.keys == ["/a", "/b"]
    assert first.cancelled()
    assert gated.started_reads == 2  # the cancelled read was redone, once
    assert index.nodes_read == 1
    await gated.close()


async def test_scan_bounds_are_half_open(store: CountingStore) -> None:
    index = FileIndex(store, fanout=4)
    keys = [f"/s/{i:03d}" for i in range(300)]
    root = await index.build(entry(k) for k in keys)
    assert [e.key for e in await collect(index, root, "/s/010", "/s/013")] == keys[10:13]
    assert [e.key for e in await collect(index, root, "/s/0105", "/s/0125")] == keys[11:13]
    assert [e.key for e in await collect(index, root, "/s/290")] == keys[290:]
    assert await collect(index, root, "/s/013", "/s/010") == []


async def test_stats_matches_scan(big: Big) -> None:
    rng = random.Random(5)
    index = big.cold()
    bounds = [*sorted(rng.sample(big.keys, 16)), "", "/dir05/", "/dir05/sub9/file"]
    for _ in range(12):
        start, end = sorted(rng.sample(bounds, 2))
        reads_before = index.nodes_read
        index.clear_cache()
        count, size = await index.stats(big.root, start, end)
        stats_reads = index.nodes_read - reads_before
        in_range = [big.entries[k] for k in big.keys if start <= k < end]
        assert (count, size) == (len(in_range), sum(e.size for e in in_range))
        assert stats_reads <= 2 * big.height
    assert await index.stats(big.root, "/dir10/", "/dir100") == (
        BIG_N // 40,
        sum(e.size for k, e in big.entries.items() if k.startswith("/dir10/")),
    )


async def test_list_dir_skips_subdirectories(store: CountingStore) -> None:
    keys = sorted(
        [f"/data/part{d:02d}/row{f:05d}.json" for d in range(50) for f in range(2000)]
        + ["/data/README.md", "/data/part07.txt", "/data/part07/nested/deep.bin", "/top.txt"]
    )
    index = FileIndex(store, fanout=32)
    root = await index.build(entry(k) for k in keys)
    height = await tree_height(index, root)
    leaves = sum(1 for s in await all_nodes(index, root) if s.level == 0)

    cold = FileIndex(store, fanout=32)
    children = [c async for c in list_dir(cold, root, "/data")]

    names = [(c.name, c.kind) for c in children]
    assert names[:8] == [("README.md", "file")] + [(f"part{d:02d}", "dir") for d in range(7)]
    assert ("part07.txt", "file") in names and ("part07", "dir") in names
    assert len(children) == 52
    part07 = next(c for c in children if c.name == "part07")
    under = [k for k in keys if k.startswith("/data/part07/")]
    assert (part07.count, part07.size) == (2001, sum(len(k) * 7 for k in under))
    readme = next(c for c in children if c.name == "README.md")
    assert readme.entry == entry("/data/README.md") and readme.count == 1
    # seek + stats per subdirectory: a few root-to-leaf paths each, never the 3000+ leaves
    assert cold.node_visits <= 50 * 4 * height
    assert cold.node_visits < leaves // 2

    assert [(c.name, c.kind, c.count) for c in [x async for x in list_dir(cold, root, "/")]] == [
        ("data", "dir", len(keys) - 1),
        ("top.txt", "file", 1),
    ]
    nested = [c async for c in list_dir(cold, root, "/data/part07/nested/")]
    assert [(c.name, c.kind) for c in nested] == [("deep.bin", "file")]
    assert [c async for c in list_dir(cold, root, "/nothing")] == []


async def test_list_dir_resumes_from_a_start_key(store: CountingStore) -> None:
    index = FileIndex(store, fanout=4)
    keys = sorted([f"/d/sub{i}/f{j}" for i in range(5) for j in range(20)] + ["/d/a.txt"])
    root = await index.build(entry(k) for k in keys)
    resumed = [(c.name, c.kind) async for c in list_dir(index, root, "/d", start="/d/sub20")]
    assert resumed == [("sub3", "dir"), ("sub4", "dir")]
    everything = [c.name async for c in list_dir(index, root, "/d", start="/a")]
    assert everything == ["a.txt", "sub0", "sub1", "sub2", "sub3", "sub4"]


async def test_list_dir_can_be_stopped_early(store: CountingStore) -> None:
    index = FileIndex(store, fanout=4)
    root = await index.build(entry(f"/d{i:02d}/f") for i in range(50))
    listing = list_dir(index, root, "/")
    names = []
    async for child in listing:
        names.append(child.name)
        if len(names) == 3:
            break
    await listing.aclose()
    assert names == ["d00", "d01", "d02"]
