"""The many-files wire format: round trips, few writes for many small files, cut-off streams."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shared.api.filestream import FLUSH_AT, FileStreamReader, encode_files
from shared.platform.errors import InvalidArgument


async def _blocks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _files(
    items: list[tuple[str, list[bytes]]],
) -> AsyncIterator[tuple[dict[str, Any], AsyncIterator[bytes]]]:
    for path, parts in items:
        yield {"path": path}, _blocks(*parts)


async def _decode(chunks: list[bytes]) -> list[tuple[str, bytes]]:
    reader = asyncio.StreamReader()
    for chunk in chunks:
        reader.feed_data(chunk)
    reader.feed_eof()
    stream = FileStreamReader(reader)
    out = []
    while (header := await stream.next_header()) is not None:
        out.append((header["path"], b"".join([b async for b in stream.blocks()])))
    return out


async def test_round_trip_of_small_big_and_empty_files() -> None:
    big = os.urandom(5 * 1024 * 1024 + 3)
    items = [("/a", [b"x"]), ("/big", [big[:100], big[100:]]), ("/empty", []), ("/b", [b"yz"])]
    chunks = [c async for c in encode_files(_files(items))]
    assert await _decode(chunks) == [("/a", b"x"), ("/big", big), ("/empty", b""), ("/b", b"yz")]


async def test_many_small_files_become_few_writes() -> None:
    items = [(f"/f{i:05}", [b"k" * 1024]) for i in range(10_000)]
    chunks = [c async for c in encode_files(_files(items))]
    # ~10.6 MB of records in writes of at least FLUSH_AT bytes, not 30,000 tiny ones.
    assert len(chunks) <= 10_000 * 1100 // FLUSH_AT + 2
    assert len(await _decode(chunks)) == 10_000


async def test_a_stream_cut_off_before_its_end_is_refused() -> None:
    chunks = [c async for c in encode_files(_files([("/a", [b"data" * 100])]))]
    whole = b"".join(chunks)
    with pytest.raises(InvalidArgument, match="cut off"):
        await _decode([whole[: len(whole) - 20]])
