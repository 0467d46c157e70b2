"""The chunk store: packing, content-defined cuts, dedup, range reads and bounded memory."""

from __future__ import annotations

import asyncio
import random
import tracemalloc
from pathlib import Path

import blake3
import pytest
from pyfastcdc import FastCDC

from shared.platform.config import Config
from shared.platform.errors import FailedPrecondition, Internal, InvalidArgument, TooLarge
from shared.storage.chunking import (
    EMPTY_FILE,
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
    READ_AHEAD_CHUNKS,
    ChunkCache,
    ChunkRef,
    FileEntry,
    PackWriter,
    StreamCutter,
    chunk_key,
    concat_entries,
    read_all,
    read_range,
    write_files,
)
from shared.storage.objstore import open_object_store
from tests.fixtures.counting_store import CountingStore

MiB = 1 << 20


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


async def test_big_file_round_trips_with_its_blake3_hash(store: CountingStore) -> None:
    data = random_bytes(20 * MiB + 12345, seed=1)
    [entry] = await write_files(store, [data])
    assert entry.size == len(data)
    assert entry.hash == blake3.blake3(data).hexdigest()
    assert await read_all(store, entry) == data
    lengths = [ref.length for ref in entry.chunks]
    assert all(MIN_CHUNK_SIZE <= n <= MAX_CHUNK_SIZE for n in lengths[:-1])
    assert 5 <= len(lengths) <= 40
    assert store.count_puts("chunks/") == len({ref.chunk for ref in entry.chunks})


async def test_ten_thousand_small_files_pack_into_a_few_chunks(store: CountingStore) -> None:
    files = [random_bytes(1024, seed=i) for i in range(10_000)]
    entries = await write_files(store, files)
    # 10 MiB in ~1.25 MiB chunks: a handful of objects, not 10,000.
    assert 4 <= store.count_puts() <= 16
    assert store.count_puts() == store.count_puts("chunks/")
    assert len(entries) == len(files)
    for index in (0, 1, 4321, 9999):
        assert await read_all(store, entries[index]) == files[index]
        assert entries[index].hash == blake3.blake3(files[index]).hexdigest()
    # Most small files sit inside one chunk; a few straddle a cut.
    assert sum(len(entry.chunks) for entry in entries) < 10_000 + 20


async def test_empty_files_are_the_empty_entry(store: CountingStore) -> None:
    entries = await write_files(store, [b"", b"abc", b""])
    assert entries[0] == entries[2] == EMPTY_FILE
    assert EMPTY_FILE.hash == blake3.blake3(b"").hexdigest()
    assert await read_all(store, EMPTY_FILE) == b""
    assert await read_all(store, entries[1]) == b"abc"
    assert await write_files(store, []) == []


async def test_identical_content_is_stored_once(store: CountingStore) -> None:
    data = random_bytes(12 * MiB, seed=2)
    async with PackWriter(store) as first:
        first.start_file()
        await first.write(data)
        first.end_file()
        [entry_one] = await first.close()
    written = store.bytes_written("chunks/")
    async with PackWriter(store) as second:
        second.start_file()
        await second.write(data)
        second.end_file()
        [entry_two] = await second.close()
    assert entry_one == entry_two
    assert second.chunks_written == 0 and second.bytes_written == 0
    assert second.chunks_deduplicated == len(entry_two.chunks)
    assert store.bytes_written("chunks/") == written


async def test_repeated_content_inside_one_pack_is_stored_once(store: CountingStore) -> None:
    async with PackWriter(store) as writer:
        for _ in range(3):
            writer.start_file()
            await writer.write(b"\0" * (16 * MiB))
            writer.end_file()
        entries = await writer.close()
    # Zeros have no cut point: every chunk is max-size and identical, so one object.
    assert store.count_puts("chunks/") <= 2
    assert writer.chunks_deduplicated >= 10
    assert await read_all(store, entries[1]) == b"\0" * (16 * MiB)


def test_streaming_cut_equals_cutting_the_whole_stream() -> None:
    data = random_bytes(40 * MiB, seed=3)
    whole = [
        bytes(c.data) for c in FastCDC(1 * MiB, min_size=256 << 10, max_size=4 * MiB).cut_buf(data)
    ]
    rng = random.Random(4)
    cutter = StreamCutter()
    streamed: list[bytes | memoryview] = []
    position = 0
    while position < len(data):
        size = rng.choice([1, 7, 4096, 65536, rng.randrange(1, 9 * MiB)])
        cutter.append(data[position : position + size])
        position += size
        if cutter.ready():
            streamed.extend(cutter.take_final_chunks())
    streamed.extend(cutter.take_rest())
    assert [len(c) for c in streamed] == [len(c) for c in whole]
    assert streamed == whole


