"""The S3 gateway with boto3 (a real S3 client) against a real PFS, PostgreSQL, NATS and
object store: buckets, listings, reads, writes, multipart, errors as S3 names them."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import crc32c
import pytest
from botocore.exceptions import ClientError

from services.s3gateway.buckets import parse_bucket
from services.s3gateway.errors import S3Error
from services.s3gateway.reads import ByteRange, parse_range
from services.s3gateway.routing import Target, target_of
from shared.api.pfs_client import PfsClient
from tests.fixtures.pfs import RunningPfs
from tests.fixtures.s3gateway import RunningGateway

T = TypeVar("T")
BUCKET = "master.data"


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """boto3 is synchronous and the gateway serves in this loop: call it from a thread."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def error_of(exc: ClientError) -> tuple[int, str]:
    return exc.response["ResponseMetadata"]["HTTPStatusCode"], exc.response["Error"]["Code"]


async def refused(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[int, str]:
    with pytest.raises(ClientError) as caught:
        await call(fn, *args, **kwargs)
    return error_of(caught.value)


@pytest.fixture
async def repo(pfs_client: PfsClient) -> str:
    await pfs_client.create_repo("data")
    return "data"


# ---------------------------------------------------------------------- pure parts


def test_bucket_names_follow_pachyderm() -> None:
    assert parse_bucket("master.images").writable
    commit = "0123456789abcdef0123456789abcdef"
    bucket = parse_bucket(f"{commit}.master.images")
    assert (bucket.repo, bucket.branch, bucket.commit, bucket.writable) == (
        "images",
        "master",
        commit,
        False,
    )
    for bad in ("images", "a.b.c", "x.master.images", "a..b", ""):
        with pytest.raises(S3Error) as caught:
            parse_bucket(bad)
        assert caught.value.s3_code == "NoSuchBucket"


def test_path_style_and_virtual_hosted_style_name_the_same_object() -> None:
    domains = ("localhost", "s3.example.com")
    assert target_of("localhost:7655", "/master.r/a%20b/c%25.txt?x=1", domains) == Target(
        "master.r", "a b/c%.txt"
    )
    assert target_of("master.r.localhost:7655", "/a%20b/c%25.txt", domains) == Target(
        "master.r", "a b/c%.txt"
    )
    assert target_of("master.r.s3.example.com", "/", domains) == Target("master.r", None)
    assert target_of("127.0.0.1:7655", "/", domains) == Target(None, None)
    assert target_of("127.0.0.1", "/master.r/", domains) == Target("master.r", None)


def test_range_headers() -> None:
    assert parse_range("bytes=0-9", 100) == ByteRange(0, 10)
    assert parse_range("bytes=90-", 100) == ByteRange(90, 100)
    assert parse_range("bytes=-5", 100) == ByteRange(95, 100)
    assert parse_range("bytes=50-1000", 100) == ByteRange(50, 100)
    assert parse_range("bytes=0-1,5-6", 100) is None  # S3 serves the whole object
    assert parse_range("items=0-1", 100) is None
    with pytest.raises(S3Error) as caught:
        parse_range("bytes=100-", 100)
    assert caught.value.status == 416


# ------------------------------------------------------------------ through boto3

KEYS = ["plain.txt", "with space/and more.csv", "ünïcødé/файл.txt", "100%/a+b&c.txt", "é"]


async def test_keys_with_spaces_unicode_and_percent_round_trip(repo: str, s3: Any) -> None:
    for key in KEYS:
        await call(s3.put_object, Bucket=BUCKET, Key=key, Body=key.encode())
    for key in KEYS:
        body = await call(lambda k=key: s3.get_object(Bucket=BUCKET, Key=k)["Body"].read())
        assert body == key.encode()
    in_order = sorted(KEYS, key=str.encode)
    # botocore asks for encoding-type=url itself and decodes the keys it gets
    listed = await call(s3.list_objects_v2, Bucket=BUCKET)
    assert [o["Key"] for o in listed["Contents"]] == in_order
    v1 = await call(s3.list_objects, Bucket=BUCKET)
    assert [o["Key"] for o in v1["Contents"]] == in_order
    # asked for explicitly, it leaves them encoded
    raw = await call(s3.list_objects_v2, Bucket=BUCKET, EncodingType="url")
    assert [o["Key"] for o in raw["Contents"]] == [quote(k, safe="/") for k in in_order]


async def test_every_write_is_a_commit_and_buckets_are_branches(
    repo: str, s3: Any, pfs_client: PfsClient
) -> None:
    await call(s3.put_object, Bucket=BUCKET, Key="a", Body=b"1")
    await call(s3.put_object, Bucket="dev.data", Key="b", Body=b"2")  # a write makes the branch
    await call(s3.delete_object, Bucket=BUCKET, Key="a")
    commits = [c async for c in pfs_client.iter_commits("data", "master")]
    assert len(commits) == 2 and all(c.state == "finished" for c in commits)
    names = [b["Name"] for b in (await call(s3.list_buckets))["Buckets"]]
    assert names == ["dev.data", "master.data"]
    await call(s3.head_bucket, Bucket="dev.data")
    assert await refused(s3.head_bucket, Bucket="nope.data") == (404, "404")
    location = await call(s3.get_bucket_location, Bucket=BUCKET)
    assert location.get("LocationConstraint") is None
    versioning = await call(s3.get_bucket_versioning, Bucket=BUCKET)
    assert "Status" not in versioning


async def test_writes_go_into_the_open_commit_and_reads_see_the_finished_one(
    repo: str, s3: Any, pfs_client: PfsClient
) -> None:
    await call(s3.put_object, Bucket=BUCKET, Key="old", Body=b"old")
    opened = await pfs_client.start_commit("data", "master")
    for i in range(3):
        await call(s3.put_object, Bucket=BUCKET, Key=f"new{i}", Body=b"n")
    listed = await call(s3.list_objects_v2, Bucket=BUCKET)
    assert [o["Key"] for o in listed["Contents"]] == ["old"]
    assert await refused(s3.head_object, Bucket=BUCKET, Key="new0") == (404, "404")
    await pfs_client.finish_commit("data", opened.id)
    listed = await call(s3.list_objects_v2, Bucket=BUCKET)
    assert [o["Key"] for o in listed["Contents"]] == ["new0", "new1", "new2", "old"]
    commits = [c async for c in pfs_client.iter_commits("data", "master")]
    assert len(commits) == 2  # the three writes went into the open commit


async def test_a_commit_bucket_reads_that_commit_and_refuses_writes(
    repo: str, s3: Any, pfs_client: PfsClient
) -> None:
    await call(s3.put_object, Bucket=BUCKET, Key="f", Body=b"first")
    first = (await pfs_client.inspect_commit("data", "master")).id
    await call(s3.put_object, Bucket=BUCKET, Key="f", Body=b"second")
    pinned = f"{first}.master.data"
    body = await call(lambda: s3.get_object(Bucket=pinned, Key="f")["Body"].read())
    assert body == b"first"
    assert await refused(s3.put_object, Bucket=pinned, Key="g", Body=b"x") == (403, "AccessDenied")
    assert await refused(s3.delete_object, Bucket=pinned, Key="f") == (403, "AccessDenied")
    assert await refused(s3.list_objects_v2, Bucket=f"{first}.dev.data") == (404, "NoSuchBucket")


async def test_listing_pages_with_prefix_delimiter_tokens_and_start_after(
    repo: str, s3: Any, pfs_client: PfsClient
) -> None:
    files = [f"/logs/{d}/{i:03d}.log" for d in ("a", "b") for i in range(30)]
    files += [f"/top{i}.txt" for i in range(5)] + ["/logsheet.csv"]

    async def sources() -> Any:
        for path in files:
            yield path, _once(path.encode())

    await pfs_client.put_files("data", "master", sources())
    paginator = s3.get_paginator("list_objects_v2")
    pages = await call(
        lambda: list(paginator.paginate(Bucket=BUCKET, PaginationConfig={"PageSize": 7}))
    )
    keys = [o["Key"] for p in pages for o in p.get("Contents", [])]
    assert keys == sorted(p[1:] for p in files) and len(pages) == 10
    top = await call(s3.list_objects_v2, Bucket=BUCKET, Delimiter="/")
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["logs/"]
    assert [o["Key"] for o in top["Contents"]][:1] == ["logsheet.csv"]
    under = await call(s3.list_objects_v2, Bucket=BUCKET, Prefix="logs/", Delimiter="/")
    assert [p["Prefix"] for p in under["CommonPrefixes"]] == ["logs/a/", "logs/b/"]
    # a prefix that is not a directory, and a page of prefixes and keys mixed
    partial = await call(s3.list_objects_v2, Bucket=BUCKET, Prefix="log")
    assert len(partial["Contents"]) == 61
    mixed = await call(s3.list_objects_v2, Bucket=BUCKET, Delimiter="/", MaxKeys=1)
    assert mixed["IsTruncated"] and [p["Prefix"] for p in mixed["CommonPrefixes"]] == ["logs/"]
    rest = await call(
        s3.list_objects_v2,
        Bucket=BUCKET,
        Delimiter="/",
        ContinuationToken=mixed["NextContinuationToken"],
    )
    assert rest["Contents"][0]["Key"] == "logsheet.csv"
    after = await call(s3.list_objects_v2, Bucket=BUCKET, StartAfter="logs/b/028.log")
    assert [o["Key"] for o in after["Contents"]][:2] == ["logs/b/029.log", "logsheet.csv"]
    v1 = s3.get_paginator("list_objects")
    keys_v1 = await call(
        lambda: [
            o["Key"]
            for p in v1.paginate(Bucket=BUCKET, PaginationConfig={"PageSize": 9})
            for o in p["Contents"]
        ]
    )
    assert keys_v1 == keys
    empty = await call(s3.list_objects_v2, Bucket=BUCKET, MaxKeys=0)
    assert empty["KeyCount"] == 0 and not empty["IsTruncated"]


async def _once(data: bytes) -> Any:
    yield data


async def test_ranges_and_conditional_reads(repo: str, s3: Any) -> None:
    data = os.urandom(3 << 20)
    put = await call(s3.put_object, Bucket=BUCKET, Key="blob", Body=data)
    etag = put["ETag"]
    head = await call(s3.head_object, Bucket=BUCKET, Key="blob")
    assert head["ContentLength"] == len(data) and head["ETag"] == etag

    async def get(**kwargs: Any) -> Any:
        return await call(s3.get_object, Bucket=BUCKET, Key="blob", **kwargs)

    part = await get(Range="bytes=1048570-2097160")
    assert part["ContentRange"] == f"bytes 1048570-2097160/{len(data)}"
    assert await call(part["Body"].read) == data[1048570:2097161]
    tail = await get(Range="bytes=-10")
    assert await call(tail["Body"].read) == data[-10:]
    assert await refused(s3.get_object, Bucket=BUCKET, Key="blob", Range=f"bytes={len(data)}-") == (
        416,
        "InvalidRange",
    )
    assert await refused(s3.get_object, Bucket=BUCKET, Key="blob", IfNoneMatch=etag) == (304, "304")
    assert await refused(s3.get_object, Bucket=BUCKET, Key="blob", IfMatch='"other"') == (
        412,
        "PreconditionFailed",
    )
    later = datetime.now(UTC) + timedelta(hours=1)
    assert await refused(s3.get_object, Bucket=BUCKET, Key="blob", IfModifiedSince=later) == (
        304,
        "304",
    )
    matched = await get(IfMatch=etag, IfModifiedSince=datetime.now(UTC) - timedelta(hours=1))
    assert len(await call(matched["Body"].read)) == len(data)


async def test_upload_digests_are_verified(repo: str, s3: Any, s3gateway: RunningGateway) -> None:
    data = b"digest me" * 1000
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    await call(s3.put_object, Bucket=BUCKET, Key="ok", Body=data, ContentMD5=md5)
    wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    assert await refused(s3.put_object, Bucket=BUCKET, Key="bad", Body=data, ContentMD5=wrong) == (
        400,
        "BadDigest",
    )
    for algorithm in ("CRC32", "SHA1", "SHA256"):
        await call(
            s3.put_object, Bucket=BUCKET, Key=algorithm, Body=data, ChecksumAlgorithm=algorithm
        )
    sha = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    assert await refused(
        s3.put_object, Bucket=BUCKET, Key="bad", Body=data, ChecksumSHA256=sha
    ) == (400, "BadDigest")
    # botocore needs awscrt for CRC32C; send the header as such a client would
    value = base64.b64encode(crc32c.crc32c(data).to_bytes(4, "big")).decode()
    async with aiohttp.ClientSession() as session:
        for key, digest in (("crc32c", value), ("bad", "AAAAAA==")):
            async with session.put(
                f"{s3gateway.url}/{BUCKET}/{key}",
                data=data,
                headers={"x-amz-checksum-crc32c": digest},
            ) as response:
                assert response.status == (200 if key == "crc32c" else 400)
    listed = await call(s3.list_objects_v2, Bucket=BUCKET)
    assert "bad" not in [o["Key"] for o in listed["Contents"]]


async def test_multipart_upload_lands_one_file_by_reference(
    repo: str, s3: Any, pfs: RunningPfs, pfs_client: PfsClient
) -> None:
    parts_data = [os.urandom(5 << 20), os.urandom(5 << 20), b"tail" * 100]
    upload = await call(s3.create_multipart_upload, Bucket=BUCKET, Key="big/file.bin")
    upload_id = upload["UploadId"]
    etags = []
    for number, data in enumerate(parts_data, 1):
        part = await call(
            s3.upload_part,
            Bucket=BUCKET,
            Key="big/file.bin",
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
        )
        etags.append(part["ETag"])
    uploads = await call(s3.list_multipart_uploads, Bucket=BUCKET)
    assert [u["UploadId"] for u in uploads["Uploads"]] == [upload_id]
    listed = await call(s3.list_parts, Bucket=BUCKET, Key="big/file.bin", UploadId=upload_id)
    assert [p["Size"] for p in listed["Parts"]] == [len(d) for d in parts_data]
    wrong = [{"PartNumber": 1, "ETag": etags[1]}]
    assert await refused(
        s3.complete_multipart_upload,
        Bucket=BUCKET,
        Key="big/file.bin",
        UploadId=upload_id,
        MultipartUpload={"Parts": wrong},
    ) == (400, "InvalidPart")
    small_first = [{"PartNumber": 3, "ETag": etags[2]}, {"PartNumber": 4, "ETag": etags[0]}]
    assert (
        await refused(
            s3.complete_multipart_upload,
            Bucket=BUCKET,
            Key="big/file.bin",
            UploadId=upload_id,
            MultipartUpload={"Parts": small_first},
        )
    )[0] == 400
    await call(
        s3.complete_multipart_upload,
        Bucket=BUCKET,
        Key="big/file.bin",
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]},
    )
    body = await call(lambda: s3.get_object(Bucket=BUCKET, Key="big/file.bin")["Body"].read())
    assert body == b"".join(parts_data)
    info = await pfs_client.inspect_file("data", "master", "/big/file.bin")
    assert info.size_bytes == len(body)
    # The stored hash is the file's BLAKE3, as if it had been written in one put.
    import blake3

    assert info.hash == blake3.blake3(body).hexdigest()
    assert (await call(s3.list_multipart_uploads, Bucket=BUCKET)).get("Uploads") is None
    assert await refused(s3.list_parts, Bucket=BUCKET, Key="big/file.bin", UploadId=upload_id) == (
        404,
        "NoSuchUpload",
    )


