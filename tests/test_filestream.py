"""The many-files wire format: round trips, few writes for many small files, few reads to
decode them, cut-off streams and malformed headers."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shared.api.filestream import (
    FLUSH_AT,
    MAX_HEADER,
    READ_SIZE,
    FileStreamReader,
    encode_files,
)
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


async def _files_as_bytes(
    items: list[tuple[str, bytes]],
) -> AsyncIterator[tuple[dict[str, Any], bytes]]:
    for path, data in items:
        yield {"path": path}, data


async def test_contents_given_as_bytes_encode_as_their_blocks_would() -> None:
    big = os.urandom(FLUSH_AT + 10)
    items = [("/a", b"x"), ("/empty", b""), ("/big", big), ('/q"u\\o\u00e9', b"yz")]
    as_bytes = b"".join([c async for c in encode_files(_files_as_bytes(items))])
    as_blocks = b"".join(
        [c async for c in encode_files(_files([(p, [d] if d else []) for p, d in items]))]
    )
    assert as_bytes == as_blocks
    assert await _decode([as_bytes]) == items


class CountingReader:
    """A real asyncio stream that counts how often the decoder asks it for bytes."""

    def __init__(self, data: bytes) -> None:
        self.stream = asyncio.StreamReader()
        self.stream.feed_data(data)
        self.stream.feed_eof()
        self.reads = 0

    async def read(self, n: int = -1) -> bytes:
        self.reads += 1
        return await self.stream.read(n)


async def test_small_files_are_decoded_from_few_reads_of_the_stream() -> None:
    items = [(f"/d/f{i:05}", os.urandom(1024)) for i in range(10_000)]
    body = b"".join([c async for c in encode_files(_files_as_bytes(items))])
    reader = CountingReader(body)
    stream = FileStreamReader(reader)
    count = 0
    while (header := await stream.next_header()) is not None:
        assert header["path"] == items[count][0]
        assert await stream.next_block() == items[count][1]
        assert await stream.next_block() is None
        count += 1
    assert count == 10_000
    # One read per READ_SIZE of body (and the empty read at its end), not ~4 per file.
    assert reader.reads <= len(body) // READ_SIZE + 2


@pytest.mark.parametrize(
    "line",
    [b'{"path":"/a\tb"}\n', b'{"path":"/\xff"}\n', b'["/a"]\n', b"{}\n", b'{"path":1}\n'],
    ids=["raw tab", "not utf-8", "not an object", "no path", "path not a string"],
)
async def test_malformed_headers_are_refused_as_before(line: bytes) -> None:
    with pytest.raises(InvalidArgument, match="malformed file stream"):
        await _decode([line + b"\x00\x00\x00\x00" + b'{"end":true}\n'])


async def test_a_header_line_longer_than_the_limit_is_refused() -> None:
    line = b'{"path":"/' + b"a" * MAX_HEADER + b'"}\n'
    with pytest.raises(InvalidArgument, match="longer than"):
        await _decode([line])
