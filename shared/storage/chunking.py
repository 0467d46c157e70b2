"""The chunk store: files cut into content-defined chunks, stored once by their BLAKE3 name.

Writing: a ``PackWriter`` takes the files of one upload as a single byte stream and
cuts it with FastCDC (average 1 MiB, min 256 KiB, max 4 MiB), so 10,000 tiny files
become a handful of chunks and each file is a list of ``ChunkRef`` byte ranges into
them. A chunk is named by the BLAKE3-256 hex digest of its plain bytes, compressed
with zstd unless a sample says it will not shrink (``chunk_codec``), and stored at
``chunks/<first 2 hex>/<hash>`` unless that key already exists, so identical content
is stored once however often it is written.

Streaming: cut points are found as data arrives. FastCDC decides a cut from at most
``max_size`` bytes after the chunk's start, so every chunk but the last one of the
buffer is final; the tail is kept and cut again with the next data. The result is
identical to cutting the whole stream at once, and memory stays bounded (a buffer of
``2 × max_size`` plus a few chunks in flight) for any file size. Hashing, compression
and uploads run in worker threads (blake3, zstd and the FastCDC cutter release the
GIL), with a bounded number of chunks in flight.

The file hash: ``FileEntry.hash`` is the BLAKE3 of the file's bytes, so the same bytes
always have the same hash however they were written (one put, many writes, packed
with other files, or appended). BLAKE3 of ``a + b`` cannot be derived from the hashes
of ``a`` and ``b``, so ``concat_entries`` (``put file --append``) re-reads both parts
to hash them; it stores no new chunk, only joins the references. Re-reading runs at
chunk-read speed (GB/s locally), a price paid only by appends.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import blake3
from pyfastcdc import FastCDC

from shared.platform.errors import (
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    TooLarge,
)
from shared.storage.chunk_codec import decode_chunk, encode_chunk, is_raw
from shared.storage.objstore import ObjectStore

AVG_CHUNK_SIZE = 1 << 20
MIN_CHUNK_SIZE = 256 << 10
MAX_CHUNK_SIZE = 4 << 20
# Plain bytes of chunks being hashed, compressed or stored at once per writer: enough to
# keep 2 cores and a disk busy while fsyncs wait (~20 average chunks), little enough
# that memory stays at tens of MiB.
MAX_BYTES_IN_FLIGHT = 24 << 20
# Chunk objects written at once per writer: the disk works on several files while the
# CPU encodes the next, and fsyncs overlap (each waits ~1 ms on this disk).
MAX_PARALLEL_WRITES = 8
# Chunks fetched ahead of the one being yielded by ``read_range``: enough to keep the
# disk busy on cold reads (1 GiB from a dropped page cache: 1.6-1.8 s with 8, 2.2-2.4 s
# with 2), ~10 MiB per reader.
READ_AHEAD_CHUNKS = 8
# Writes at least this big are hashed in a worker thread, beside the cutting.
_THREAD_HASH_MIN = 256 << 10

EMPTY_HASH: str = blake3.blake3(b"").hexdigest()


def hash_bytes(data: bytes | bytearray | memoryview) -> str:
    """BLAKE3-256 hex digest of ``data``: the name of a chunk and the hash of a file."""
    return blake3.blake3(data).hexdigest()


CHUNK_PREFIX = "chunks/"


def chunk_key(chunk: str) -> str:
    """Object-store key of the chunk named ``chunk``."""
    return f"{CHUNK_PREFIX}{chunk[:2]}/{chunk}"


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """The byte range ``[offset, offset + length)`` of one chunk's plain bytes."""

    chunk: str
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class FileEntry:
    """A stored file: its size, the BLAKE3 of its bytes, and the chunk ranges that hold them."""

    size: int
    hash: str
    chunks: tuple[ChunkRef, ...]

    def to_json(self) -> dict[str, Any]:
        """Compact JSON form: ``{"size", "hash", "chunks": [[chunk, offset, length], ...]}``."""
        return {
            "size": self.size,
            "hash": self.hash,
            "chunks": [[ref.chunk, ref.offset, ref.length] for ref in self.chunks],
        }

    @classmethod
    def from_json(cls, data: Any) -> FileEntry:
        """Parse ``to_json`` output; raise ``InvalidArgument`` on a malformed value."""
        try:
            size, file_hash, raw_chunks = data["size"], data["hash"], data["chunks"]
            chunks = tuple(ChunkRef(str(c), int(o), int(n)) for c, o, n in raw_chunks)
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"malformed file entry {data!r}: {exc}") from None
        if not isinstance(size, int) or not isinstance(file_hash, str):
            raise InvalidArgument(f"malformed file entry {data!r}: bad size or hash")
        if sum(ref.length for ref in chunks) != size:
            raise InvalidArgument(f"malformed file entry: chunk lengths do not add up to {size}")
        return cls(size, file_hash, chunks)


