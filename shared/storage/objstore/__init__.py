"""The object-store port: the one interface PFS, workers and mountd use to keep bytes.

Keys are ``/``-separated strings such as ``chunks/ab/<hash>``. Every adapter gives the
same guarantees, tested against each one in ``tests/test_objstore.py``:

- ``put`` is atomic: a reader sees the whole new value or the old one, never a part;
- ``get`` of a missing key raises ``shared.platform.errors.NotFound``; a byte range ``[start, end)``
  is clipped to the object's size (a range past the end gives ``b""``);
- ``delete`` of a missing key is not an error;
- ``list(prefix)`` yields every key starting with ``prefix`` (a plain string prefix, as
  in S3), in sorted order.

Adapters: a local directory (``file:///abs/dir``, ``shared.storage.objstore.local``) and S3
(``"s3"`` + ``Config.s3``, ``shared.storage.objstore.s3``). Tests count the work a caller
does with an adapter of their own that wraps either (``tests/fixtures/counting_store.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from shared.platform.config import Config
from shared.platform.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class ObjectStat:
    """A listed object: its key, size in bytes and last write (Unix seconds)."""

    key: str
    size: int
    modified: float


class ObjectStore(Protocol):
    """Put, get (with byte range), exists, delete and list of immutable-by-convention blobs."""

    async def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically, replacing any old value."""
        ...

    async def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """Return bytes ``[start, end)`` of the object; raise ``NotFound`` if it is missing."""
        ...

    async def exists(self, key: str) -> bool:
        """Return whether an object is stored under ``key``."""
        ...

    async def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""
        ...

    def list(self, prefix: str) -> AsyncIterator[str]:
        """Yield the keys starting with ``prefix`` in sorted order."""
        ...

    def list_stats(self, prefix: str) -> AsyncIterator[ObjectStat]:
        """Like ``list``, with each object's size and last write (the garbage collector's
        view: it spares objects written recently)."""
        ...

    async def delete_many(self, keys: Sequence[str]) -> None:
        """Remove ``keys`` (missing ones are not an error); S3 does it 1,000 per request."""
        ...

    async def close(self) -> None:
        """Release connections and threads; the store is unusable afterwards."""
        ...


def check_range(start: int | None, end: int | None) -> tuple[int, int | None]:
    """Validate a ``get`` byte range and return it with ``start`` defaulted to 0."""
    first = 0 if start is None else start
    if first < 0 or (end is not None and end < first):
        raise InvalidArgument(f"invalid byte range [{start}, {end}): need 0 <= start <= end")
    return first, end


@asynccontextmanager
async def open_object_store(config: Config) -> AsyncIterator[ObjectStore]:
    """Open the store ``config.object_store`` names, and close it on exit."""
    store: ObjectStore
    spec = config.object_store
    if spec.startswith("file://"):
        from shared.storage.objstore.local import LocalStore

        store = LocalStore(spec.removeprefix("file://"))
    elif spec == "s3":
        from shared.storage.objstore.s3 import S3Store

        store = await S3Store.connect(config.s3)
    else:
        raise InvalidArgument(
            f"object_store {spec!r} is not supported: use 'file:///absolute/dir' or 's3'"
        )
    try:
        yield store
    finally:
        await store.close()


__all__ = [
    "ObjectStat",
    "ObjectStore",
    "check_range",
    "open_object_store",
]
