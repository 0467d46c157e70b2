"""The block cache: fixed-size blocks of committed files kept in memory, LRU-evicted by bytes.

A committed file never changes, so a block named by (commit, path, index) is valid
forever and needs no invalidation. Many FUSE readers share one cache: concurrent
misses of one block fetch it once, and read-ahead loads are tasks the cache owns
(``aclose`` cancels and awaits them), so none outlives the mount service.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable

log = logging.getLogger("tusk.mountd.cache")

# A block: its bytes, or a read-only view of a larger load it was cut from (no copy).
Block = bytes | memoryview
Loader = Callable[[], Awaitable[Block]]
ManyLoader = Callable[[], Awaitable[list[Block]]]


class BlockCache:
    """An LRU of byte blocks bounded by their total size, with single-flight loads."""

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self.hits = 0
        self.misses = 0
        self._blocks: OrderedDict[Hashable, Block] = OrderedDict()
        # Key → (the load in flight that brings it, its index among that load's blocks).
        self._loading: dict[Hashable, tuple[asyncio.Task[list[Block]], int]] = {}
        self._closed = False

    def __contains__(self, key: Hashable) -> bool:
        return key in self._blocks

    async def get(self, key: Hashable, load: Loader) -> Block:
        """The block named ``key``, from memory, from a load in flight, or by calling ``load``."""
        data = self._blocks.get(key)
        if data is not None:
            self._blocks.move_to_end(key)
            self.hits += 1
            return data
        loading = self._loading.get(key)
        if loading is None:

            async def load_one() -> list[Block]:
                return [await load()]

            loading = (self._start([key], load_one), 0)
        task, index = loading
        # Shielded: a reader whose FUSE request is interrupted must not cancel a load
        # other readers (or the read-ahead) are waiting for.
        return (await asyncio.shield(task))[index]

    def missing(self, keys: list[Hashable]) -> list[Hashable]:
        """The keys neither cached nor loading."""
        return [k for k in keys if k not in self._blocks and k not in self._loading]

    def prefetch(self, keys: list[Hashable], load: ManyLoader) -> None:
        """Load several blocks in the background with one call of ``load`` (which returns
        them in order), unless the cache is closing."""
        if not self._closed and keys:
            self._start(keys, load)

    def _start(self, keys: list[Hashable], load: ManyLoader) -> asyncio.Task[list[Block]]:
        self.misses += len(keys)
        task = asyncio.create_task(self._load(keys, load))
        # A failed read-ahead nobody waits for is not worth an "exception never retrieved".
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        for index, key in enumerate(keys):
            self._loading[key] = (task, index)
        return task

    async def _load(self, keys: list[Hashable], load: ManyLoader) -> list[Block]:
        try:
            blocks = await load()
        finally:
            for key in keys:
                self._loading.pop(key, None)
        for key, data in zip(keys, blocks, strict=True):
            self._remember(key, data)
        return blocks

    def _remember(self, key: Hashable, data: Block) -> None:
        if len(data) > self.max_bytes or self._closed:
            return
        self._blocks[key] = data
        self.size += len(data)
        while self.size > self.max_bytes:
            _, evicted = self._blocks.popitem(last=False)
            self.size -= len(evicted)

    async def aclose(self) -> None:
        """Cancel the loads in flight, wait for them, and drop every block."""
        self._closed = True
        tasks = list({task for task, _ in self._loading.values()})
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                log.debug("read-ahead load ended with %r at shutdown", result)
        self._blocks.clear()
        self.size = 0