EMPTY_FILE = FileEntry(0, EMPTY_HASH, ())


def _hash_and_encode(data: memoryview) -> tuple[str, bytes]:
    return hash_bytes(data), encode_chunk(data)


class StreamCutter:
    """Cuts a stream fed piece by piece into exactly the chunks FastCDC finds in the whole stream.

    Pure computation, no I/O. ``append`` is cheap; ``take_final_chunks`` (the heavy part,
    safe to run in a worker thread while nothing else touches the cutter) returns the
    chunks that more data cannot change, and ``take_rest`` the remainder at the end.

    The bytes are copied once: the pieces are joined when a cut is taken, and the chunks
    returned are read-only views into that joined buffer (it lives as long as one of them
    does). Pieces the caller may still change (a ``bytearray``, a writable view) are
    copied when appended; ``bytes`` are kept as they are.
    """

    def __init__(
        self,
        avg_size: int = AVG_CHUNK_SIZE,
        min_size: int = MIN_CHUNK_SIZE,
        max_size: int = MAX_CHUNK_SIZE,
    ) -> None:
        self._fastcdc = FastCDC(avg_size, min_size=min_size, max_size=max_size)
        self._pieces: list[bytes | memoryview] = []
        self._size = 0
        # With 2 × max_size buffered, at least one chunk is final on every cut.
        self.ready_size = 2 * max_size

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes to the end of the stream."""
        if not isinstance(data, bytes) and not (isinstance(data, memoryview) and data.readonly):
            data = bytes(data)
        if data:
            self._pieces.append(data)
            self._size += len(data)

    def ready(self) -> bool:
        """Whether enough bytes are buffered to make cutting worthwhile."""
        return self._size >= self.ready_size

    def take_final_chunks(self) -> list[memoryview]:
        """Remove and return the chunks of the buffer whose end more data cannot move."""
        return self._take(keep_last=True)

    def take_rest(self) -> list[memoryview]:
        """Remove and return every buffered chunk: the stream has ended."""
        return self._take(keep_last=False)

    def _take(self, *, keep_last: bool) -> list[memoryview]:
        if not self._pieces:
            return []
        joined = self._pieces[0] if len(self._pieces) == 1 else b"".join(self._pieces)
        view = memoryview(joined).cast("B")
        lengths = [chunk.length for chunk in self._fastcdc.cut_buf(view)]
        if keep_last and lengths:
            lengths.pop()
        chunks = []
        offset = 0
        for length in lengths:
            chunks.append(view[offset : offset + length])
            offset += length
        rest = view[offset:]
        self._pieces = [rest] if len(rest) else []
        self._size = len(rest)
        return chunks


class _ByteBudget:
    """A semaphore counted in bytes: ``acquire(n)`` waits (first come, first served) until
    ``n`` more bytes fit. A request bigger than the whole budget goes through alone."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def _fits(self, size: int) -> bool:
        return self.used == 0 or self.used + size <= self.limit

    async def acquire(self, size: int) -> None:
        if not self._waiters and self._fits(size):
            self.used += size
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((size, granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release(size)  # granted just as we were cancelled: hand it back
            else:
                self._waiters.remove((size, granted))
            raise

    def release(self, size: int) -> None:
        self.used -= size
        while self._waiters and self._fits(self._waiters[0][0]):
            wanted, granted = self._waiters.popleft()
            self.used += wanted
            granted.set_result(None)


class PackWriter:
    """Writes many files as one stream, cut by FastCDC; memory stays bounded for any file size.

    Use: ``start_file()``, ``await write(...)`` any number of times, ``end_file()``; repeat;
    then ``await close()`` returns one ``FileEntry`` per file, in order. Nothing is
    returned for an upload that is not closed: ``abort()`` (or leaving ``async with``
    on an error) stops the work in flight. Chunks already stored stay, unreferenced,
    for garbage collection. One writer serves one task; it is not for concurrent use.

    Statistics after close: ``chunks_written``, ``bytes_written`` (stored bytes newly
    written), ``chunks_raw`` (of the written, those kept uncompressed: their sample did
    not compress), ``chunks_deduplicated`` (chunks already in the store or in this pack)
    and ``bytes_in`` (plain bytes written).
    """

    def __init__(
        self,
        store: ObjectStore,
        *,
        avg_size: int = AVG_CHUNK_SIZE,
        min_size: int = MIN_CHUNK_SIZE,
        max_size: int = MAX_CHUNK_SIZE,
        max_file_bytes: int | None = None,
        max_bytes_in_flight: int = MAX_BYTES_IN_FLIGHT,
        max_parallel_writes: int = MAX_PARALLEL_WRITES,
    ) -> None:
        self._store = store
        self._writes = asyncio.Semaphore(max_parallel_writes)
        self._cutter = StreamCutter(avg_size, min_size, max_size)
        self._max_file_bytes = max_file_bytes
        self._budget = _ByteBudget(max_bytes_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._failure: BaseException | None = None
        self._closed = False
        # The stream: chunk i covers [_chunk_starts[i], + _chunk_lengths[i]).
        self._stream_size = 0
        self._cut_size = 0
        self._chunk_starts: list[int] = []
        self._chunk_lengths: list[int] = []
        self._chunk_hashes: list[str] = []
        self._known_chunks: set[str] = set()
        # The files: (start, end, hash) in stream offsets.
        self._files: list[tuple[int, int, str]] = []
        self._file_start: int | None = None
        self._file_hasher: Any = None
        self.chunks_written = 0
        self.bytes_written = 0
        self.chunks_deduplicated = 0
        self.chunks_raw = 0
        self.bytes_in = 0

    async def __aenter__(self) -> PackWriter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if not self._closed:
            await self.abort()

    def _check_open(self) -> None:
        if self._closed:
            raise FailedPrecondition("this pack writer is already closed")
        if self._failure is not None:
            raise self._failure

    def start_file(self) -> None:
        """Begin the next file of the pack."""
        self._check_open()
        if self._file_start is not None:
            raise FailedPrecondition("a file is already open in this pack; end it first")
        self._file_start = self._stream_size
        self._file_hasher = blake3.blake3()

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` to the current file; raise ``TooLarge`` past ``max_file_bytes``."""
        self._check_open()
        if self._file_start is None:
            raise FailedPrecondition("write() outside a file: call start_file() first")
        size = len(data)
        file_size = self._stream_size - self._file_start + size
        if self._max_file_bytes is not None and file_size > self._max_file_bytes:
            raise TooLarge(f"file is larger than the limit of {self._max_file_bytes} bytes")
        self._stream_size += size
        self.bytes_in += size
        view = memoryview(data)
        if size < _THREAD_HASH_MIN:
            self._file_hasher.update(view)
            await self._feed(view)
            return
        # Hash the file and cut the stream at the same time, on the two cores.
        async with asyncio.TaskGroup() as group:
            group.create_task(asyncio.to_thread(self._file_hasher.update, view))
            group.create_task(self._feed(view))

    async def _feed(self, view: memoryview) -> None:
        # In slices, so a single huge write does not grow the buffer beyond its bound.
        step = self._cutter.ready_size
        for offset in range(0, len(view), step):
            self._cutter.append(view[offset : offset + step])
            if self._cutter.ready():
                await self._submit(await asyncio.to_thread(self._cutter.take_final_chunks))

    def end_file(self) -> int:
        """Finish the current file; return its index in this pack."""
        self._check_open()
        if self._file_start is None:
            raise FailedPrecondition("end_file() without start_file()")
        self._files.append((self._file_start, self._stream_size, self._file_hasher.hexdigest()))
        self._file_start = None
        self._file_hasher = None
        return len(self._files) - 1

    async def close(self) -> list[FileEntry]:
        """Store the remaining chunks, wait for every upload, and return the files' entries."""
        self._check_open()
        if self._file_start is not None:
            raise FailedPrecondition("close() with a file still open: call end_file() first")
        try:
            await self._submit(await asyncio.to_thread(self._cutter.take_rest))
            while self._tasks:
                await asyncio.wait(set(self._tasks))
            if self._failure is not None:
                raise self._failure
        except BaseException:
            await self.abort()
            raise
        self._closed = True
        return [self._entry(start, end, file_hash) for start, end, file_hash in self._files]

    async def abort(self) -> None:
        """Stop: cancel the chunks in flight, wait for them, and return no entries."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _submit(self, chunks: list[memoryview]) -> None:
        chunks.reverse()
        while chunks:
            # Popped, so a chunk's bytes live only as long as its task needs them.
            data = chunks.pop()
            if self._failure is not None:
                raise self._failure
            index = len(self._chunk_starts)
            self._chunk_starts.append(self._cut_size)
            self._chunk_lengths.append(len(data))
            self._chunk_hashes.append("")
            self._cut_size += len(data)
            # Waiting for budget is the back-pressure that keeps memory flat.
            await self._budget.acquire(len(data))
            task = asyncio.create_task(self._store_chunk(index, data))
            self._tasks.add(task)
            task.add_done_callback(self._chunk_done)

    def _chunk_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self._failure is None:
            self._failure = task.exception()

    async def _store_chunk(self, index: int, data: memoryview) -> None:
        size = len(data)
        try:
            # Encoding before asking the store wastes a little CPU on duplicates but saves
            # a thread hop per chunk: raw chunks cost a copy, compressible ones zstd level 1.
            chunk, blob = await asyncio.to_thread(_hash_and_encode, data)
            data.release()  # the cut buffer can go once all its chunks are encoded
            self._chunk_hashes[index] = chunk
            if chunk in self._known_chunks:
                self.chunks_deduplicated += 1
                return
            self._known_chunks.add(chunk)
            key = chunk_key(chunk)
            if await self._store.exists(key):
                self.chunks_deduplicated += 1
                return
            async with self._writes:
                await self._store.put(key, blob)
            self.chunks_written += 1
            self.bytes_written += len(blob)
            if is_raw(blob):
                self.chunks_raw += 1
        finally:
            self._budget.release(size)

    def _entry(self, start: int, end: int, file_hash: str) -> FileEntry:
        if start == end:
            return EMPTY_FILE
        refs = []
        index = bisect.bisect_right(self._chunk_starts, start) - 1
        position = start
        while position < end:
            chunk_start = self._chunk_starts[index]
            piece_end = min(end, chunk_start + self._chunk_lengths[index])
            refs.append(
                ChunkRef(self._chunk_hashes[index], position - chunk_start, piece_end - position)
            )
            position = piece_end
            index += 1
        return FileEntry(end - start, file_hash, tuple(refs))


async def missing_chunks(
    store: ObjectStore, chunks: Iterable[str], *, concurrency: int = 32
) -> set[str]:
    """The chunks of ``chunks`` the store does not hold. One ``exists`` per distinct chunk,
    ``concurrency`` of them in flight: k chunks cost k requests but about k / concurrency
    round trips of waiting."""
    distinct = set(chunks)
    todo = iter(distinct)
    missing: set[str] = set()

    async def check() -> None:
        for chunk in todo:  # the workers share one iterator: each chunk is checked once
            if not await store.exists(chunk_key(chunk)):
                missing.add(chunk)

    async with asyncio.TaskGroup() as group:
        for _ in range(min(concurrency, len(distinct))):
            group.create_task(check())
    return missing


async def load_chunk(store: ObjectStore, chunk: str) -> bytes:
    """Fetch, decompress and verify one chunk's plain bytes; ``DataLoss`` if it is corrupt."""
    blob = await store.get(chunk_key(chunk))
    return await asyncio.to_thread(decode_chunk, chunk, blob)


class ChunkCache:
    """An LRU of decompressed chunks bounded by their total size, shared by readers of one loop.

    Concurrent misses of one chunk fetch it once; the others wait for that fetch.
    A chunk bigger than the whole cache is returned but not kept.
    """

    def __init__(self, max_bytes: int = 128 << 20) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self.hits = 0
        self.misses = 0
        self._chunks: OrderedDict[str, bytes] = OrderedDict()
        self._loading: dict[str, asyncio.Future[bytes]] = {}
        # Forgotten while a load of them was in flight: that load is not kept.
        self._stale: set[str] = set()

    def __contains__(self, chunk: str) -> bool:
        return chunk in self._chunks

    def forget(self, keys: Iterable[str]) -> None:
        """Drop the chunks stored under ``keys`` (other keys are ignored): they are being
        deleted, so "it is cached, hence stored" must not be concluded from this cache."""
        for key in keys:
            if not key.startswith(CHUNK_PREFIX):
                continue
            chunk = key.rsplit("/", 1)[-1]
            data = self._chunks.pop(chunk, None)
            if data is not None:
                self.size -= len(data)
            if chunk in self._loading:
                self._stale.add(chunk)

    async def get(self, store: ObjectStore, chunk: str) -> bytes:
        """Return the chunk's plain bytes, from memory or from the store."""
        while True:
            data = self._chunks.get(chunk)
            if data is not None:
                self._chunks.move_to_end(chunk)
                self.hits += 1
                return data
            loading = self._loading.get(chunk)
            if loading is None:
                return await self._load(store, chunk)
            try:
                return await asyncio.shield(loading)
            except asyncio.CancelledError:
                # The loader was cancelled, not us: try again (we may become the loader).
                current = asyncio.current_task()
                if not loading.cancelled() or (current is not None and current.cancelling()):
                    raise

    async def _load(self, store: ObjectStore, chunk: str) -> bytes:
        self.misses += 1
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        # Waiters read the outcome; without any, do not log "exception never retrieved".
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._loading[chunk] = future
        try:
            data = await load_chunk(store, chunk)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            raise
        finally:
            del self._loading[chunk]
        future.set_result(data)
        self._remember(chunk, data)
        return data

    def _remember(self, chunk: str, data: bytes) -> None:
        if chunk in self._stale:
            self._stale.discard(chunk)
            return
        if len(data) > self.max_bytes:
            return
        self._chunks[chunk] = data
        self.size += len(data)
        while self.size > self.max_bytes:
            _, evicted = self._chunks.popitem(last=False)
            self.size -= len(evicted)


@dataclass(frozen=True, slots=True)
class _Piece:
    chunk: str
    start: int
    end: int


def _pieces(entry: FileEntry, start: int, end: int) -> list[_Piece]:
    """The parts of chunks that hold bytes ``[start, end)`` of the file, in order."""
    pieces = []
    position = 0
    for ref in entry.chunks:
        ref_start, ref_end = position, position + ref.length
        position = ref_end
        if ref_end <= start:
            continue
        if ref_start >= end:
            break
        low = ref.offset + max(start, ref_start) - ref_start
        high = ref.offset + min(end, ref_end) - ref_start
        pieces.append(_Piece(ref.chunk, low, high))
    return pieces


async def read_range(
    store: ObjectStore,
    entry: FileEntry,
    start: int = 0,
    end: int | None = None,
    cache: ChunkCache | None = None,
    *,
    path: str | None = None,
) -> AsyncIterator[bytes]:
    """Yield the bytes ``[start, end)`` of a file (clipped to its size), fetching only the
    chunks that hold them, a few ahead of the one being yielded.

    A chunk missing from the store raises ``DataLoss`` ("data corrupted: chunk … of
    ``path`` is missing"), not ``NotFound``: the file exists, its bytes are lost.
    """
    if start < 0 or (end is not None and end < start):
        raise InvalidArgument(f"invalid byte range [{start}, {end})")
    end = entry.size if end is None else min(end, entry.size)
    if start >= end:
        return
    pieces = _pieces(entry, start, end)

    async def fetch(chunk: str) -> bytes:
        try:
            if cache is not None:
                return await cache.get(store, chunk)
            return await load_chunk(store, chunk)
        except NotFound:
            raise DataLoss(
                f"data corrupted: chunk {chunk} of {path or 'a file'} is missing "
                "from the object store"
            ) from None

    # Fetches for pieces i .. i + READ_AHEAD_CHUNKS; neighbours of one chunk share a fetch.
    fetches: dict[int, asyncio.Task[bytes]] = {}

    def launch(index: int) -> None:
        if index >= len(pieces) or index in fetches:
            return
        previous = fetches.get(index - 1)
        if previous is not None and pieces[index - 1].chunk == pieces[index].chunk:
            fetches[index] = previous
        else:
            fetches[index] = asyncio.create_task(fetch(pieces[index].chunk))

    try:
        for index, piece in enumerate(pieces):
            for ahead in range(index, index + 1 + READ_AHEAD_CHUNKS):
                launch(ahead)
            data = await fetches.pop(index)
            if piece.start == 0 and piece.end == len(data):
                yield data
            else:
                yield data[piece.start : piece.end]
    finally:
        pending = set(fetches.values())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def read_all(store: ObjectStore, entry: FileEntry, cache: ChunkCache | None = None) -> bytes:
    """The whole file in memory (for small files and tests)."""
    return b"".join([piece async for piece in read_range(store, entry, cache=cache)])


async def write_files(store: ObjectStore, contents: Iterable[bytes]) -> list[FileEntry]:
    """Store several in-memory files as one pack and return their entries."""
    async with PackWriter(store) as writer:
        for data in contents:
            writer.start_file()
            await writer.write(data)
            writer.end_file()
        return await writer.close()


def _join_refs(first: tuple[ChunkRef, ...], second: tuple[ChunkRef, ...]) -> tuple[ChunkRef, ...]:
    if first and second:
        last, head = first[-1], second[0]
        if last.chunk == head.chunk and last.offset + last.length == head.offset:
            joined = ChunkRef(last.chunk, last.offset, last.length + head.length)
            return (*first[:-1], joined, *second[1:])
    return first + second


async def concat_entries(
    store: ObjectStore, a: FileEntry, b: FileEntry, cache: ChunkCache | None = None
) -> FileEntry:
    """The file ``a`` followed by ``b`` (``put file --append``): no chunk is written; both
    parts are read once to compute the BLAKE3 of the joined bytes."""
    if a.size == 0:
        return b
    if b.size == 0:
        return a
    hasher = blake3.blake3()
    for part in (a, b):
        async for piece in read_range(store, part, cache=cache):
            if len(piece) >= _THREAD_HASH_MIN:
                await asyncio.to_thread(hasher.update, piece)
            else:
                hasher.update(piece)
    return FileEntry(a.size + b.size, hasher.hexdigest(), _join_refs(a.chunks, b.chunks))


def slice_refs(entry: FileEntry, start: int, end: int) -> tuple[ChunkRef, ...]:
    """The chunk ranges holding bytes ``[start, end)`` of a file: a part of it by reference."""
    return tuple(
        ChunkRef(piece.chunk, piece.start, piece.end - piece.start)
        for piece in _pieces(entry, start, end)
    )


async def join_entries(
    store: ObjectStore, parts: Iterable[FileEntry], cache: ChunkCache | None = None
) -> FileEntry:
    """The parts one after another (a multipart upload completed): their chunk ranges
    joined, no chunk written; every part is read once to hash the whole, since a BLAKE3
    cannot be derived from the parts' hashes."""
    hasher = blake3.blake3()
    refs: list[ChunkRef] = []
    size = 0
    for part in parts:
        async for piece in read_range(store, part, cache=cache):
            if len(piece) >= _THREAD_HASH_MIN:
                await asyncio.to_thread(hasher.update, piece)
            else:
                hasher.update(piece)
        for ref in part.chunks:
            last = refs[-1] if refs else None
            if last and last.chunk == ref.chunk and last.offset + last.length == ref.offset:
                refs[-1] = ChunkRef(last.chunk, last.offset, last.length + ref.length)
            else:
                refs.append(ref)
        size += part.size
    if size == 0:
        return EMPTY_FILE
    return FileEntry(size, hasher.hexdigest(), tuple(refs))


__all__ = [
    "AVG_CHUNK_SIZE",
    "EMPTY_FILE",
    "EMPTY_HASH",
    "MAX_CHUNK_SIZE",
    "MIN_CHUNK_SIZE",
    "ChunkCache",
    "ChunkRef",
    "FileEntry",
    "PackWriter",
    "StreamCutter",
    "chunk_key",
    "concat_entries",
    "hash_bytes",
    "join_entries",
    "load_chunk",
    "read_all",
    "read_range",
    "slice_refs",
    "write_files",
]
