"""ListBuckets, ListObjectsV2 and ListObjects: pages of PFS' prefix listing as S3 XML."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime

from aiohttp import web

from services.s3gateway.buckets import Bucket
from services.s3gateway.errors import S3Error
from services.s3gateway.gateway import DEFAULT_BRANCH, Gateway, Page, commit_time, etag_of
from services.s3gateway.xmlio import (
    XML_TYPE,
    ListedObject,
    Listing,
    list_buckets_xml,
    list_objects_v1_xml,
    list_objects_v2_xml,
)

MAX_KEYS = 1000


async def list_buckets(gw: Gateway) -> web.Response:
    """Every branch of every repo, as ``BRANCH.REPO``."""
    buckets: list[tuple[str, datetime]] = []
    for repo in await gw.pfs.list_repos():
        created = datetime.fromisoformat(repo.created)
        branches = repo.branches or [DEFAULT_BRANCH]  # master exists before its first write
        buckets.extend((f"{branch}.{repo.name}", created) for branch in branches)
    buckets.sort()
    return web.Response(body=list_buckets_xml(buckets), content_type=XML_TYPE)


def encode_token(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode()


def decode_token(token: str) -> str:
    try:
        return base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode()
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise S3Error.invalid_argument("The continuation token provided is incorrect") from None


def _max_keys(request: web.Request) -> int:
    raw = request.query.get("max-keys", str(MAX_KEYS))
    try:
        value = int(raw)
    except ValueError:
        raise S3Error.invalid_argument("max-keys must be an integer") from None
    if value < 0:
        raise S3Error.invalid_argument("max-keys must not be negative")
    return min(value, MAX_KEYS)


def _encoding(request: web.Request) -> bool:
    encoding = request.query.get("encoding-type")
    if encoding not in (None, "url"):
        raise S3Error.invalid_argument("Invalid Encoding Method specified in Request")
    return encoding == "url"


async def _page(
    gw: Gateway, bucket: Bucket, prefix: str, after: str | None, delimiter: str | None, limit: int
) -> Page:
    if limit == 0:
        await gw.require_bucket(bucket)
        return Page(None, [], [], False)
    return await gw.list_page(bucket, prefix, after=after, delimiter=delimiter, limit=limit)


def _listing(
    bucket: Bucket, request: web.Request, page: Page, prefix: str, delimiter: str | None, limit: int
) -> Listing:
    modified = commit_time(page.commit) if page.commit else datetime.now(UTC)
    objects = [
        ListedObject(f.path[1:], f.size_bytes, etag_of(f.hash or ""), modified) for f in page.files
    ]
    return Listing(
        bucket=bucket.name,
        prefix=prefix,
        delimiter=delimiter,
        max_keys=limit,
        objects=objects,
        prefixes=page.prefixes,
        truncated=page.truncated,
        url_encoded=_encoding(request),
    )


def _last_item(page: Page) -> str | None:
    """The page's last key or prefix (the resume point), in key order."""
    candidates = [f.path[1:] for f in page.files[-1:]] + page.prefixes[-1:]
    return max(candidates) if candidates else None


async def list_objects_v2(gw: Gateway, request: web.Request, bucket: Bucket) -> web.Response:
    prefix = request.query.get("prefix", "")
    delimiter = request.query.get("delimiter") or None
    limit = _max_keys(request)
    token = request.query.get("continuation-token")
    start_after = request.query.get("start-after") or None
    after = decode_token(token) if token else start_after
    page = await _page(gw, bucket, prefix, after, delimiter, limit)
    last = _last_item(page)
    body = list_objects_v2_xml(
        _listing(bucket, request, page, prefix, delimiter, limit),
        continuation=token,
        next_continuation=encode_token(last) if page.truncated and last else None,
        start_after=start_after,
    )
    return web.Response(body=body, content_type=XML_TYPE)


async def list_objects_v1(gw: Gateway, request: web.Request, bucket: Bucket) -> web.Response:
    prefix = request.query.get("prefix", "")
    delimiter = request.query.get("delimiter") or None
    limit = _max_keys(request)
    marker = request.query.get("marker", "")
    page = await _page(gw, bucket, prefix, marker or None, delimiter, limit)
    last = _last_item(page)
    body = list_objects_v1_xml(
        _listing(bucket, request, page, prefix, delimiter, limit),
        marker=marker,
        next_marker=last if page.truncated else None,
    )
    return web.Response(body=body, content_type=XML_TYPE)
