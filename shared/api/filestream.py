"""The wire format for many files in one HTTP body (``application/x-tusk-files``).

Used both ways: ``put file`` uploads and recursive ``get file`` downloads. One
request carries 10,000 small files without 10,000 round trips, and file sizes
need not be known in advance (stdin, URLs).

    stream  := record* end
    record  := header block* empty-block
    header  := one line of JSON (an object with at least "path"), then "\\n"
    block   := 4-byte big-endian length N (1..MAX_BLOCK), then N bytes
    empty-block := 4 zero bytes
    end     := the header line {"end": true}

A stream without its ``end`` record was cut off; readers raise ``InvalidArgument``
so nothing of a partial upload becomes visible.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, Protocol

from shared.platform.errors import InvalidArgument

CONTENT_TYPE = "application/x-tusk-files"
MAX_HEADER = 64 * 1024
MAX_BLOCK = 4 * 1024 * 1024
FLUSH_AT = 256 * 1024
# How much the decoder asks its stream for at once.
READ_SIZE = 256 * 1024
_CUT_OFF = "upload was cut off before its end; nothing from it was stored"
_LEN = struct.Struct(">I")
_END = b'{"end":true}\n'
_EMPTY = _LEN.pack(0)
# One encoder for every header: json.dumps with separators builds a new one per call.
_HEADER_JSON = json.JSONEncoder(separators=(",", ":"))
_json_string = json.encoder.encode_basestring_ascii

# A file's content as ``encode_files`` takes it: its blocks, or all its bytes at once.
Content = AsyncIterable[bytes] | bytes


class ByteReader(Protocol):
    """What the decoder needs of a stream: aiohttp's and asyncio's StreamReader have it."""

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (at least one, waiting if none is buffered); b"" at the end."""
        ...


def encode_header(header: dict[str, Any]) -> bytes:
    path = header.get("path")
    if len(header) == 1 and type(path) is str:
        # What the JSON encoder writes for {"path": ...}, at a third of its cost per file.
        return b'{"path":' + _json_string(path).encode() + b"}\n"
    return _HEADER_JSON.encode(header).encode() + b"\n"


def encode_block(data: bytes) -> bytes:
    return _LEN.pack(len(data)) + data


async def encode_files(
    files: AsyncIterable[tuple[dict[str, Any], Content]],
) -> AsyncIterator[bytes]:
    """Encode (header, content) pairs as one stream, ending with the end record.

    Content is the file's blocks, or its whole bytes when the sender already holds them
    (a small file read in one call: no generator to step through per file). Small pieces
    are gathered into writes of at least ``FLUSH_AT`` bytes: 10,000 tiny files become a
    few dozen writes rather than 30,000.
    """
    pending = bytearray()
    async for header, content in files:
        pending += encode_header(header)
        if isinstance(content, bytes):
            if 0 < len(content) < FLUSH_AT:
                pending += _LEN.pack(len(content))
                pending += content
                pending += _EMPTY
                if len(pending) >= FLUSH_AT:
                    yield bytes(pending)
                    pending.clear()
                continue
            content = _whole(content)
        async for data in content:
            for start in range(0, len(data), MAX_BLOCK):
                piece = data[start : start + MAX_BLOCK]
                if len(piece) >= FLUSH_AT:
                    # A big block goes out as is, without being copied into the buffer.
                    pending += _LEN.pack(len(piece))
                    yield bytes(pending)
                    pending.clear()
                    yield piece
                    continue
                pending += encode_block(piece)
                if len(pending) >= FLUSH_AT:
                    yield bytes(pending)
                    pending.clear()
        pending += _LEN.pack(0)
        if len(pending) >= FLUSH_AT:
            yield bytes(pending)
            pending.clear()
    pending += _END
    yield bytes(pending)


async def _whole(data: bytes) -> AsyncIterator[bytes]:
    if data:
        yield data