async def test_small_parts_are_refused_and_aborted_uploads_vanish(repo: str, s3: Any) -> None:
    upload_id = (await call(s3.create_multipart_upload, Bucket=BUCKET, Key="k"))["UploadId"]
    etags = [
        (
            await call(
                s3.upload_part, Bucket=BUCKET, Key="k", UploadId=upload_id, PartNumber=n, Body=b"x"
            )
        )["ETag"]
        for n in (1, 2)
    ]
    assert await refused(
        s3.complete_multipart_upload,
        Bucket=BUCKET,
        Key="k",
        UploadId=upload_id,
        MultipartUpload={
            "Parts": [{"PartNumber": n, "ETag": e} for n, e in zip((1, 2), etags, strict=True)]
        },
    ) == (400, "EntityTooSmall")
    await call(s3.abort_multipart_upload, Bucket=BUCKET, Key="k", UploadId=upload_id)
    assert await refused(
        s3.upload_part, Bucket=BUCKET, Key="k", UploadId=upload_id, PartNumber=3, Body=b"x"
    ) == (404, "NoSuchUpload")
    assert await refused(
        s3.upload_part, Bucket=BUCKET, Key="k", UploadId=upload_id, PartNumber=0, Body=b"x"
    ) == (400, "InvalidArgument")