async def test_pack_writer_cuts_like_the_whole_stream_for_any_write_sizes(
    store: CountingStore,
) -> None:
    files = [
        random_bytes(size, seed=10 + i) for i, size in enumerate([3 * MiB, 17, 9 * MiB, 0, 5 * MiB])
    ]
    stream = b"".join(files)
    expected = [
        blake3.blake3(c.data).hexdigest()
        for c in FastCDC(1 * MiB, min_size=256 << 10, max_size=4 * MiB).cut_buf(stream)
    ]
    rng = random.Random(5)
    async with PackWriter(store) as writer:
        for data in files:
            writer.start_file()
            position = 0
            while position < len(data):
                size = rng.randrange(1, 3 * MiB)
                await writer.write(data[position : position + size])
                position += size
            writer.end_file()
        entries = await writer.close()
    seen: list[str] = []
    for entry in entries:
        for ref in entry.chunks:
            if not seen or seen[-1] != ref.chunk:
                seen.append(ref.chunk)
    assert seen == expected
    for entry, data in zip(entries, files, strict=True):
        assert await read_all(store, entry) == data


async def test_range_reads_fetch_only_the_chunks_they_need(store: CountingStore) -> None:
    data = random_bytes(32 * MiB, seed=6)
    [entry] = await write_files(store, [data])
    rng = random.Random(7)
    ranges = [(0, 10), (len(data) - 5, len(data)), (5 * MiB, 5 * MiB + 1)]
    ranges += [tuple(sorted(rng.sample(range(len(data)), 2))) for _ in range(6)]
    for start, end in ranges:
        store.reset()
        got = b"".join([piece async for piece in read_range(store, entry, start, end)])
        assert got == data[start:end]
        offsets = [0]
        for ref in entry.chunks:
            offsets.append(offsets[-1] + ref.length)
        needed = sum(
            1 for i in range(len(entry.chunks)) if offsets[i] < end and offsets[i + 1] > start
        )
        assert store.count_gets("chunks/") == needed
    store.reset()
    assert [p async for p in read_range(store, entry, 100, 100)] == []
    assert (
        b"".join([p async for p in read_range(store, entry, len(data) - 3, len(data) + 50)])
        == data[-3:]
    )
    assert store.count_gets() == 1
    with pytest.raises(InvalidArgument):
        _ = [p async for p in read_range(store, entry, 10, 5)]


async def test_abandoned_range_read_cancels_its_read_ahead(store: CountingStore) -> None:
    data = random_bytes(24 * MiB, seed=8)
    [entry] = await write_files(store, [data])
    store.reset()
    reader = read_range(store, entry)
    first = await anext(reader)
    assert first == data[: len(first)]
    await reader.aclose()
    tasks_left = [
        t for t in asyncio.all_tasks() if t is not asyncio.current_task() and "fetch" in repr(t)
    ]
    assert tasks_left == []
    # The chunk yielded and its read-ahead, not the file's ~19 chunks.
    assert store.count_gets() <= 1 + READ_AHEAD_CHUNKS < len(entry.chunks)


async def test_upload_aborted_mid_file_returns_nothing_and_stops(store: CountingStore) -> None:
    writer = PackWriter(store)
    with pytest.raises(RuntimeError, match="client went away"):
        async with writer:
            writer.start_file()
            await writer.write(b"complete file")
            writer.end_file()
            writer.start_file()
            await writer.write(random_bytes(30 * MiB, seed=9))
            raise RuntimeError("client went away")
    assert writer._tasks == set()
    with pytest.raises(FailedPrecondition):
        await writer.write(b"more")
    with pytest.raises(FailedPrecondition):
        await writer.close()
    # Every object written is a whole chunk under its name: no partial files, no entries.
    async for key in store.list(""):
        assert key.startswith("chunks/")


async def test_write_past_max_file_bytes_is_too_large(store: CountingStore) -> None:
    async with PackWriter(store, max_file_bytes=1000) as writer:
        writer.start_file()
        await writer.write(b"x" * 600)
        with pytest.raises(TooLarge, match="1000"):
            await writer.write(b"x" * 401)


async def test_write_outside_a_file_is_refused(store: CountingStore) -> None:
    async with PackWriter(store) as writer:
        with pytest.raises(FailedPrecondition):
            await writer.write(b"x")
        writer.start_file()
        with pytest.raises(FailedPrecondition):
            writer.start_file()
        with pytest.raises(FailedPrecondition):
            await writer.close()


async def test_changing_one_mib_of_a_big_file_stores_few_new_bytes(store: CountingStore) -> None:
    original = bytearray(random_bytes(64 * MiB, seed=11))
    await write_files(store, [bytes(original)])
    original[30 * MiB : 31 * MiB] = random_bytes(MiB, seed=12)
    store.reset()
    [entry] = await write_files(store, [bytes(original)])
    assert store.bytes_written("chunks/") <= 8 * MiB
    assert await read_all(store, entry) == bytes(original)


