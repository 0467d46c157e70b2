"""``FileIndex``: the tree over an object store — node cache, writes, build, apply, reads."""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Iterable, Sequence

import zstandard

from shared.platform.errors import Internal, InvalidArgument, NotFound
from shared.storage.file_index.builder import TreeBuilder
from shared.storage.file_index.diff import diff_trees
from shared.storage.file_index.node import (
    STORE_PREFIX,
    IndexEntry,
    InternalNode,
    LeafNode,
    Node,
    decode_node,
    node_hash,
    store_key,
)
from shared.storage.objstore import ObjectStore

Change = tuple[str, IndexEntry | None]

# Rough Python-object overhead per decoded item, so the cache bound tracks real memory.
_ITEM_OVERHEAD = 160
# Closed nodes are handed to the writer in batches of this many.
_DRAIN_EVERY = 64


class FileIndex:
    """A sorted map path → ``IndexEntry`` stored as a content-addressed prolly tree.

    Trees are named by their root hash (``None`` is the empty tree) and never change;
    every operation that "modifies" a tree writes the new nodes and returns a new root.
    Work counters, an operator's view of the index and its node cache (PFS serves them at
    ``GET /v1/status``; tests and benchmarks read them too): ``nodes_read`` (fetched from
    the store: cache misses), ``nodes_written`` (put into the store), ``node_visits``
    (every node access, cache hits included). ``counters()`` gives them with the cache's
    fill.
    """

    def __init__(
        self,
        store: ObjectStore,
        *,
        fanout: int = 64,
        cache_bytes: int = 64 * 1024 * 1024,
        max_node_items: int | None = None,
        max_node_bytes: int = 1024 * 1024,
        write_concurrency: int = 16,
        on_reuse: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        # Told the store key of each node a write skips because the cache says it is
        # stored: a garbage collector counts that re-use as a touch (services/pfs/store_guard).
        self.on_reuse = on_reuse
        self.fanout = fanout
        self.max_node_items = max_node_items if max_node_items is not None else 8 * fanout
        self.max_node_bytes = max_node_bytes
        self.cache_bytes = cache_bytes
        self.write_concurrency = write_concurrency
        self.nodes_read = 0
        self.nodes_written = 0
        self.node_visits = 0
        self._cache: OrderedDict[str, tuple[Node, int]] = OrderedDict()
        self._cache_used = 0
        self._loading: dict[str, asyncio.Future[Node]] = {}
        self._writing: dict[str, asyncio.Task[None]] = {}
        # Forgotten while a fetch of them was in flight: that fetch is not cached.
        self._stale: set[str] = set()
        self._compressor = zstandard.ZstdCompressor(level=3)
        self._decompressor = zstandard.ZstdDecompressor()
        self._builder()  # refuse bad parameters now rather than at the first build

    # -- counters and cache -------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """The work counters since start (or ``reset_counters``) and the cache's fill."""
        return {
            "nodes_read": self.nodes_read,
            "nodes_written": self.nodes_written,
            "node_visits": self.node_visits,
            "cache_bytes": self._cache_used,
            "cache_limit_bytes": self.cache_bytes,
        }

    def reset_counters(self) -> None:
        """Zero ``nodes_read``, ``nodes_written`` and ``node_visits``."""
        self.nodes_read = self.nodes_written = self.node_visits = 0

    def clear_cache(self) -> None:
        """Forget every cached node (the next reads go to the store)."""
        self._cache.clear()
        self._cache_used = 0

    def forget(self, keys: Iterable[str]) -> None:
        """Drop the cached nodes stored under ``keys`` (other keys are ignored): they are
        being deleted, so a later write must ask the store, not trust the cache."""
        for key in keys:
            if not key.startswith(STORE_PREFIX):
                continue
            digest = key.rsplit("/", 1)[-1]
            hit = self._cache.pop(digest, None)
            if hit is not None:
                self._cache_used -= hit[1]
            if digest in self._loading:
                self._stale.add(digest)

    def _remember(self, digest: str, node: Node, plain_len: int) -> None:
        if digest in self._stale:
            self._stale.discard(digest)
            return
        if digest in self._cache:
            self._cache.move_to_end(digest)
            return
        cost = plain_len + _ITEM_OVERHEAD * len(node.keys)
        self._cache[digest] = (node, cost)
        self._cache_used += cost
        while self._cache_used > self.cache_bytes and self._cache:
            _, (_, old_cost) = self._cache.popitem(last=False)
            self._cache_used -= old_cost

    async def node(self, digest: str) -> Node:
        """Return the decoded node named ``digest`` (from the cache or the store)."""
        self.node_visits += 1
        hit = self._cache.get(digest)
        if hit is not None:
            self._cache.move_to_end(digest)
            return hit[0]
        return await self._load(digest)

    async def _load(self, digest: str) -> Node:
        """Fetch a node once even when several tasks (or a read-ahead) want it at once."""
        while True:
            hit = self._cache.get(digest)
            if hit is not None:
                return hit[0]
            loading = self._loading.get(digest)
            if loading is None:
                break
            try:
                return await asyncio.shield(loading)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if loading.cancelled() and task is not None and not task.cancelling():
                    continue  # the task fetching it was cancelled, not this one: fetch again
                raise
        future: asyncio.Future[Node] = asyncio.get_running_loop().create_future()
        self._loading[digest] = future
        try:
            node = await self._fetch(digest)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(exc)
                future.exception()  # mark retrieved: nobody else may be waiting
            raise
        else:
            future.set_result(node)
            return node
        finally:
            del self._loading[digest]

    def _read_ahead(self, digests: list[str], ahead: dict[str, asyncio.Task[Node]]) -> None:
        """Start fetching nodes a scan will visit next, so store latencies overlap."""
        for digest in digests:
            if digest in ahead or digest in self._cache or digest in self._loading:
                continue
            ahead[digest] = asyncio.create_task(self._load(digest))

    async def _visit_ahead(self, digest: str, ahead: dict[str, asyncio.Task[Node]]) -> Node:
        """``node(digest)``, taking a read-ahead's result even if the cache dropped it since."""
        task = ahead.pop(digest, None)
        if task is None:
            return await self.node(digest)
        self.node_visits += 1
        return await task

    async def _fetch(self, digest: str) -> Node:
        try:
            data = await self.store.get(store_key(digest))
        except NotFound:
            raise NotFound(f"index node {digest} is missing from the object store") from None
        self.nodes_read += 1
        try:
            plain = self._decompressor.decompress(data)
        except zstandard.ZstdError as exc:
            raise Internal(f"index node {digest} is corrupt: {exc}") from None
        if node_hash(plain) != digest:
            raise Internal(f"index node {digest} is corrupt: its content hash differs")
        node = decode_node(plain)
        self._remember(digest, node, len(plain))
        return node

    # -- writing -----------------------------------------------------------------------

    async def _write(self, digest: str, plain: bytes, node: Node) -> None:
        key = store_key(digest)
        if not await self.store.exists(key):
            await self.store.put(key, self._compressor.compress(plain))
            self.nodes_written += 1
        # Cached only once stored: a cached node is one every reader can fetch.
        self._remember(digest, node, len(plain))

    def _start_write(self, digest: str, plain: bytes, node: Node) -> asyncio.Task[None]:
        """The write of a node, shared with any other operation writing it right now."""
        task = self._writing.get(digest)
        if task is None:
            task = asyncio.create_task(self._write(digest, plain, node))
            self._writing[digest] = task
            task.add_done_callback(self._write_done)
        return task

    def _write_done(self, task: asyncio.Task[None]) -> None:
        for digest, running in list(self._writing.items()):
            if running is task:
                del self._writing[digest]
        if not task.cancelled():
            task.exception()  # the operations awaiting it raise it; don't warn twice

    async def _drain(
        self, builder: TreeBuilder, tasks: set[asyncio.Task[None]], *, final: bool = False
    ) -> None:
        """Start writes of the builder's closed nodes, keeping at most N in flight.

        A failed operation leaves its started writes to finish on their own rather
        than cancelling them: another operation may be sharing one, and a stored node
        nobody references is harmless.
        """
        for digest, (plain, node) in builder.pending.items():
            if digest in self._cache:
                # Read or written before: it is in the store already.
                if self.on_reuse is not None:
                    self.on_reuse(store_key(digest))
                continue
            tasks.add(self._start_write(digest, plain, node))
            if len(tasks) >= self.write_concurrency:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                tasks.difference_update(done)
                for task in done:
                    task.result()
        builder.pending.clear()
        if final and tasks:
            done, _ = await asyncio.wait(tasks)
            tasks.clear()
            for task in done:
                task.result()

    def _builder(self) -> TreeBuilder:
        return TreeBuilder(
            fanout=self.fanout, max_items=self.max_node_items, max_bytes=self.max_node_bytes
        )

    async def _finish(self, builder: TreeBuilder, tasks: set[asyncio.Task[None]]) -> str | None:
        root = builder.finish()
        # Store every node first: the top may be a node this operation closed and handed
        # to the writer earlier (no longer in ``pending``), and reading it back before
        # its write lands would report it missing from the store.
        await self._drain(builder, tasks, final=True)
        # A reused old node can end up alone at the top; collapse it like the builder does.
        while root is not None:
            node = await self.node(root)
            if not isinstance(node, InternalNode) or len(node.children) != 1:
                break
            root = node.children[0].hash
        return root

    # -- building and applying changes ---------------------------------------------------

    async def build(self, entries: Iterable[IndexEntry] | AsyncIterable[IndexEntry]) -> str | None:
        """Store a tree of ``entries`` (sorted, unique keys) and return its root hash."""
        builder = self._builder()
        tasks: set[asyncio.Task[None]] = set()
        if isinstance(entries, AsyncIterable):
            async for entry in entries:
                builder.add_entry(entry)
                if len(builder.pending) >= _DRAIN_EVERY:
                    await self._drain(builder, tasks)
        else:
            for entry in entries:
                builder.add_entry(entry)
                if len(builder.pending) >= _DRAIN_EVERY:
                    await self._drain(builder, tasks)
        return await self._finish(builder, tasks)

    async def apply(self, root: str | None, changes: Sequence[Change]) -> str | None:
        """Return the root of ``root`` with ``changes`` applied (``None`` value = delete).

        ``changes`` must be sorted by key without repeats; deleting a missing key is a
        no-op. Unchanged subtrees are reused by reference, so the cost is O(k log N)
        node reads and writes for k changes into N entries.
        """
        _check_changes(changes)
        if not changes:
            return root
        if root is None:
            return await self.build(e for _, e in changes if e is not None)
        builder = self._builder()
        tasks: set[asyncio.Task[None]] = set()
        top = await self.node(root)
        old_last = top.keys[-1]
        next_change = await self._rebuild(top, changes, 0, old_last, builder, tasks)
        for _, entry in changes[next_change:]:
            if entry is not None:
                builder.add_entry(entry)
        return await self._finish(builder, tasks)

    async def _rebuild(
        self,
        node: Node,
        changes: Sequence[Change],
        ci: int,
        old_last: str,
        builder: TreeBuilder,
        tasks: set[asyncio.Task[None]],
    ) -> int:
        """Feed ``node``'s subtree, with the changes that fall in it, into ``builder``.

        Returns the index of the first change not yet applied.
        """
        n = len(changes)
        if isinstance(node, LeafNode):
            entries = node.entries
            last = len(entries) - 1
            i = 0
            while ci < n and changes[ci][0] <= node.keys[-1]:
                # Old entries before the change go in as one run; none of them is the
                # leaf's last entry, the only one that may be a natural cut.
                key, new = changes[ci]
                j = bisect_left(node.keys, key, i)
                builder.add_leaf_run(entries[i:j])
                if new is not None:
                    builder.add_entry(new)
                i = j + 1 if node.keys[j] == key else j
                ci += 1
            builder.add_leaf_run(entries[i:last])
            if i <= last:
                builder.add_entry(entries[last])
            if builder.pending:
                # Start the writes now: they run in the store's threads while the
                # upper levels are rebuilt, instead of all waiting for the end.
                await self._drain(builder, tasks)
            return ci
        level = node.level
        children = node.children
        last = len(children) - 1
        i = 0
        while i <= last:
            child = children[i]
            # Reuse the child when no change falls in it, the levels below are at a cut
            # and the child ended at a real cut. A child that ended at the end of the old
            # data (the right spine) is only reusable once no change is left to append.
            if builder.empty_below(level) and (
                ci == n or (changes[ci][0] > child.last_key and child.last_key != old_last)
            ):
                if i < last:
                    # The whole run of siblings before the next change goes in at once.
                    j = last if ci == n else bisect_left(node.keys, changes[ci][0], i, last)
                    builder.add_siblings(level, children[i:j])
                    i = j
                    continue
                builder.add_child(level, child)
            else:
                ci = await self._rebuild(
                    await self.node(child.hash), changes, ci, old_last, builder, tasks
                )
            i += 1
        return ci

    # -- reading ---------------------------------------------------------------------------

    async def get(self, root: str | None, key: str) -> IndexEntry | None:
        """Return the entry of ``key`` in tree ``root``, or ``None``."""
        if root is None:
            return None
        node = await self.node(root)
        while isinstance(node, InternalNode):
            i = bisect_left(node.keys, key)
            if i == len(node.keys):
                return None
            node = await self.node(node.children[i].hash)
        i = bisect_left(node.keys, key)
        if i < len(node.keys) and node.keys[i] == key:
            return node.entries[i]
        return None

    async def scan(
        self, root: str | None, start: str = "", end: str | None = None, *, read_ahead: int = 8
    ) -> AsyncGenerator[IndexEntry, None]:
        """Yield the entries with ``start <= key < end`` in key order.

        Only nodes whose key range overlaps the range are read. While in a leaf, up
        to ``read_ahead`` of the next leaves in range are fetched concurrently; pass 0
        when the caller will stop after a few entries (a seek).
        """
        if root is None or (end is not None and end <= start):
            return
        stack = [(root, -1)]  # (node hash, its level if known); the top is visited next
        ahead: dict[str, asyncio.Task[Node]] = {}
        try:
            while stack:
                digest, _ = stack.pop()
                if read_ahead and stack and stack[-1][1] == 0:
                    next_leaves = []
                    for queued, level in reversed(stack[-read_ahead:]):
                        if level != 0:
                            break
                        next_leaves.append(queued)
                    self._read_ahead(next_leaves, ahead)
                node = await self._visit_ahead(digest, ahead)
                i = bisect_left(node.keys, start)
                if isinstance(node, LeafNode):
                    j = len(node.keys) if end is None else bisect_left(node.keys, end, i)
                    for entry in node.entries[i:j]:
                        yield entry
                else:
                    # Child j covers (keys[j-1], keys[j]]: it overlaps while keys[j-1] < end.
                    j = len(node.keys) if end is None else bisect_left(node.keys, end, i) + 1
                    level = node.level - 1
                    stack.extend((c.hash, level) for c in reversed(node.children[i:j]))
        finally:
            for task in ahead.values():
                task.cancel()
            if ahead:
                await asyncio.gather(*ahead.values(), return_exceptions=True)

    async def stats(
        self, root: str | None, start: str = "", end: str | None = None
    ) -> tuple[int, int]:
        """Return (entry count, total size) of ``[start, end)`` in O(log N) node reads.

        Subtrees wholly inside the range contribute their stored aggregates; only the
        (at most two) nodes per level that straddle a range bound are opened.
        """
        if root is None or (end is not None and end <= start):
            return 0, 0
        count = size = 0
        # (node hash, exclusive lower bound of its keys; None = unbounded)
        stack: list[tuple[str, str | None]] = [(root, None)]
        while stack:
            digest, low = stack.pop()
            node = await self.node(digest)
            i = bisect_left(node.keys, start)
            if isinstance(node, LeafNode):
                j = len(node.keys) if end is None else bisect_left(node.keys, end, i)
                count += j - i
                size += sum(e.size for e in node.entries[i:j])
                continue
            j = len(node.keys) if end is None else bisect_left(node.keys, end, i) + 1
            for idx in range(i, min(j, len(node.keys))):
                child = node.children[idx]
                child_low = node.keys[idx - 1] if idx > 0 else low
                above_start = start == "" or (child_low is not None and child_low >= start)
                below_end = end is None or child.last_key < end
                if above_start and below_end:
                    count += child.count
                    size += child.size
                else:
                    stack.append((child.hash, child_low))
        return count, size

    def diff(
        self, old: str | None, new: str | None, start: str = "", end: str | None = None
    ) -> AsyncGenerator[tuple[str, IndexEntry | None, IndexEntry | None], None]:
        """Yield ``(key, old entry, new entry)`` for keys in ``[start, end)`` that differ.

        Sorted by key; an added key has ``old = None``, a deleted one ``new = None``.
        Subtrees with equal hashes are skipped, so trees differing in k keys cost
        O(k log N) node reads.
        """
        return diff_trees(self.node, old, new, start, end)


def _check_changes(changes: Sequence[Change]) -> None:
    previous: str | None = None
    for key, entry in changes:
        if previous is not None and key <= previous:
            raise InvalidArgument(
                f"index changes must be sorted by key without repeats: {key!r} after {previous!r}"
            )
        if entry is not None and entry.key != key:
            raise InvalidArgument(f"index change for {key!r} carries an entry for {entry.key!r}")
        previous = key