async def test_copies_reference_the_same_chunks(
    repo: str, s3: Any, pfs_client: PfsClient, pfs: RunningPfs
) -> None:
    data = os.urandom(6 << 20)
    await call(s3.put_object, Bucket=BUCKET, Key="src", Body=data)
    chunks = [k async for k in pfs.service.store.list("chunks/")]
    await call(
        s3.copy_object, Bucket=BUCKET, Key="dst/copy", CopySource={"Bucket": BUCKET, "Key": "src"}
    )
    upload_id = (await call(s3.create_multipart_upload, Bucket=BUCKET, Key="parts"))["UploadId"]
    copied = await call(
        s3.upload_part_copy,
        Bucket=BUCKET,
        Key="parts",
        UploadId=upload_id,
        PartNumber=1,
        CopySource={"Bucket": BUCKET, "Key": "src"},
        CopySourceRange=f"bytes=0-{(5 << 20) - 1}",
    )
    tail = await call(
        s3.upload_part_copy,
        Bucket=BUCKET,
        Key="parts",
        UploadId=upload_id,
        PartNumber=2,
        CopySource={"Bucket": BUCKET, "Key": "src"},
        CopySourceRange=f"bytes={5 << 20}-{len(data) - 1}",
    )
    parts = [
        {"PartNumber": 1, "ETag": copied["CopyPartResult"]["ETag"]},
        {"PartNumber": 2, "ETag": tail["CopyPartResult"]["ETag"]},
    ]
    await call(
        s3.complete_multipart_upload,
        Bucket=BUCKET,
        Key="parts",
        UploadId=upload_id,
        MultipartUpload={"Parts": parts},
    )
    assert [k async for k in pfs.service.store.list("chunks/")] == chunks  # no byte copied
    for key in ("dst/copy", "parts"):
        assert await pfs_client.file_entry(
            "data", "master", "/" + key
        ) == await pfs_client.file_entry("data", "master", "/src")