async def test_memory_stays_bounded_for_a_big_file_of_small_writes(store: CountingStore) -> None:
    piece_size = 64 << 10
    block = random_bytes(MiB, seed=13)
    tracemalloc.start()
    try:
        async with PackWriter(store) as writer:
            writer.start_file()
            for i in range(256 * MiB // piece_size):
                # Unique content (no dedup shortcut) without holding 256 MiB of input.
                offset = (i * 7919) % (MiB - piece_size)
                await writer.write(i.to_bytes(8, "big") + block[offset : offset + piece_size - 8])
            writer.end_file()
            [entry] = await writer.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert entry.size == 256 * MiB
    # Bounded by the cut buffer (8 MiB) and the bytes in flight (24 MiB + their zstd copies).
    assert peak < 64 * MiB, f"peak {peak / MiB:.1f} MiB"


def test_file_entry_json_round_trip() -> None:
    entry = FileEntry(7, "ab" * 32, (ChunkRef("cd" * 32, 10, 3), ChunkRef("ef" * 32, 0, 4)))
    assert FileEntry.from_json(entry.to_json()) == entry
    assert entry.to_json() == {
        "size": 7,
        "hash": "ab" * 32,
        "chunks": [["cd" * 32, 10, 3], ["ef" * 32, 0, 4]],
    }
    assert FileEntry.from_json(EMPTY_FILE.to_json()) == EMPTY_FILE
    for bad in [
        {},
        {"size": 1, "hash": "x", "chunks": [["c", 0]]},
        {"size": 5, "hash": "x", "chunks": []},
    ]:
        with pytest.raises(InvalidArgument):
            FileEntry.from_json(bad)


async def test_append_joins_references_and_hashes_the_joined_bytes(store: CountingStore) -> None:
    head, tail = random_bytes(3 * MiB, seed=14), random_bytes(100, seed=15)
    a, b = await write_files(store, [head, tail])
    store.reset()
    joined = await concat_entries(store, a, b)
    assert store.count_puts() == 0
    assert joined.size == len(head) + len(tail)
    assert joined.hash == blake3.blake3(head + tail).hexdigest()
    [written_whole] = await write_files(store, [head + tail])
    assert joined.hash == written_whole.hash
    assert await read_all(store, joined) == head + tail
    # b follows a in the same chunk: the two references become one.
    assert len(joined.chunks) == len(a.chunks)
    assert await concat_entries(store, EMPTY_FILE, b) == b
    assert await concat_entries(store, a, EMPTY_FILE) == a


async def test_chunk_cache_fetches_concurrent_misses_once_and_evicts_by_size(
    store: CountingStore,
) -> None:
    files = [random_bytes(2 * MiB, seed=20 + i) for i in range(3)]
    entries = await write_files(store, files)
    chunks = list(dict.fromkeys(ref.chunk for entry in entries for ref in entry.chunks))
    store.reset()
    cache = ChunkCache(max_bytes=3 * MiB)
    results = await asyncio.gather(*(cache.get(store, chunks[0]) for _ in range(10)))
    assert len(set(results)) == 1
    assert store.count_gets() == 1
    assert (cache.misses, cache.hits) == (1, 0)
    await cache.get(store, chunks[0])
    assert cache.hits == 1
    for chunk in chunks:
        await cache.get(store, chunk)
    assert cache.size <= 3 * MiB
    assert chunks[-1] in cache and chunks[0] not in cache
    store.reset()
    assert await read_all(store, entries[2], cache=cache) == files[2]
    assert store.count_gets() < len({ref.chunk for ref in entries[2].chunks})


async def test_cancelled_cache_loader_does_not_fail_other_waiters(store: CountingStore) -> None:
    [entry] = await write_files(store, [random_bytes(MiB, seed=30)])
    cache = ChunkCache()
    chunk = entry.chunks[0].chunk
    loader = asyncio.create_task(cache.get(store, chunk))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(cache.get(store, chunk))
    await asyncio.sleep(0)
    loader.cancel()
    assert len(await waiter) == entry.chunks[0].length
    with pytest.raises(asyncio.CancelledError):
        await loader


async def test_corrupt_chunk_is_detected(store: CountingStore, tmp_path: Path) -> None:
    [entry] = await write_files(store, [b"precious bytes"])
    key = chunk_key(entry.chunks[0].chunk)
    [other] = await write_files(store, [b"other bytes!!!"])
    await store.put(key, await store.get(chunk_key(other.chunks[0].chunk)))
    with pytest.raises(Internal, match="corrupt"):
        await read_all(store, entry)
    await store.put(key, b"not zstd at all")
    with pytest.raises(Internal, match="corrupt"):
        await read_all(store, entry)


async def test_pack_round_trip_on_s3(s3_config: Config) -> None:
    files = [random_bytes(5 * MiB, seed=40), b"small", b""]
    async with open_object_store(s3_config) as s3:
        entries = await write_files(s3, files)
        for entry, data in zip(entries, files, strict=True):
            assert await read_all(s3, entry) == data
        again = await write_files(s3, files)
        assert again == entries
