"""Checksums a client sends with an upload (``Content-MD5``, ``x-amz-checksum-*``), checked
as the bytes stream through; a mismatch is ``BadDigest`` and nothing lands.

Only the algorithms a request names are computed, so an upload without them costs nothing.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import crc32c

from services.s3gateway.errors import S3Error

# Updates at least this big run in a worker thread (hashlib and crc32c release the GIL).
_THREAD_MIN = 256 << 10


class _Crc:
    def __init__(self, update: Callable[[bytes, int], int], width: int) -> None:
        self._update = update
        self._width = width
        self._value = 0

    def update(self, data: bytes) -> None:
        self._value = self._update(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(self._width, "big")


def _crc64nvme() -> Any:
    try:
        from awscrt import checksums  # type: ignore[import-not-found]
    except ImportError:
        raise S3Error(
            400, "InvalidRequest", "CRC64NVME checksums need awscrt, which is not installed"
        ) from None

    class Crc64:
        def __init__(self) -> None:
            self._value = 0

        def update(self, data: bytes) -> None:
            self._value = checksums.crc64nvme(data, self._value)

        def digest(self) -> bytes:
            return self._value.to_bytes(8, "big")

    return Crc64()


HASHERS: dict[str, Callable[[], Any]] = {
    "crc32": lambda: _Crc(zlib.crc32, 4),
    "crc32c": lambda: _Crc(crc32c.crc32c, 4),
    "crc64nvme": _crc64nvme,
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
}
CHECKSUM_HEADER = "x-amz-checksum-"


def _decode_b64(value: str, header: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise S3Error(400, "InvalidDigest", f"{header} is not valid base64") from None


class Checksums:
    """The digests one upload must match: from its headers, and from trailers announced by
    ``x-amz-trailer`` (their values arrive after the body)."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._expected: dict[str, bytes | None] = {}
        self._hashers: dict[str, Any] = {}
        md5 = headers.get("content-md5")
        if md5 is not None:
            self._want("md5", _decode_b64(md5, "Content-MD5"), hashlib.md5)
        for name, value in headers.items():
            lower = name.lower()
            if lower.startswith(CHECKSUM_HEADER) and lower != "x-amz-checksum-type":
                algorithm = lower[len(CHECKSUM_HEADER) :]
                self._want(algorithm, _decode_b64(value, name), HASHERS.get(algorithm))
        for trailer in headers.get("x-amz-trailer", "").split(","):
            lower = trailer.strip().lower()
            if lower.startswith(CHECKSUM_HEADER):
                algorithm = lower[len(CHECKSUM_HEADER) :]
                self._want(algorithm, None, HASHERS.get(algorithm))

    def _want(self, algorithm: str, digest: bytes | None, make: Callable[[], Any] | None) -> None:
        if make is None:
            raise S3Error(400, "InvalidRequest", f"unsupported checksum algorithm {algorithm}")
        self._expected[algorithm] = digest
        self._hashers[algorithm] = make()

    @property
    def wanted(self) -> bool:
        return bool(self._hashers)

    async def update(self, data: bytes) -> None:
        if not self._hashers:
            return
        if len(data) < _THREAD_MIN:
            for hasher in self._hashers.values():
                hasher.update(data)
            return
        await asyncio.gather(*(asyncio.to_thread(h.update, data) for h in self._hashers.values()))

    def verify(self, trailers: Mapping[str, str]) -> None:
        """Compare every digest; ``BadDigest`` names the first that differs."""
        for algorithm, hasher in self._hashers.items():
            expected = self._expected[algorithm]
            if expected is None:
                name = CHECKSUM_HEADER + algorithm
                value = trailers.get(name)
                if value is None:
                    raise S3Error(
                        400, "IncompleteBody", f"the trailer {name} was announced but not sent"
                    )
                expected = _decode_b64(value, name)
            if hasher.digest() != expected:
                what = "Content-MD5" if algorithm == "md5" else CHECKSUM_HEADER + algorithm
                raise S3Error(
                    400, "BadDigest", f"The {what} you specified did not match what we received."
                )
