"""The object store as PFS uses it, made safe to collect garbage from while it is written.

Content addressing has one classic race with deletion: a writer finds chunk X already
stored and skips writing it (deduplication), while the collector — which found X
unreferenced a moment earlier — deletes it; the writer's commit then names a missing
chunk. ``GuardedStore`` closes it for every writer in this process:

- it records the keys each write *touches* (finds present, or puts) while a collection
  runs, and the keys touched by every upload still in flight when one starts; the
  collector never deletes a touched key;
- a batch the collector is deleting is *doomed* until the deletion finishes: ``exists``
  of a doomed key waits and answers False (so the writer stores it again) and ``put``
  waits, so a re-write can never land before the delete that would remove it;
- writers that skip the store because a cache says a key is stored (the file index's
  node cache, PFS's chunk cache) report that re-use with ``touch_reused``, and dooming a
  batch drops its keys from those caches (``on_doom``) in the same step, so after it the
  next writer asks the store.

Writers outside this process (workers, the S3 gateway) are protected by their owners'
answers to "what do you reference" and by age (see ``services.pfs.collector``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from shared.storage.objstore import ObjectStat, ObjectStore


@dataclass(eq=False)
class Upload:
    """One write in flight (a put request until its commit has landed)."""

    started: float
    touched: set[str] = field(default_factory=set)


_current: ContextVar[Upload | None] = ContextVar("tusk_pfs_upload", default=None)


class Guarded(Protocol):
    guard: GuardedStore


S = TypeVar("S", bound=Guarded)
P = ParamSpec("P")
T = TypeVar("T")


def in_flight(
    method: Callable[Concatenate[S, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[S, P], Coroutine[Any, Any, T]]:
    """Run a method that writes index nodes or chunks as an upload in flight, from its
    first write until its commit has landed (or it failed): a finish, a merge, a revert,
    a copy or a delete writes new nodes that no commit names until it lands."""

    @functools.wraps(method)
    async def run(self: S, *args: P.args, **kwargs: P.kwargs) -> T:
        async with self.guard.upload():
            return await method(self, *args, **kwargs)

    return run


class GuardedStore:
    """An ``ObjectStore`` that forwards to a real one and tracks what writers touch."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self._uploads: set[Upload] = set()
        self._touched: set[str] | None = None  # keys touched since a collection started
        self._doomed: dict[str, asyncio.Event] = {}
        self._doom_listeners: list[Callable[[Sequence[str]], None]] = []

    # -- what the service and the collector call -------------------------------------

    @contextlib.asynccontextmanager
    async def upload(self) -> AsyncIterator[Upload]:
        """Mark a write in flight for its whole length: store, then land its commit.
        Inside another upload it is that upload (one write, one start time)."""
        outer = _current.get()
        if outer is not None:
            yield outer
            return
        upload = Upload(time.time())
        self._uploads.add(upload)
        token = _current.set(upload)
        try:
            yield upload
        finally:
            _current.reset(token)
            self._uploads.discard(upload)

    def oldest_upload(self) -> float | None:
        """When the oldest write still in flight started (None: none is)."""
        return min((u.started for u in self._uploads), default=None)

    def start_collection(self) -> None:
        """From now on record every touched key, starting with those of uploads in flight."""
        touched: set[str] = set()
        for upload in self._uploads:
            touched |= upload.touched
        self._touched = touched

    def end_collection(self) -> None:
        self._touched = None

    def touched(self, key: str) -> bool:
        """Whether a writer touched ``key`` since the collection started."""
        return self._touched is not None and key in self._touched

    def on_doom(self, listener: Callable[[Sequence[str]], None]) -> None:
        """Call ``listener`` with every batch as it is doomed (a cache forgets those keys)."""
        self._doom_listeners.append(listener)

    def doom(self, keys: Sequence[str]) -> asyncio.Event:
        """Hold writes of ``keys`` until the returned event is set (after their deletion)."""
        done = asyncio.Event()
        for key in keys:
            self._doomed[key] = done
        for listener in self._doom_listeners:
            listener(keys)
        return done

    def touch_reused(self, key: str) -> None:
        """A writer re-uses ``key`` because a cache says it is stored, without asking the
        store: protect it as if ``exists`` had been asked."""
        self._touch(key)

    def release(self, keys: Sequence[str], done: asyncio.Event) -> None:
        for key in keys:
            if self._doomed.get(key) is done:
                del self._doomed[key]
        done.set()

    def _touch(self, key: str) -> None:
        upload = _current.get()
        if upload is not None:
            upload.touched.add(key)
        if self._touched is not None:
            self._touched.add(key)

    # -- the ObjectStore protocol ---------------------------------------------------------

    async def put(self, key: str, data: bytes) -> None:
        """Store, after any deletion of ``key`` in progress has finished."""
        self._touch(key)
        doomed = self._doomed.get(key)
        if doomed is not None:
            await doomed.wait()
        await self.inner.put(key, data)

    async def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        return await self.inner.get(key, start, end)

    async def exists(self, key: str) -> bool:
        """False for a key being deleted (the writer then stores it again)."""
        # Touched before the check, in the same step as the doomed test: a batch is
        # filtered and doomed in one step too, so either it leaves this key out or
        # this call sees the key doomed — never a True read just before the delete.
        self._touch(key)
        doomed = self._doomed.get(key)
        if doomed is not None:
            await doomed.wait()
            return False
        return await self.inner.exists(key)

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)

    async def delete_many(self, keys: Sequence[str]) -> None:
        await self.inner.delete_many(keys)

    def list(self, prefix: str) -> AsyncIterator[str]:
        return self.inner.list(prefix)

    def list_stats(self, prefix: str) -> AsyncIterator[ObjectStat]:
        return self.inner.list_stats(prefix)

    async def close(self) -> None:
        await self.inner.close()
