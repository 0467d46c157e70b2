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
import struct
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, Protocol

from shared.platform.errors import InvalidArgument

CONTENT_TYPE = "application/x-tusk-files"
MAX_HEADER = 64 * 1024
MAX_BLOCK = 4 * 1024 * 1024
FLUSH_AT = 256 * 1024
_LEN = struct.Struct(">I")
_END = b'{"end":true}\n'


class ByteReader(Protocol):
    """What the decoder needs of a stream (aiohttp's StreamReader has it)."""

    async def readexactly(self, n: int) -> bytes: ...

    async def readline(self) -> bytes: ...


def encode_header(header: dict[str, Any]) -> bytes:
    return json.dumps(header, separators=(",", ":")).encode() + b"\n"


def encode_block(data: bytes) -> bytes:
    return _LEN.pack(len(data)) + data


async def encode_files(
    files: AsyncIterable[tuple[dict[str, Any], AsyncIterable[bytes]]],
) -> AsyncIterator[bytes]:
    """Encode (header, content blocks) pairs as one stream, ending with the end record.

    Small pieces are gathered into writes of at least ``FLUSH_AT`` bytes: 10,000 tiny files
    become a few dozen writes rather than 30,000.
    """
    pending = bytearray()
    async for header, content in files:
        pending += encode_header(header)
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


class FileStreamReader:
    """Decodes a stream: ``while (h := await r.next_header()) is not None: async for b in r.blocks(): …``."""

    def __init__(self, reader: ByteReader) -> None:
        self._reader = reader
        self._in_file = False

    async def _readexactly(self, n: int) -> bytes:
        try:
            return await self._reader.readexactly(n)
        except Exception as exc:  # IncompleteReadError, connection reset: the sender stopped
            raise InvalidArgument(
                "upload was cut off before its end; nothing from it was stored"
            ) from exc

    async def next_header(self) -> dict[str, Any] | None:
        """The next file's header, or None after the end record."""
        if self._in_file:
            async for _ in self.blocks():
                pass
        line = await self._reader.readline()
        if not line.endswith(b"\n"):
            raise InvalidArgument("upload was cut off before its end; nothing from it was stored")
        if len(line) > MAX_HEADER:
            raise InvalidArgument(f"file header longer than {MAX_HEADER} bytes")
        try:
            header = json.loads(line)
        except ValueError:
            raise InvalidArgument("malformed file stream: a header is not JSON") from None
        if not isinstance(header, dict):
            raise InvalidArgument("malformed file stream: a header is not a JSON object")
        if header.get("end") is True:
            return None
        if not isinstance(header.get("path"), str):
            raise InvalidArgument("malformed file stream: a header has no 'path' string")
        self._in_file = True
        return header

    async def blocks(self) -> AsyncIterator[bytes]:
        """The current file's content, block by block."""
        while self._in_file:
            (length,) = _LEN.unpack(await self._readexactly(4))
            if length == 0:
                self._in_file = False
                return
            if length > MAX_BLOCK:
                raise InvalidArgument(f"malformed file stream: block of {length} bytes")
            yield await self._readexactly(length)
