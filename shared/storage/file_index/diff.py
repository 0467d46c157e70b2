"""Diff of two trees as one sorted walk that skips equal subtrees by hash.

Each side is a frontier: a stack of items in key order, each either an entry or an
unopened subtree. The walk compares the two smallest items:

- two subtrees with the same hash hold identical entries: both are dropped unread;
- otherwise the higher subtree is opened (both, concurrently, on a tie), or an
  entry that lies wholly before the other side's subtree is reported at once;
- two entries are merged by key.

Because node boundaries are a function of content, the two frontiers fall back into
step right after each changed region, so trees that differ in k keys cost O(k log N)
node reads; memory stays O(fanout · height) however large the diff.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass

from shared.storage.file_index.node import IndexEntry, LeafNode, Node

DiffItem = tuple[str, IndexEntry | None, IndexEntry | None]
NodeLoader = Callable[[str], Awaitable[Node]]


@dataclass(frozen=True, slots=True)
class _Subtree:
    level: int
    hash: str
    low: str | None  # every key in the subtree is > low (None: unbounded)


_Item = IndexEntry | _Subtree


class _Frontier:
    """One side's unvisited items; ``items[-1]`` is the smallest."""

    def __init__(self, load: NodeLoader, start: str, end: str | None) -> None:
        self.items: list[_Item] = []
        self._load = load
        self._start = start
        self._end = end

    async def open_root(self, root: str | None) -> None:
        if root is not None:
            node = await self._load(root)
            self._push(node, None)

    async def expand(self) -> None:
        top = self.items.pop()
        assert isinstance(top, _Subtree)
        self._push(await self._load(top.hash), top.low)

    def _push(self, node: Node, low: str | None) -> None:
        start, end = self._start, self._end
        i = bisect_left(node.keys, start)
        if isinstance(node, LeafNode):
            j = len(node.keys) if end is None else bisect_left(node.keys, end, i)
            self.items.extend(reversed(node.entries[i:j]))
            return
        j = len(node.keys) if end is None else bisect_left(node.keys, end, i) + 1
        level = node.level - 1
        keys = node.keys
        self.items.extend(
            _Subtree(level, node.children[k].hash, keys[k - 1] if k > 0 else low)
            for k in reversed(range(i, min(j, len(keys))))
        )


async def diff_trees(
    load: NodeLoader, old: str | None, new: str | None, start: str = "", end: str | None = None
) -> AsyncGenerator[DiffItem, None]:
    """Yield ``(key, old entry, new entry)`` for every key in ``[start, end)`` that differs."""
    if old == new or (end is not None and end <= start):
        return
    a = _Frontier(load, start, end)
    b = _Frontier(load, start, end)
    await asyncio.gather(a.open_root(old), b.open_root(new))
    while a.items and b.items:
        x, y = a.items[-1], b.items[-1]
        if isinstance(x, _Subtree):
            if isinstance(y, _Subtree):
                if x.hash == y.hash:
                    a.items.pop()
                    b.items.pop()
                elif x.level > y.level:
                    await a.expand()
                elif y.level > x.level:
                    await b.expand()
                else:
                    await asyncio.gather(a.expand(), b.expand())
            elif x.low is not None and y.key <= x.low:
                b.items.pop()
                yield y.key, None, y
            else:
                await a.expand()
        elif isinstance(y, _Subtree):
            if y.low is not None and x.key <= y.low:
                a.items.pop()
                yield x.key, x, None
            else:
                await b.expand()
        elif x.key < y.key:
            a.items.pop()
            yield x.key, x, None
        elif y.key < x.key:
            b.items.pop()
            yield y.key, None, y
        else:
            a.items.pop()
            b.items.pop()
            if x != y:
                yield x.key, x, y
    async for item in _drain(a, deleted=True):
        yield item
    async for item in _drain(b, deleted=False):
        yield item


async def _drain(side: _Frontier, *, deleted: bool) -> AsyncGenerator[DiffItem, None]:
    """Report everything left on one side as deleted (old side) or added (new side)."""
    while side.items:
        top = side.items[-1]
        if isinstance(top, _Subtree):
            await side.expand()
            continue
        side.items.pop()
        yield (top.key, top, None) if deleted else (top.key, None, top)
