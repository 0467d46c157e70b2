"""Object store on S3 (any S3-compatible server: AWS, SeaweedFS, MinIO…) through aiobotocore.

A key ``k`` is the object ``<prefix>k`` in the configured bucket; the bucket is created
when missing. S3 puts are atomic by themselves. botocore and aiohttp errors are turned
into the Tusk error tree here and never leak: a missing key is ``NotFound``; a server
that cannot be reached, denies access or answers 5xx is ``Unavailable``; anything else
is ``Internal``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from shared.platform.config import S3Config
from shared.platform.errors import Internal, InvalidArgument, NotFound, TuskError, Unavailable
from shared.storage.objstore import ObjectStat, check_range

_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
_UNAVAILABLE_CODES = {
    "SlowDown",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
    "NoSuchBucket",
}
_DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "401"}


@contextlib.contextmanager
def _translate_errors(what: str) -> Iterator[None]:
    """Turn botocore/aiohttp errors raised while doing ``what`` into Tusk errors."""
    try:
        yield
    except TuskError:
        raise
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        message = error.get("Message") or code
        if code in _MISSING_CODES:
            raise NotFound(f"{what}: not found") from None
        if code in _DENIED_CODES or status in (401, 403):
            raise Unavailable(
                f"{what}: S3 denied access ({code}); check the s3 access_key and secret_key"
            ) from None
        if code in _UNAVAILABLE_CODES or status >= 500:
            raise Unavailable(f"{what}: S3 refused ({code}: {message})") from None
        raise Internal(f"{what}: S3 error {code}: {message}") from None
    except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise Unavailable(f"{what}: S3 is unreachable ({exc})") from None


class S3Store:
    """An ``ObjectStore`` over one S3 bucket (and optional key prefix)."""

    def __init__(self, client: Any, exit_stack: AsyncExitStack, config: S3Config) -> None:
        self._client = client
        self._exit_stack = exit_stack
        self.bucket = config.bucket
        self.prefix = config.prefix

    @classmethod
    async def connect(cls, config: S3Config) -> S3Store:
        """Open a client for ``config`` and create the bucket if it does not exist."""
        botocore_config = AioConfig(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            max_pool_connections=32,
            # Content-MD5/CRC on every put costs CPU on the hot path; TLS and TCP already
            # check integrity in transit, and chunks are verified by their BLAKE3 name.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        exit_stack = AsyncExitStack()
        with _translate_errors(f"connecting to S3 at {config.endpoint_url or 'AWS'}"):
            client = await exit_stack.enter_async_context(
                get_session().create_client(
                    "s3",
                    endpoint_url=config.endpoint_url,
                    region_name=config.region,
                    aws_access_key_id=config.access_key,
                    aws_secret_access_key=config.secret_key,
                    config=botocore_config,
                )
            )
        store = cls(client, exit_stack, config)
        try:
            await store._ensure_bucket(config.region)
        except BaseException:
            await exit_stack.aclose()
            raise
        return store

    async def _ensure_bucket(self, region: str) -> None:
        with _translate_errors(f"checking bucket {self.bucket!r}"):
            try:
                await self._client.head_bucket(Bucket=self.bucket)
                return
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) not in _MISSING_CODES:
                    raise
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        with _translate_errors(f"creating bucket {self.bucket!r}"):
            try:
                await self._client.create_bucket(**kwargs)
            except ClientError as exc:
                # Another process may have created it in the meantime.
                code = str(exc.response.get("Error", {}).get("Code"))
                if code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                    raise

    def _key(self, key: str) -> str:
        if not key or key.startswith("/"):
            raise InvalidArgument(f"invalid object key {key!r}")
        return self.prefix + key

    async def put(self, key: str, data: bytes) -> None:
        """PUT the object (atomic in S3)."""
        with _translate_errors(f"writing object {key!r}"):
            await self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    async def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """GET the object or the byte range ``[start, end)`` of it."""
        first, end = check_range(start, end)
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key)}
        if end is not None:
            if end == first:
                # S3 cannot express an empty range; still report a missing key.
                if not await self.exists(key):
                    raise NotFound(f"reading object {key!r}: not found")
                return b""
            kwargs["Range"] = f"bytes={first}-{end - 1}"
        elif first:
            kwargs["Range"] = f"bytes={first}-"
        with _translate_errors(f"reading object {key!r}"):
            try:
                response = await self._client.get_object(**kwargs)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                    return b""  # the range starts past the end: clipped to nothing
                raise
            async with response["Body"] as body:
                data: bytes = await body.read()
                return data

    async def exists(self, key: str) -> bool:
        """HEAD the object."""
        with _translate_errors(f"checking object {key!r}"):
            try:
                await self._client.head_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) in _MISSING_CODES:
                    return False
                raise
        return True

    async def delete(self, key: str) -> None:
        """DELETE the object (S3 does not mind a missing key)."""
        with _translate_errors(f"deleting object {key!r}"):
            await self._client.delete_object(Bucket=self.bucket, Key=self._key(key))

    async def list(self, prefix: str) -> AsyncIterator[str]:
        """Yield keys under ``prefix`` page by page (S3 lists in sorted order)."""
        paginator = self._client.get_paginator("list_objects_v2")
        strip = len(self.prefix)
        with _translate_errors(f"listing objects under {prefix!r}"):
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for item in page.get("Contents", ()):
                    yield item["Key"][strip:]

    async def list_stats(self, prefix: str) -> AsyncIterator[ObjectStat]:
        """Yield keys under ``prefix`` with their size and LastModified, page by page."""
        paginator = self._client.get_paginator("list_objects_v2")
        strip = len(self.prefix)
        with _translate_errors(f"listing objects under {prefix!r}"):
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for item in page.get("Contents", ()):
                    modified = item["LastModified"].timestamp()
                    yield ObjectStat(item["Key"][strip:], int(item["Size"]), modified)

    async def delete_many(self, keys: Sequence[str]) -> None:
        """DeleteObjects, up to 1,000 keys per request (S3's limit)."""
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self._key(k)} for k in keys[start : start + 1000]]
            with _translate_errors(f"deleting {len(batch)} objects"):
                answer = await self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            failed = answer.get("Errors") or []
            if failed:
                first = failed[0]
                raise Unavailable(
                    f"S3 refused to delete {len(failed)} object(s), e.g. {first.get('Key')}: "
                    f"{first.get('Message') or first.get('Code')}"
                )

    async def close(self) -> None:
        """Close the HTTP connections."""
        await self._exit_stack.aclose()
