"""What a mount shows at a path: committed files read lazily from PFS, local files being written.

``BaseFile`` is a file of a finished commit; its bytes are fetched by block through the
shared ``BlockCache`` with ranged ``get_file`` calls, so reading 4 KiB from the middle
of a 10 GiB file fetches one block (and PFS reads only the chunks under it).
``LocalFile`` is a file written through a read-write mount: its bytes live in a local
temp file until they are uploaded and the commit that holds them is finished.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

from services.mountd.cache import Block, BlockCache
from shared.api.pfs_client import PfsClient
from shared.storage.chunking import ChunkCache, ChunkRef, FileEntry, read_range
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


class ChunkMap:
    """Where each chunk of a file starts, so the chunks under a byte range are found by
    bisection (a 1 GiB file has ~800 chunks and is read in thousands of requests)."""

    def __init__(self, entry: FileEntry) -> None:
        self.entry = entry
        self.starts: list[int] = []
        position = 0
        for ref in entry.chunks:
            self.starts.append(position)
            position += ref.length

    def refs(self, start: int, end: int) -> list[ChunkRef]:
        """The parts of chunks holding bytes ``[start, end)``, in order."""
        refs = []
        index = max(bisect.bisect_right(self.starts, start) - 1, 0)
        chunks = self.entry.chunks
        while index < len(chunks) and self.starts[index] < end:
            ref, ref_start = chunks[index], self.starts[index]
            low = max(start, ref_start) - ref_start
            high = min(end, ref_start + ref.length) - ref_start
            if high > low:
                refs.append(ChunkRef(ref.chunk, ref.offset + low, high - low))
            index += 1
        return refs


def cut_blocks(parts: list[bytes], block_size: int) -> list[Block]:
    """The bytes of ``parts`` (in order) as blocks of ``block_size`` (the last may be
    short). A block inside one part is a view of it; only a block that spans parts is
    copied, so a chunk read from the store reaches the kernel without a copy of its own."""
    blocks: list[Block] = []
    pending: list[memoryview] = []
    pending_size = 0
    for part in parts:
        view = memoryview(part)
        while view:
            take = min(block_size - pending_size, len(view))
            pending.append(view[:take])
            pending_size += take
            view = view[take:]
            if pending_size == block_size:
                blocks.append(pending[0] if len(pending) == 1 else b"".join(pending))
                pending, pending_size = [], 0
    if pending or not blocks:
        blocks.append(pending[0] if len(pending) == 1 else b"".join(pending))
    return blocks


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
        self._ranged_reads = 0
        self._entries: OrderedDict[tuple[str, str], ChunkMap] = OrderedDict()
        # Chunks being read ahead: tasks this source owns (``aclose`` ends them).
        self._ahead: dict[str, asyncio.Task[bytes]] = {}

    @property
    def requests(self) -> int:
        """Backend reads sent: ranged reads through PFS, or chunks fetched from the object
        store. With the block cache's hits and misses, what mountd's GET /status shows."""
        return self._ranged_reads + (self.chunks.misses if self.chunks is not None else 0)

    @property
    def reads_chunks(self) -> bool:
        """Whether files are read chunk by chunk from the object store."""
        return self.objects is not None and self.chunks is not None

    async def chunk_map(self, file: BaseFile) -> ChunkMap:
        """The file's chunk list (asked of PFS once per file, then remembered)."""
        key = (file.commit, file.path)
        found = self._entries.get(key)
        if found is None:
            found = ChunkMap(await self.client.file_entry(file.repo, file.commit, file.path))
            self._entries[key] = found
            if len(self._entries) > MAX_REMEMBERED_ENTRIES:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        return found

    async def chunk(self, chunk: str) -> bytes:
        """One chunk's plain bytes, from the chunk cache or the object store."""
        assert self.objects is not None and self.chunks is not None
        return await self.chunks.get(self.objects, chunk)

    def prefetch_chunks(self, refs: list[ChunkRef]) -> None:
        """Load the chunks of ``refs`` into the chunk cache in the background."""
        assert self.objects is not None and self.chunks is not None
        for ref in refs:
            if ref.chunk in self.chunks or ref.chunk in self._ahead:
                continue
            task = asyncio.create_task(self.chunks.get(self.objects, ref.chunk))
            self._ahead[ref.chunk] = task
            task.add_done_callback(self._ahead_done)

    def _ahead_done(self, task: asyncio.Task[bytes]) -> None:
        for chunk, running in list(self._ahead.items()):
            if running is task:
                del self._ahead[chunk]
        # A failed read-ahead is reported by the read that needs the chunk, if any.
        if not task.cancelled():
            task.exception()

    async def aclose(self) -> None:
        """Cancel the chunks being read ahead and wait for them."""
        tasks = list(self._ahead.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _entry(self, file: BaseFile) -> FileEntry:
        return (await self.chunk_map(file)).entry

    def _key(self, file: BaseFile, index: int) -> tuple[str, str, int]:
        return (file.commit, file.path, index)

    async def _fetch(self, file: BaseFile, first: int, count: int) -> list[Block]:
        """Blocks ``first .. first + count - 1`` of the file with one ranged request."""
        self._ranged_reads += 1
        bs = self.block_size
        parts: list[bytes] = []
        if self.objects is not None:
            entry = await self._entry(file)
            end = min(entry.size, (first + count) * bs)
            async for part in read_range(self.objects, entry, first * bs, end, self.chunks):
                parts.append(part)
        else:
            async for part in self.client.get_file(
                file.repo, file.commit, file.path, offset=first * bs, length=count * bs
            ):
                parts.append(part)
        return cut_blocks(parts, bs)[:count]

    async def block(self, file: BaseFile, index: int) -> Block:
        async def load() -> Block:
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

                async def load(start: int = start, size: int = size) -> list[Block]:
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

    async def read(self, offset: int, size: int) -> Block:
        """Bytes ``[offset, offset + size)``: a view into a cached block when they lie in one
        (pyfuse3 replies from any buffer, so nothing is copied on the way to the kernel)."""
        end = min(offset + size, self.file.size)
        if offset >= end:
            return b""
        if self.source.reads_chunks:
            return await self._read_chunks(offset, end)
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
        start = offset - first * bs
        if first == last:
            data = await self.source.block(self.file, first)
            return memoryview(data)[start : start + (end - offset)]
        blocks = await asyncio.gather(
            *(self.source.block(self.file, i) for i in range(first, last + 1))
        )
        return memoryview(b"".join(blocks))[start : start + (end - offset)]

    async def _read_chunks(self, offset: int, end: int) -> Block:
        """The bytes straight from the chunks that hold them: no blocks in between, so a
        request inside one chunk is answered with a view of the cached chunk. Read-ahead
        as for blocks (it grows on sequential reads, a seek drops it), in whole chunks."""
        source = self.source
        chunks = await source.chunk_map(self.file)
        if offset == self._next_offset:
            self._run += end - offset
        else:
            self._run = end - offset
            self._window = 0
            self._ahead_until = 0
        self._next_offset = end
        if self._run > source.block_size:
            self._window = min(max(1, self._window * 2), source.read_ahead_blocks)
            ahead_end = min(self.file.size, end + self._window * source.block_size)
            if ahead_end > self._ahead_until:
                source.prefetch_chunks(chunks.refs(max(end, self._ahead_until), ahead_end))
                self._ahead_until = ahead_end
        refs = chunks.refs(offset, end)
        if len(refs) == 1:
            [ref] = refs
            return memoryview(await source.chunk(ref.chunk))[ref.offset : ref.offset + ref.length]
        datas = await asyncio.gather(*(source.chunk(ref.chunk) for ref in refs))
        return b"".join(
            memoryview(data)[ref.offset : ref.offset + ref.length]
            for data, ref in zip(datas, refs, strict=True)
        )
