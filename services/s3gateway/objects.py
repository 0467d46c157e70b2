"""Object operations: HeadObject, GetObject, PutObject, CopyObject, DeleteObject(s)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from urllib.parse import unquote

from aiohttp import web

from services.s3gateway.bodies import payload, small_body
from services.s3gateway.buckets import Bucket, parse_bucket
from services.s3gateway.checksums import Checksums
from services.s3gateway.errors import S3Error
from services.s3gateway.gateway import Gateway, StoredObject, commit_time, etag_of, path_of
from services.s3gateway.reads import NotModified, check_conditions, parse_range
from services.s3gateway.xmlio import (
    XML_TYPE,
    copy_result_xml,
    delete_result_xml,
    http_time,
    parse_delete,
)
from shared.api.pfs_models import CommitInfo
from shared.platform.errors import TuskError
from shared.storage.chunking import EMPTY_FILE

# Query parameters a (presigned) GET may use to set response headers.
RESPONSE_OVERRIDES = {
    "response-content-type": "Content-Type",
    "response-content-language": "Content-Language",
    "response-expires": "Expires",
    "response-cache-control": "Cache-Control",
    "response-content-disposition": "Content-Disposition",
    "response-content-encoding": "Content-Encoding",
}
# Lookups of one DeleteObjects request in flight at once.
DELETE_LOOKUPS = 16


def is_directory_marker(key: str) -> bool:
    """``dir/``: what tools PUT (empty) to make a folder; Tusk's directories are implicit."""
    return key.endswith("/")


def object_headers(obj: StoredObject) -> dict[str, str]:
    return {
        "ETag": obj.etag,
        "Last-Modified": http_time(obj.modified),
        "Accept-Ranges": "bytes",
        "Content-Type": "binary/octet-stream",
        "x-amz-tusk-commit": obj.commit,
    }


def landed_time(commit: CommitInfo) -> datetime:
    # An open commit has no finish time yet; the write happened now.
    return commit_time(commit) if commit.state == "finished" else datetime.now(UTC)


async def get_object(
    gw: Gateway, request: web.Request, bucket: Bucket, key: str, *, head: bool
) -> web.StreamResponse:
    obj = await gw.lookup(bucket, key)
    headers = object_headers(obj)
    try:
        check_conditions(request.headers, obj.etag, obj.modified)
    except NotModified:
        return web.Response(status=304, headers={k: headers[k] for k in ("ETag", "Last-Modified")})
    size = obj.entry.size
    wanted = parse_range(request.headers.get("Range"), size)
    start, end = (wanted.start, wanted.end) if wanted else (0, size)
    for name, header in RESPONSE_OVERRIDES.items():
        if name in request.query:
            headers[header] = request.query[name]
    response = web.StreamResponse(status=206 if wanted else 200, headers=headers)
    if wanted:
        response.headers["Content-Range"] = wanted.content_range(size)
    response.content_length = end - start
    if head:
        await response.prepare(request)
        await response.write_eof()
        return response
    blocks = gw.read(obj, start, end)
    # The first chunk is read before the status goes out: bytes lost from the start are
    # a clean InternalError, not a 200 (later losses break the connection off).
    first = await anext(blocks, b"")
    await response.prepare(request)
    await response.write(first)
    async for data in blocks:
        await response.write(data)
    await response.write_eof()
    return response


async def require_repo(gw: Gateway, bucket: Bucket) -> None:
    """Before any byte is stored: the repo exists (a write may create the branch)."""
    gw.require_writable(bucket)
    try:
        await gw.pfs.inspect_repo(bucket.repo)
    except TuskError:
        raise S3Error.no_such_bucket(bucket.name) from None


async def put_object(gw: Gateway, request: web.Request, bucket: Bucket, key: str) -> web.Response:
    if "x-amz-copy-source" in request.headers:
        return await copy_object(gw, request, bucket, key)
    await require_repo(gw, bucket)
    if is_directory_marker(key) and request.content_length in (0, None):
        await _drain(request)
        return web.Response(headers={"ETag": etag_of(EMPTY_FILE.hash)})
    path = path_of(key)
    blocks, trailers = payload(request)
    entry = await gw.store_bytes(blocks, Checksums(request.headers), trailers)
    await gw.land(bucket, [(path, entry)])
    return web.Response(headers={"ETag": etag_of(entry.hash)})


async def _drain(request: web.Request) -> None:
    blocks, _ = payload(request)
    async for block in blocks:
        if block:
            raise S3Error.invalid_argument("a key ending in '/' cannot hold bytes in Tusk")


def copy_source(header: str) -> tuple[Bucket, str]:
    """The (bucket, key) of ``x-amz-copy-source: [/]bucket/key[?versionId=…]``."""
    source = unquote(header.split("?", 1)[0]).lstrip("/")
    name, slash, key = source.partition("/")
    if not slash or not key:
        raise S3Error.invalid_argument("x-amz-copy-source must be bucket/key")
    return parse_bucket(name), key


async def source_object(gw: Gateway, request: web.Request) -> StoredObject:
    src_bucket, src_key = copy_source(request.headers["x-amz-copy-source"])
    source = await gw.lookup(src_bucket, src_key)
    conditions = {
        plain: request.headers[name]
        for name, plain in (
            ("x-amz-copy-source-if-match", "if-match"),
            ("x-amz-copy-source-if-none-match", "if-none-match"),
            ("x-amz-copy-source-if-modified-since", "if-modified-since"),
            ("x-amz-copy-source-if-unmodified-since", "if-unmodified-since"),
        )
        if name in request.headers
    }
    try:
        check_conditions(conditions, source.etag, source.modified)
    except NotModified:
        raise S3Error(
            412,
            "PreconditionFailed",
            "At least one of the pre-conditions you specified did not hold",
        ) from None
    return source


async def copy_object(gw: Gateway, request: web.Request, bucket: Bucket, key: str) -> web.Response:
    """Within Tusk a copy is a new reference to the same chunks: no byte is read or written."""
    gw.require_writable(bucket)
    path = path_of(key)
    source = await source_object(gw, request)
    commit = await gw.land(bucket, [(path, source.entry)])
    body = copy_result_xml("CopyObjectResult", source.etag, landed_time(commit))
    return web.Response(body=body, content_type=XML_TYPE)


async def delete_object(gw: Gateway, bucket: Bucket, key: str) -> web.Response:
    gw.require_writable(bucket)
    try:
        path = path_of(key)
        await gw.lookup(bucket, key)
    except S3Error as exc:
        if exc.s3_code in ("NoSuchKey", "InvalidArgument"):
            return web.Response(status=204)  # deleting what is not there succeeds, as in S3
        raise
    await gw.land(bucket, [(path, None)])
    return web.Response(status=204)


async def delete_objects(gw: Gateway, request: web.Request, bucket: Bucket) -> web.Response:
    """All the keys that exist go in one commit; missing keys count as deleted (S3 does)."""
    gw.require_writable(bucket)
    keys, quiet = parse_delete(await small_body(request))
    gate = asyncio.Semaphore(DELETE_LOOKUPS)

    async def existing(key: str) -> str | None:
        async with gate:
            try:
                path = path_of(key)
                await gw.lookup(bucket, key)
            except S3Error as exc:
                if exc.s3_code in ("NoSuchKey", "InvalidArgument"):
                    return None
                raise
            return path

    paths = await asyncio.gather(*(existing(k) for k in keys))
    changes = sorted({(p, None) for p in paths if p is not None})
    if changes:
        await gw.land(bucket, list(changes))
    body = delete_result_xml(keys, [], quiet=quiet)
    return web.Response(body=body, content_type=XML_TYPE)
