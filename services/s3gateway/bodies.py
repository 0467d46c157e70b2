"""Request bodies as the bytes they carry: plain, or decoded from ``aws-chunked``."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from services.s3gateway.chunked import AwsChunkedDecoder, is_aws_chunked
from services.s3gateway.errors import S3Error
from services.s3gateway.xmlio import MAX_XML_BODY

READ_SIZE = 1 << 20


def payload(request: web.Request) -> tuple[AsyncIterator[bytes], dict[str, str]]:
    """(the payload's bytes, its trailers — filled once the bytes are read)."""
    headers = request.headers
    if not is_aws_chunked(
        headers.get("Content-Encoding", ""), headers.get("x-amz-content-sha256", "")
    ):
        return request.content.iter_chunked(READ_SIZE), {}
    decoder = AwsChunkedDecoder(request.content)
    declared = headers.get("x-amz-decoded-content-length")
    return _counted(decoder.decode(), declared), decoder.trailers


async def _counted(blocks: AsyncIterator[bytes], declared: str | None) -> AsyncIterator[bytes]:
    received = 0
    async for block in blocks:
        received += len(block)
        yield block
    if declared is not None and declared.isdigit() and int(declared) != received:
        raise S3Error(
            400,
            "IncompleteBody",
            f"x-amz-decoded-content-length says {declared} bytes, the body held {received}",
        )


async def small_body(request: web.Request) -> bytes:
    """A whole XML request body, refused past ``MAX_XML_BODY``."""
    blocks, _ = payload(request)
    data = bytearray()
    async for block in blocks:
        data += block
        if len(data) > MAX_XML_BODY:
            raise S3Error(400, "MaxMessageLengthExceeded", "Your request was too big.")
    return bytes(data)