async def test_deletes(repo: str, s3: Any) -> None:
    for key in ("a", "b", "c/d"):
        await call(s3.put_object, Bucket=BUCKET, Key=key, Body=b"x")
    await call(s3.delete_object, Bucket=BUCKET, Key="missing")  # S3: not an error
    result = await call(
        s3.delete_objects,
        Bucket=BUCKET,
        Delete={"Objects": [{"Key": "a"}, {"Key": "c/d"}, {"Key": "nope"}]},
    )
    assert sorted(d["Key"] for d in result["Deleted"]) == ["a", "c/d", "nope"]
    listed = await call(s3.list_objects_v2, Bucket=BUCKET)
    assert [o["Key"] for o in listed["Contents"]] == ["b"]


async def test_client_mistakes_are_s3_errors_never_500(repo: str, s3: Any) -> None:
    assert await refused(s3.get_object, Bucket=BUCKET, Key="nothing") == (404, "NoSuchKey")
    assert await refused(s3.get_object, Bucket="master.nothing", Key="x") == (404, "NoSuchBucket")
    assert await refused(s3.list_objects_v2, Bucket="not-ours") == (404, "NoSuchBucket")
    assert await refused(s3.put_object, Bucket="master.nothing", Key="x", Body=b"") == (
        404,
        "NoSuchBucket",
    )
    assert await refused(s3.put_object, Bucket=BUCKET, Key="a//b", Body=b"x") == (
        400,
        "InvalidArgument",
    )
    assert await refused(s3.list_objects_v2, Bucket=BUCKET, ContinuationToken="%%%") == (
        400,
        "InvalidArgument",
    )
    await call(s3.put_object, Bucket=BUCKET, Key="dir/file", Body=b"x")
    assert await refused(s3.get_object, Bucket=BUCKET, Key="dir") == (404, "NoSuchKey")
    await call(
        s3.put_object, Bucket=BUCKET, Key="folder/", Body=b""
    )  # a folder marker: kept implicit
    assert await refused(s3.put_object, Bucket=BUCKET, Key="dir/file/x", Body=b"x") == (
        400,
        "InvalidArgument",
    )