class FileStreamReader:
    """Decodes a stream: ``while (h := await r.next_header()) is not None: async for b in r.blocks(): …``.

    It reads the underlying stream in pieces of up to ``READ_SIZE`` and parses headers and
    blocks out of its own buffer: asking the stream for each 4-byte length, each block and
    each header line costs ~3 awaits and a few allocations per small file, which was most
    of the server's time for 10,000 tiny files.
    """

    def __init__(self, reader: ByteReader) -> None:
        self._reader = reader
        self._buffer = b""
        self._pos = 0  # where the unread part of ``_buffer`` starts
        self._in_file = False

    async def _fill(self, need: int) -> None:
        """Read until at least ``need`` unread bytes are buffered."""
        have = len(self._buffer) - self._pos
        pieces = [self._buffer[self._pos :]] if have else []
        while have < need:
            try:
                data = await self._reader.read(max(READ_SIZE, need - have))
            except Exception as exc:  # connection reset, payload error: the sender stopped
                raise InvalidArgument(_CUT_OFF) from exc
            if not data:
                raise InvalidArgument(_CUT_OFF)
            pieces.append(data)
            have += len(data)
        self._buffer = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        self._pos = 0

    def _slice(self, n: int) -> bytes:
        """The next ``n`` buffered bytes (the caller made sure they are there)."""
        start = self._pos
        self._pos = start + n
        if start == 0 and n == len(self._buffer):
            return self._buffer  # a whole read handed on without a copy
        return self._buffer[start : start + n]

    async def _line(self) -> bytes:
        while (end := self._buffer.find(b"\n", self._pos, self._pos + MAX_HEADER)) < 0:
            if len(self._buffer) - self._pos >= MAX_HEADER:
                raise InvalidArgument(f"file header longer than {MAX_HEADER} bytes")
            await self._fill(len(self._buffer) - self._pos + 1)
        line = self._buffer[self._pos : end + 1]
        self._pos = end + 1
        return line

    async def next_header(self) -> dict[str, Any] | None:
        """The next file's header, or None after the end record."""
        while self._in_file:  # the caller left blocks of the last file unread
            await self.next_block()
        end = self._buffer.find(b"\n", self._pos, self._pos + MAX_HEADER)
        if end >= 0:
            line = self._buffer[self._pos : end + 1]
            self._pos = end + 1
        else:
            line = await self._line()
        header = _parse_header(line)
        if header.get("end") is True:
            return None
        if not isinstance(header.get("path"), str):
            raise InvalidArgument("malformed file stream: a header has no 'path' string")
        self._in_file = True
        return header

    async def next_block(self) -> bytes | None:
        """The current file's next block, or None at its end.

        Awaits the stream only when the buffer runs short: most small files are parsed
        without waiting, and without the async generator ``blocks`` makes per file.
        """
        if not self._in_file:
            return None
        if len(self._buffer) - self._pos < 4:
            await self._fill(4)
        (length,) = _LEN.unpack_from(self._buffer, self._pos)
        self._pos += 4
        if length == 0:
            self._in_file = False
            return None
        if length > MAX_BLOCK:
            raise InvalidArgument(f"malformed file stream: block of {length} bytes")
        if len(self._buffer) - self._pos < length:
            await self._fill(length)
        return self._slice(length)

    async def blocks(self) -> AsyncIterator[bytes]:
        """The current file's content, block by block."""
        while (block := await self.next_block()) is not None:
            yield block


# The header every put sends; read without the JSON parser when it has nothing to unescape
# (no backslash, quote or control character in the path).
_PLAIN_PATH_HEADER = re.compile(rb'\{"path":"([^"\\\x00-\x1f]*)"\}\n')


def _parse_header(line: bytes) -> dict[str, Any]:
    plain = _PLAIN_PATH_HEADER.fullmatch(line)
    if plain is not None:
        try:
            return {"path": plain.group(1).decode()}
        except UnicodeDecodeError:
            pass  # json.loads refuses it below with the usual message
    try:
        header = json.loads(line)
    except ValueError:
        raise InvalidArgument("malformed file stream: a header is not JSON") from None
    if not isinstance(header, dict):
        raise InvalidArgument("malformed file stream: a header is not a JSON object")
    return header
