"""S3's XML bodies: pure renderers for responses and parsers for request bodies.

Every value goes through ElementTree, so keys with ``<``, ``&`` or unicode are escaped
rather than spliced. ``encoding-type=url`` keys are percent-encoded with ``/`` kept, as
S3 does (botocore decodes them back).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import escape

from services.s3gateway.errors import S3Error

NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
XML_TYPE = "application/xml"
# Request bodies read whole (DeleteObjects of 1,000 keys, Complete of 10,000 parts).
MAX_XML_BODY = 4 << 20


def iso_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def http_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")


def _root(tag: str, *, namespaced: bool = True) -> ET.Element:
    root = ET.Element(tag)
    if namespaced:
        root.set("xmlns", NAMESPACE)
    return root


def _add(parent: ET.Element, tag: str, value: Any = None) -> ET.Element:
    child = ET.SubElement(parent, tag)
    if value is not None:
        child.text = (
            value
            if isinstance(value, str)
            else str(value).lower()
            if isinstance(value, bool)
            else str(value)
        )
    return child


def to_bytes(root: ET.Element) -> bytes:
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8")


def error_xml(code: str, message: str, resource: str, request_id: str, **details: Any) -> bytes:
    root = _root("Error", namespaced=False)
    _add(root, "Code", code)
    _add(root, "Message", message)
    for name, value in details.items():
        _add(root, name, value)
    _add(root, "Resource", resource)
    _add(root, "RequestId", request_id)
    return to_bytes(root)


def list_buckets_xml(buckets: Iterable[tuple[str, datetime]]) -> bytes:
    root = _root("ListAllMyBucketsResult")
    owner = _add(root, "Owner")
    _add(owner, "ID", "tusk")
    _add(owner, "DisplayName", "tusk")
    listed = _add(root, "Buckets")
    for name, created in buckets:
        bucket = _add(listed, "Bucket")
        _add(bucket, "Name", name)
        _add(bucket, "CreationDate", iso_time(created))
    return to_bytes(root)


def location_xml() -> bytes:
    # An empty LocationConstraint is us-east-1, which every client accepts.
    return to_bytes(_root("LocationConstraint"))


def versioning_xml() -> bytes:
    # No <Status>: versioning was never enabled (S3's answer for such a bucket).
    return to_bytes(_root("VersioningConfiguration"))


@dataclass(frozen=True)
class ListedObject:
    key: str
    size: int
    etag: str
    modified: datetime


@dataclass(frozen=True)
class Listing:
    """One page of a listing, whatever the API version."""

    bucket: str
    prefix: str
    delimiter: str | None
    max_keys: int
    objects: Sequence[ListedObject]
    prefixes: Sequence[str]
    truncated: bool
    url_encoded: bool


def _enc(listing: Listing, value: str) -> str:
    return quote(value, safe="/") if listing.url_encoded else value


def _text(tag: str, value: object) -> str:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return f"<{tag}>{escape(text)}</{tag}>"


def _listing_document(head: list[str], listing: Listing) -> bytes:
    """Listings are rendered as text, not through ElementTree: a page of 1,000 keys is
    the hot path of every listing client, and this is ~5x faster (values still escaped)."""
    parts = ['<?xml version="1.0" encoding="UTF-8"?>\n', f'<ListBucketResult xmlns="{NAMESPACE}">']
    parts.extend(head)
    times: dict[datetime, str] = {}
    for obj in listing.objects:
        modified = times.get(obj.modified)
        if modified is None:
            modified = times[obj.modified] = iso_time(obj.modified)
        parts.append(
            f"<Contents>{_text('Key', _enc(listing, obj.key))}<LastModified>{modified}</LastModified>"
            f"{_text('ETag', obj.etag)}<Size>{obj.size}</Size><StorageClass>STANDARD</StorageClass></Contents>"
        )
    for prefix in listing.prefixes:
        parts.append(f"<CommonPrefixes>{_text('Prefix', _enc(listing, prefix))}</CommonPrefixes>")
    if listing.url_encoded:
        parts.append("<EncodingType>url</EncodingType>")
    parts.append("</ListBucketResult>")
    return "".join(parts).encode()


def list_objects_v2_xml(
    listing: Listing,
    *,
    continuation: str | None,
    next_continuation: str | None,
    start_after: str | None,
) -> bytes:
    head = [_text("Name", listing.bucket), _text("Prefix", _enc(listing, listing.prefix))]
    if listing.delimiter:
        head.append(_text("Delimiter", _enc(listing, listing.delimiter)))
    head.append(_text("MaxKeys", listing.max_keys))
    head.append(_text("KeyCount", len(listing.objects) + len(listing.prefixes)))
    head.append(_text("IsTruncated", listing.truncated))
    if continuation is not None:
        head.append(_text("ContinuationToken", continuation))
    if next_continuation is not None:
        head.append(_text("NextContinuationToken", next_continuation))
    if start_after:
        head.append(_text("StartAfter", _enc(listing, start_after)))
    return _listing_document(head, listing)


def list_objects_v1_xml(listing: Listing, *, marker: str, next_marker: str | None) -> bytes:
    head = [
        _text("Name", listing.bucket),
        _text("Prefix", _enc(listing, listing.prefix)),
        _text("Marker", _enc(listing, marker)),
    ]
    if listing.delimiter:
        head.append(_text("Delimiter", _enc(listing, listing.delimiter)))
    head.append(_text("MaxKeys", listing.max_keys))
    head.append(_text("IsTruncated", listing.truncated))
    if next_marker is not None:
        head.append(_text("NextMarker", _enc(listing, next_marker)))
    return _listing_document(head, listing)


def copy_result_xml(tag: str, etag: str, modified: datetime) -> bytes:
    root = _root(tag)
    _add(root, "LastModified", iso_time(modified))
    _add(root, "ETag", etag)
    return to_bytes(root)


def initiate_upload_xml(bucket: str, key: str, upload_id: str) -> bytes:
    root = _root("InitiateMultipartUploadResult")
    _add(root, "Bucket", bucket)
    _add(root, "Key", key)
    _add(root, "UploadId", upload_id)
    return to_bytes(root)


def complete_upload_xml(location: str, bucket: str, key: str, etag: str) -> bytes:
    root = _root("CompleteMultipartUploadResult")
    _add(root, "Location", location)
    _add(root, "Bucket", bucket)
    _add(root, "Key", key)
    _add(root, "ETag", etag)
    return to_bytes(root)


@dataclass(frozen=True)
class ListedPart:
    number: int
    size: int
    etag: str
    modified: datetime


def list_parts_xml(
    bucket: str,
    key: str,
    upload_id: str,
    parts: Sequence[ListedPart],
    *,
    marker: int,
    max_parts: int,
    truncated: bool,
) -> bytes:
    root = _root("ListPartsResult")
    _add(root, "Bucket", bucket)
    _add(root, "Key", key)
    _add(root, "UploadId", upload_id)
    _add(root, "PartNumberMarker", marker)
    if parts:
        _add(root, "NextPartNumberMarker", parts[-1].number)
    _add(root, "MaxParts", max_parts)
    _add(root, "IsTruncated", truncated)
    _add(root, "StorageClass", "STANDARD")
    for part in parts:
        item = _add(root, "Part")
        _add(item, "PartNumber", part.number)
        _add(item, "LastModified", iso_time(part.modified))
        _add(item, "ETag", part.etag)
        _add(item, "Size", part.size)
    return to_bytes(root)


def list_uploads_xml(
    bucket: str, uploads: Sequence[tuple[str, str, datetime]], *, prefix: str, max_uploads: int
) -> bytes:
    root = _root("ListMultipartUploadsResult")
    _add(root, "Bucket", bucket)
    _add(root, "KeyMarker", "")
    _add(root, "UploadIdMarker", "")
    _add(root, "Prefix", prefix)
    _add(root, "MaxUploads", max_uploads)
    _add(root, "IsTruncated", False)
    for key, upload_id, started in uploads:
        item = _add(root, "Upload")
        _add(item, "Key", key)
        _add(item, "UploadId", upload_id)
        _add(item, "StorageClass", "STANDARD")
        _add(item, "Initiated", iso_time(started))
    return to_bytes(root)


def delete_result_xml(
    deleted: Sequence[str], errors: Sequence[tuple[str, str, str]], *, quiet: bool
) -> bytes:
    root = _root("DeleteResult")
    if not quiet:
        for key in deleted:
            _add(_add(root, "Deleted"), "Key", key)
    for key, code, message in errors:
        item = _add(root, "Error")
        _add(item, "Key", key)
        _add(item, "Code", code)
        _add(item, "Message", message)
    return to_bytes(root)


# ------------------------------------------------------------------------------ parsing


def _parse(body: bytes) -> ET.Element:
    try:
        return ET.fromstring(body)
    except ET.ParseError:
        raise S3Error(400, "MalformedXML", "The XML you provided was not well-formed") from None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in element if _local(child.tag) == name]


def _child_text(element: ET.Element, name: str) -> str | None:
    found = _children(element, name)
    return (found[0].text or "") if found else None


def parse_complete(body: bytes) -> list[tuple[int, str]]:
    """(part number, ETag) of each part a CompleteMultipartUpload names, in its order."""
    root = _parse(body)
    parts = []
    for part in _children(root, "Part"):
        number, etag = _child_text(part, "PartNumber"), _child_text(part, "ETag")
        if number is None or etag is None or not number.strip().isdigit():
            raise S3Error(400, "MalformedXML", "each Part needs a PartNumber and an ETag")
        parts.append((int(number), etag.strip()))
    if not parts:
        raise S3Error(400, "MalformedXML", "CompleteMultipartUpload names no parts")
    return parts


def parse_delete(body: bytes) -> tuple[list[str], bool]:
    """(keys, quiet) of a DeleteObjects request."""
    root = _parse(body)
    keys = []
    for item in _children(root, "Object"):
        key = _child_text(item, "Key")
        if key is None:
            raise S3Error(400, "MalformedXML", "each Object needs a Key")
        keys.append(key)
    if len(keys) > 1000:
        raise S3Error(400, "MalformedXML", "DeleteObjects takes at most 1000 keys")
    quiet = (_child_text(root, "Quiet") or "").strip().lower() == "true"
    return keys, quiet