async def test_virtual_hosted_style_and_presigned_urls(
    repo: str, s3: Any, s3gateway: RunningGateway
) -> None:
    await call(s3.put_object, Bucket=BUCKET, Key="v h/ü.txt", Body=b"hosted")
    url = await call(
        s3.generate_presigned_url, "get_object", Params={"Bucket": BUCKET, "Key": "v h/ü.txt"}
    )
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            assert response.status == 200 and await response.read() == b"hosted"
        headers = {"Host": f"{BUCKET}.localhost:{s3gateway.port}"}
        target = f"http://127.0.0.1:{s3gateway.port}/v%20h/%C3%BC.txt"
        async with session.get(target, headers=headers) as response:
            assert response.status == 200 and await response.read() == b"hosted"
        async with session.get(
            f"http://127.0.0.1:{s3gateway.port}/?list-type=2", headers=headers
        ) as response:
            assert (
                response.status == 200 and b"<Key>v h/\xc3\xbc.txt</Key>" in await response.read()
            )
        async with session.get(
            f"http://127.0.0.1:{s3gateway.port}/", headers={"Host": "evil.example"}
        ) as response:
            assert response.status == 421
        async with session.post(
            f"http://127.0.0.1:{s3gateway.port}/{BUCKET}?delete",
            data=b"<Delete><Object><Key>x",
            headers={"Content-Type": "application/xml"},
        ) as response:
            assert response.status == 400 and b"<Code>MalformedXML</Code>" in await response.read()


