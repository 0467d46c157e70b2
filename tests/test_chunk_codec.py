"""Stored chunks: raw when a sample says zstd cannot shrink them, zstd otherwise; both
forms (and chunks written before raw ones existed) read back identical; chunk writes go
through a bounded number of parallel puts."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
import zstandard

from shared.platform.errors import DataLoss
from shared.storage.chunk_codec import RAW_MAGIC, decode_chunk, encode_chunk, is_raw
from shared.storage.chunking import PackWriter, chunk_key, hash_bytes, read_all
from shared.storage.objstore.local import LocalStore

MiB = 1 << 20


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def text_bytes(size: int, seed: int) -> bytes:
    words = [b"tusk", b"commit", b"branch", b"datum", b"pipeline", b"chunk", b"\n"]
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) + b" "
    return bytes(out[:size])


class ParallelPuts:
    """A real local store that records how many puts run at once."""

    def __init__(self, root: Path) -> None:
        self.inner = LocalStore(root)
        self.in_flight = 0
        self.most = 0
        self.puts = 0

    async def put(self, key: str, data: bytes) -> None:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await self.inner.put(key, data)
            self.puts += 1
        finally:
            self.in_flight -= 1

    async def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        return await self.inner.get(key, start, end)

    async def exists(self, key: str) -> bool:
        return await self.inner.exists(key)

    async def close(self) -> None:
        await self.inner.close()


def test_incompressible_bytes_are_stored_raw_and_decode_identical() -> None:
    data = random_bytes(MiB + 17, seed=1)
    blob = encode_chunk(data)
    assert is_raw(blob)
    assert blob == RAW_MAGIC + data
    assert decode_chunk(hash_bytes(data), blob) == data


def test_compressible_bytes_are_stored_as_zstd() -> None:
    data = text_bytes(MiB, seed=2)
    blob = encode_chunk(data)
    assert not is_raw(blob)
    assert len(blob) < len(data) // 2
    assert decode_chunk(hash_bytes(data), blob) == data


def test_chunks_written_before_raw_chunks_existed_still_read() -> None:
    # Every chunk used to be a plain zstd frame, incompressible or not.
    for data in (random_bytes(300_000, seed=3), text_bytes(300_000, seed=4), b"x"):
        old_blob = zstandard.ZstdCompressor(level=1).compress(data)
        assert decode_chunk(hash_bytes(data), old_blob) == data


def test_damaged_raw_chunk_is_data_loss() -> None:
    data = random_bytes(64 << 10, seed=5)
    blob = bytearray(encode_chunk(data))
    blob[len(blob) // 2] ^= 0x01
    with pytest.raises(DataLoss, match="do not match its name"):
        decode_chunk(hash_bytes(data), bytes(blob))
    with pytest.raises(DataLoss, match="not a stored chunk"):
        decode_chunk(hash_bytes(data), b"PK\x03\x04" + data)


async def test_pack_writer_stores_random_data_raw_and_text_compressed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "objects")
    random_file, text_file = random_bytes(12 * MiB, seed=6), text_bytes(6 * MiB, seed=7)
    try:
        async with PackWriter(store) as writer:
            writer.start_file()
            await writer.write(random_file)
            writer.end_file()
            [random_entry] = await writer.close()
        assert writer.chunks_written >= 5
        assert writer.chunks_raw == writer.chunks_written
        assert writer.bytes_written == len(random_file) + len(RAW_MAGIC) * writer.chunks_written
        assert await read_all(store, random_entry) == random_file
        for ref in random_entry.chunks:
            assert is_raw(await store.get(chunk_key(ref.chunk), 0, 4))

        async with PackWriter(store) as writer:
            writer.start_file()
            await writer.write(text_file)
            writer.end_file()
            [text_entry] = await writer.close()
        assert writer.chunks_raw == 0
        assert writer.bytes_written < len(text_file) // 2
        assert await read_all(store, text_entry) == text_file
    finally:
        await store.close()


async def test_chunk_writes_run_in_parallel_within_their_bound(tmp_path: Path) -> None:
    store = ParallelPuts(tmp_path / "objects")
    data = random_bytes(48 * MiB, seed=8)
    try:
        async with PackWriter(store, max_parallel_writes=4) as writer:  # type: ignore[arg-type]
            writer.start_file()
            for offset in range(0, len(data), 4 * MiB):
                await writer.write(data[offset : offset + 4 * MiB])
            writer.end_file()
            [entry] = await writer.close()
        assert store.puts == writer.chunks_written >= 20
        # Several chunk files are written and fsynced at once, never more than the bound.
        assert 2 <= store.most <= 4
        assert await asyncio.wait_for(read_all(store, entry), 30) == data  # type: ignore[arg-type]
    finally:
        await store.close()
