"""The ``aws-chunked`` body encoding that signing clients stream uploads in.

boto3 and aws-cli send ``Content-Encoding: aws-chunked`` with ``x-amz-content-sha256``
``STREAMING-AWS4-HMAC-SHA256-PAYLOAD`` (each chunk signed), ``STREAMING-UNSIGNED-PAYLOAD-
TRAILER`` (a checksum in a trailer) or their ``-TRAILER`` variants::

    <hex size>[;chunk-signature=<sig>]\\r\\n<bytes>\\r\\n ... 0[;…]\\r\\n[<trailer>:<v>\\r\\n...]\\r\\n

``decode`` yields the payload as it arrives (one chunk at most in memory, read in slices)
and leaves the trailers in ``trailers``. Signatures are parsed past, not checked: auth is
off (docs/s3.md says how checking would slot in).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from services.s3gateway.errors import S3Error

# Bytes handed on at once: bounds memory whatever chunk size a client picks.
SLICE = 1 << 20
MAX_LINE = 4096


class Reader(Protocol):
    async def readline(self) -> bytes: ...

    async def readexactly(self, n: int) -> bytes: ...


def is_aws_chunked(content_encoding: str, content_sha256: str) -> bool:
    encodings = [e.strip().lower() for e in content_encoding.split(",")]
    return "aws-chunked" in encodings or content_sha256.upper().startswith("STREAMING-")


def _malformed(why: str) -> S3Error:
    return S3Error(400, "IncompleteBody", f"the aws-chunked request body is malformed: {why}")


class AwsChunkedDecoder:
    def __init__(self, reader: Reader) -> None:
        self._reader = reader
        self.trailers: dict[str, str] = {}

    async def _line(self) -> bytes:
        try:
            line = await self._reader.readline()
        except ValueError:
            raise _malformed("a line is too long") from None
        if not line.endswith(b"\n"):
            raise _malformed("the body ended early")
        if len(line) > MAX_LINE:
            raise _malformed("a line is too long")
        return line.rstrip(b"\r\n")

    async def _exactly(self, n: int) -> bytes:
        try:
            return await self._reader.readexactly(n)
        except EOFError:
            raise _malformed("the body ended inside a chunk") from None

    async def decode(self) -> AsyncIterator[bytes]:
        while True:
            header = await self._line()
            size_text = header.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _malformed(f"bad chunk size {size_text[:20]!r}") from None
            if size == 0:
                break
            left = size
            while left:
                data = await self._exactly(min(left, SLICE))
                left -= len(data)
                yield data
            if await self._exactly(2) != b"\r\n":
                raise _malformed("a chunk does not end with CRLF")
        while line := await self._line():
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                raise _malformed(f"bad trailer line {line[:40]!r}")
            self.trailers[name.strip().lower()] = value.strip()
