"""Multipart uploads: parts go straight into the chunk store as they arrive; completing an
upload joins their chunk lists and lands the file in PFS by reference."""

from __future__ import annotations

import asyncio
import contextlib

import blake3
from aiohttp import web

from services.s3gateway.bodies import payload, small_body
from services.s3gateway.buckets import Bucket
from services.s3gateway.checksums import Checksums
from services.s3gateway.errors import S3Error, s3_status_and_code
from services.s3gateway.gateway import Gateway, etag_of, path_of
from services.s3gateway.objects import require_repo, source_object
from services.s3gateway.reads import parse_range
from services.s3gateway.uploads import Part, Upload, Uploads, check_part_number
from services.s3gateway.xmlio import (
    XML_TYPE,
    ListedPart,
    complete_upload_xml,
    copy_result_xml,
    error_xml,
    initiate_upload_xml,
    list_parts_xml,
    list_uploads_xml,
    parse_complete,
)
from shared.platform.errors import TuskError
from shared.storage.chunking import FileEntry, join_entries, slice_refs

# S3's smallest part but the last.
MIN_PART_SIZE = 5 << 20
# A Complete that takes longer than this answers 200 at once and keeps the connection
# alive with spaces until its result (S3 does the same); errors then come in the body.
COMPLETE_PATIENCE_S = 3.0
KEEPALIVE_S = 5.0
_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'


async def create_upload(gw: Gateway, uploads: Uploads, bucket: Bucket, key: str) -> web.Response:
    await require_repo(gw, bucket)
    path_of(key)
    upload = await uploads.create(bucket.name, key)
    return web.Response(
        body=initiate_upload_xml(bucket.name, key, upload.id), content_type=XML_TYPE
    )


async def upload_part(
    gw: Gateway, uploads: Uploads, request: web.Request, bucket: Bucket, key: str
) -> web.Response:
    gw.require_writable(bucket)
    number = check_part_number(request.query.get("partNumber"))
    upload = await uploads.get(request.query["uploadId"], bucket.name, key)
    if "x-amz-copy-source" in request.headers:
        return await _copy_part(gw, uploads, request, upload, number)
    blocks, trailers = payload(request)
    entry = await gw.store_bytes(blocks, Checksums(request.headers), trailers)
    part = await uploads.put_part(upload, number, etag_of(entry.hash), entry)
    return web.Response(headers={"ETag": part.etag})


async def _copy_part(
    gw: Gateway, uploads: Uploads, request: web.Request, upload: Upload, number: int
) -> web.Response:
    """A part made of a range of another object, by reference: no byte is copied."""
    source = await source_object(gw, request)
    size = source.entry.size
    header = request.headers.get("x-amz-copy-source-range")
    wanted = parse_range(header, size) if header else None
    if header and wanted is None:
        raise S3Error.invalid_argument("x-amz-copy-source-range must be bytes=first-last")
    start, end = (wanted.start, wanted.end) if wanted else (0, size)
    # The part's own hash is not needed (Complete hashes the whole); its ETag names
    # the source bytes it references.
    etag = etag_of(blake3.blake3(f"{source.entry.hash}:{start}-{end}".encode()).hexdigest())
    entry = FileEntry(end - start, "", slice_refs(source.entry, start, end))
    part = await uploads.put_part(upload, number, etag, entry)
    body = copy_result_xml("CopyPartResult", part.etag, part.modified)
    return web.Response(body=body, content_type=XML_TYPE)


def _chosen_parts(stored: list[Part], asked: list[tuple[int, str]]) -> list[Part]:
    """The parts a Complete names, checked as S3 checks them."""
    by_number = {part.number: part for part in stored}
    chosen: list[Part] = []
    for number, etag in asked:
        if chosen and number <= chosen[-1].number:
            raise S3Error(
                400,
                "InvalidPartOrder",
                "The list of parts was not in ascending order. The parts list must be "
                "specified in order by part number.",
            )
        part = by_number.get(number)
        if part is None or part.etag.strip('"') != etag.strip('"'):
            raise S3Error(
                400,
                "InvalidPart",
                "One or more of the specified parts could not be found. The part may not "
                "have been uploaded, or the specified entity tag may not have matched the "
                "part's entity tag.",
                PartNumber=number,
            )
        chosen.append(part)
    for part in chosen[:-1]:
        if part.size < MIN_PART_SIZE:
            raise S3Error(
                400,
                "EntityTooSmall",
                "Your proposed upload is smaller than the minimum allowed object size.",
                PartNumber=part.number,
                ProposedSize=part.size,
                MinSizeAllowed=MIN_PART_SIZE,
            )
    return chosen