async def test_upload_streams_chunked_bodies_from_unsigned_and_signed_clients(
    repo: str, s3gateway: RunningGateway
) -> None:
    from tests.fixtures.s3gateway import s3_client

    data = os.urandom((3 << 20) + 7)
    # boto3 signs payloads over plain HTTP; over TLS it streams aws-chunked with a trailer.
    unsigned = s3_client(s3gateway.url, request_checksum_calculation="when_supported")
    await call(unsigned.upload_fileobj, io.BytesIO(data), BUCKET, "via-upload-fileobj")
    chunked = (
        b"%x;chunk-signature=abc\r\n" % 5 + b"hello\r\n" + b"6;chunk-signature=def\r\n world\r\n"
        b"0;chunk-signature=0\r\n\r\n"
    )
    async with aiohttp.ClientSession() as session:
        async with session.put(
            f"{s3gateway.url}/{BUCKET}/chunked",
            data=chunked,
            headers={
                "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
                "Content-Encoding": "aws-chunked",
                "x-amz-decoded-content-length": "11",
            },
        ) as response:
            assert response.status == 200, await response.text()
        trailer = b"b\r\nhello world\r\n0\r\nx-amz-checksum-crc32:DUoRhQ==\r\n\r\n"
        async with session.put(
            f"{s3gateway.url}/{BUCKET}/trailer",
            data=trailer,
            headers={
                "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
                "Content-Encoding": "aws-chunked",
                "x-amz-trailer": "x-amz-checksum-crc32",
                "x-amz-decoded-content-length": "11",
            },
        ) as response:
            assert response.status == 200, await response.text()
        bad = trailer.replace(b"DUoRhQ==", b"AAAAAA==")
        async with session.put(
            f"{s3gateway.url}/{BUCKET}/bad",
            data=bad,
            headers={
                "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
                "Content-Encoding": "aws-chunked",
                "x-amz-trailer": "x-amz-checksum-crc32",
            },
        ) as response:
            assert response.status == 400 and b"BadDigest" in await response.read()
    for key, want in (
        ("chunked", b"hello world"),
        ("trailer", b"hello world"),
        ("via-upload-fileobj", data),
    ):
        body = await call(lambda k=key: unsigned.get_object(Bucket=BUCKET, Key=k)["Body"].read())
        assert body == want


async def test_a_slow_complete_answers_at_once_and_sends_its_result_later(
    repo: str, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.s3gateway import multipart

    # As if joining the parts took longer than a client waits for a first byte.
    monkeypatch.setattr(multipart, "COMPLETE_PATIENCE_S", 0)
    monkeypatch.setattr(multipart, "KEEPALIVE_S", 0.01)
    data = os.urandom(6 << 20)
    upload_id = (await call(s3.create_multipart_upload, Bucket=BUCKET, Key="slow"))["UploadId"]
    etag = (
        await call(
            s3.upload_part, Bucket=BUCKET, Key="slow", UploadId=upload_id, PartNumber=1, Body=data
        )
    )["ETag"]
    done = await call(
        s3.complete_multipart_upload,
        Bucket=BUCKET,
        Key="slow",
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]},
    )
    assert done["Key"] == "slow"
    body = await call(lambda: s3.get_object(Bucket=BUCKET, Key="slow")["Body"].read())
    assert body == data


async def test_a_new_repo_lists_its_master_as_an_empty_bucket(repo: str, s3: Any) -> None:
    names = [b["Name"] for b in (await call(s3.list_buckets))["Buckets"]]
    assert names == [BUCKET]
    listed = await call(s3.list_objects_v2, Bucket=BUCKET)
    assert listed["KeyCount"] == 0
    assert await refused(s3.head_bucket, Bucket="dev.data") == (404, "404")
