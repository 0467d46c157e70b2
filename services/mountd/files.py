"""What a mount shows at a path: committed files read lazily from PFS, local files being written.

``BaseFile`` is a file of a finished commit; its bytes are fetched by block through the
shared ``BlockCache`` with ranged ``get_file`` calls, so reading 4 KiB from the middle
of a 10 GiB file fetches one block (and PFS reads only the chunks under it).
``LocalFile`` is a file written through a read-write mount: its bytes live in a local
temp file until they are uploaded and the commit that holds them is finished.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

from services.mountd.cache import BlockCache
from shared.api.pfs_client import PfsClient
from shared.storage.chunking import ChunkCache, FileEntry, read_range
from shared.storage.objstore import ObjectStore

Kind = Literal["file", "dir"]

DEFAULT_BLOCK_SIZE = 1 << 20
DEFAULT_READ_AHEAD_BLOCKS = 8


@dataclass(frozen=True, slots=True)
class Stat:
    """The attributes a mount reports for one path."""

    kind: Kind
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class BaseFile:
    """A file of a finished commit (possibly shown under another path after a rename)."""

    repo: str
    commit: str
    path: str
    size: int
    mtime_ns: int

    def stat(self) -> Stat:
        return Stat("file", self.size, self.mtime_ns)


@dataclass(eq=False)
class LocalFile:
    """A file written through a rw mount, buffered in a local temp file."""

    # Where the file is in the mount's view; None once unlinked (open handles keep it).
    path: str | None
    fd: int
    mtime_ns: int = field(default_factory=time.time_ns)
    # Written since its last upload into the open commit.
    dirty: bool = True
    # Open handles, and how many of them may write.
    opens: int = 0
    writers: int = 0
    # Held while the file is uploaded, so no write tears the uploaded bytes.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @classmethod
    def create(cls, scratch: str, path: str) -> LocalFile:
        """An empty local file in ``scratch`` (unlinked at once: the fd is its only name)."""
        fd = os.open(scratch, os.O_TMPFILE | os.O_RDWR, 0o600)
        return cls(path=path, fd=fd)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def stat(self) -> Stat:
        return Stat("file", self.size(), self.mtime_ns)

    def read(self, offset: int, size: int) -> bytes:
        # Local page-cache reads take microseconds: not worth a thread hop.
        return os.pread(self.fd, size, offset)

    def write(self, offset: int, data: bytes) -> int:
        written = os.pwrite(self.fd, data, offset)
        self.dirty = True
        self.mtime_ns = time.time_ns()
        return written

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)
        self.dirty = True
        self.mtime_ns = time.time_ns()

    def close_if_unused(self) -> None:
        """Free the temp file once it is neither shown in the view nor open."""
        if self.path is None and self.opens == 0 and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# Chunk lists kept for open and recently read files (each a few hundred bytes).
MAX_REMEMBERED_ENTRIES = 10_000


class BlockSource:
    """Reads committed files by block into a shared ``BlockCache``.

    With ``objects`` (the object store) the bytes come straight from the file's chunks
    (PFS is asked only for the chunk list, once per file): the data plane scales apart
    from the services. Without it, ranged reads go through PFS.
    """

    def __init__(
        self,
        client: PfsClient,
        cache: BlockCache,
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        read_ahead_blocks: int = DEFAULT_READ_AHEAD_BLOCKS,
        objects: ObjectStore | None = None,
        chunks: ChunkCache | None = None,
    ) -> None:
        self.client = client
        self.cache = cache
        self.block_size = block_size
        self.read_ahead_blocks = read_ahead_blocks
        self.objects = objects
        self.chunks = chunks
        # Ranged reads sent (each fetches one or more blocks the cache lacked): with the
        # block cache's hits and misses, what mountd's GET /status shows.
        self.requests = 0
        self._entries: OrderedDict[tuple[str, str], FileEntry] = OrderedDict()

    async def _entry(self, file: BaseFile) -> FileEntry:
        key = (file.commit, file.path)
        entry = self._entries.get(key)
        if entry is None:
            entry = await self.client.file_entry(file.repo, file.commit, file.path)
            self._entries[key] = entry
            if len(self._entries) > MAX_REMEMBERED_ENTRIES:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        return entry

    def _key(self, file: BaseFile, index: int) -> tuple[str, str, int]:
        return (file.commit, file.path, index)

    async def _fetch(self, file: BaseFile, first: int, count: int) -> list[bytes]:
        """Blocks ``first .. first + count - 1`` of the file with one ranged request."""
        self.requests += 1
        bs = self.block_size
        data = bytearray()
        if self.objects is not None:
            entry = await self._entry(file)
            end = min(entry.size, (first + count) * bs)
            async for part in read_range(self.objects, entry, first * bs, end, self.chunks):
                data += part
        else:
            async for part in self.client.get_file(
                file.repo, file.commit, file.path, offset=first * bs, length=count * bs
            ):
                data += part
        return [bytes(data[i : i + bs]) for i in range(0, max(len(data), 1), bs)][:count]

    async def block(self, file: BaseFile, index: int) -> bytes:
        async def load() -> bytes:
            return (await self._fetch(file, index, 1))[0]

        return await self.cache.get(self._key(file, index), load)

    def prefetch(self, file: BaseFile, first: int, count: int) -> None:
        """Load the missing blocks of ``first .. first + count - 1`` in the background,
        one request per run of consecutive missing blocks."""
        last = min(first + count, -(-file.size // self.block_size))
        missing = set(self.cache.missing([self._key(file, i) for i in range(first, last)]))
        run: list[int] = []
        for index in range(first, last + 1):
            if index < last and self._key(file, index) in missing:
                run.append(index)
                continue
            if run:
                start, size = run[0], len(run)

                async def load(start: int = start, size: int = size) -> list[bytes]:
                    return await self._fetch(file, start, size)

                self.cache.prefetch([self._key(file, i) for i in run], load)
                run = []


class BaseReader:
    """One open handle's reads of a ``BaseFile``: blocks from the cache, read-ahead on sequential reads."""

    def __init__(self, file: BaseFile, source: BlockSource) -> None:
        self.file = file
        self.source = source
        self._next_offset = 0
        self._window = 0
        self._run = 0
        # Blocks before this index were asked for already by read-ahead.
        self._ahead_until = 0

    async def read(self, offset: int, size: int) -> bytes:
        end = min(offset + size, self.file.size)
        if offset >= end:
            return b""
        bs = self.source.block_size
        first, last = offset // bs, (end - 1) // bs
        # Read-ahead starts once a reader has gone a whole block sequentially (the
        # kernel's own 128 KiB read-ahead after a seek does not count), then doubles
        # per request up to the limit; a seek drops it. So random 4 KiB reads fetch
        # only the block they touch and streaming reads keep several blocks in flight.
        if offset == self._next_offset:
            self._run += end - offset
        else:
            self._run = end - offset
            self._window = 0
        if self._run > bs:
            self._window = min(max(1, self._window * 2), self.source.read_ahead_blocks)
            # Refill when half the window is used up, so read-ahead goes out as a few
            # multi-block requests rather than one small request per block.
            if last + 1 + self._window // 2 >= self._ahead_until:
                start = max(self._ahead_until, last + 1)
                self.source.prefetch(self.file, start, last + 1 + self._window - start)
                self._ahead_until = last + 1 + self._window
        else:
            self._ahead_until = 0
        self._next_offset = end
        if first == last:
            data = await self.source.block(self.file, first)
            start = offset - first * bs
            return data[start : start + (end - offset)]
        blocks = await asyncio.gather(
            *(self.source.block(self.file, i) for i in range(first, last + 1))
        )
        joined = b"".join(blocks)
        start = offset - first * bs
        return joined[start : start + (end - offset)]