async def complete_upload(
    gw: Gateway, uploads: Uploads, request: web.Request, bucket: Bucket, key: str
) -> web.StreamResponse:
    gw.require_writable(bucket)
    upload = await uploads.get(request.query["uploadId"], bucket.name, key)
    chosen = _chosen_parts(await uploads.parts(upload), parse_complete(await small_body(request)))
    path = path_of(key)

    async def finish() -> bytes:
        entry = await join_entries(gw.store, [p.entry for p in chosen], gw.cache)
        await gw.land(bucket, [(path, entry)])
        await uploads.remove(upload)
        location = f"{request.scheme}://{request.host}/{bucket.name}/{key}"
        return complete_upload_xml(location, bucket.name, key, etag_of(entry.hash))

    work = asyncio.ensure_future(finish())
    try:
        done, _ = await asyncio.wait({work}, timeout=COMPLETE_PATIENCE_S)
        if done:
            return web.Response(body=work.result(), content_type=XML_TYPE)
        response = web.StreamResponse(headers={"Content-Type": XML_TYPE})
        await response.prepare(request)
        await response.write(_DECLARATION)
        while not done:
            done, _ = await asyncio.wait({work}, timeout=KEEPALIVE_S)
            if not done:
                await response.write(b" ")
        try:
            body = work.result()
        except TuskError as exc:
            _, code = s3_status_and_code(exc)
            body = error_xml(code, exc.message, request.path, "", **exc.details)
        await response.write(body.removeprefix(_DECLARATION))
        await response.write_eof()
        return response
    finally:
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work


async def abort_upload(
    gw: Gateway, uploads: Uploads, request: web.Request, bucket: Bucket, key: str
) -> web.Response:
    gw.require_writable(bucket)
    upload = await uploads.get(request.query["uploadId"], bucket.name, key)
    await uploads.remove(upload)
    return web.Response(status=204)


def _int_query(request: web.Request, name: str, default: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit():
        raise S3Error.invalid_argument(f"{name} must be a non-negative integer")
    return min(int(raw), high)


async def list_parts(
    gw: Gateway, uploads: Uploads, request: web.Request, bucket: Bucket, key: str
) -> web.Response:
    upload = await uploads.get(request.query["uploadId"], bucket.name, key)
    marker = _int_query(request, "part-number-marker", 0, 10000)
    max_parts = _int_query(request, "max-parts", 1000, 1000)
    after = [p for p in await uploads.parts(upload) if p.number > marker]
    page = after[:max_parts]
    listed = [ListedPart(p.number, p.size, p.etag, p.modified) for p in page]
    body = list_parts_xml(
        bucket.name,
        key,
        upload.id,
        listed,
        marker=marker,
        max_parts=max_parts,
        truncated=len(after) > len(page),
    )
    return web.Response(body=body, content_type=XML_TYPE)


async def list_uploads(
    gw: Gateway, uploads: Uploads, request: web.Request, bucket: Bucket
) -> web.Response:
    await gw.require_bucket(bucket)
    prefix = request.query.get("prefix", "")
    max_uploads = _int_query(request, "max-uploads", 1000, 1000)
    found = [u async for u in uploads.in_bucket(bucket.name) if u.key.startswith(prefix)]
    found.sort(key=lambda u: (u.key, u.started))
    body = list_uploads_xml(
        bucket.name,
        [(u.key, u.id, u.started) for u in found[:max_uploads]],
        prefix=prefix,
        max_uploads=max_uploads,
    )
    return web.Response(body=body, content_type=XML_TYPE)
