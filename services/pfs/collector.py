"""Garbage collection of PFS's object-store prefixes (``chunks/`` and ``index/``): mark and sweep.

PFS owns those prefixes (docs/architecture.md), so PFS runs the collector. One run:

1. **Start**: note the time and tell the store guard to record what writers touch.
2. **Mark**: everything reachable is live — every finished commit's index tree (nodes,
   and the chunks of each file), every open commit's staged entries, and what each other
   owner references, asked over its HTTP API (``GET /v1/references``, paged): the
   scheduler's datum output trees, the S3 gateway's multipart parts. Each owner also
   says when its oldest write in flight started.
3. **Cutoff**: an object is old enough to go only if written before
   ``min(start − grace, oldest write in flight anywhere)``: uploads and jobs that run
   are tracked, not only protected by age, so ``--grace 0`` spares them too.
4. **Sweep**: list both prefixes with sizes and times; an object neither live, nor young,
   nor touched by a writer since the start is deleted, in batches (S3: one request per
   1,000 keys). Each batch is filtered against the guard and doomed in one step, so a
   writer in this process either made its key spared or stores it again after the delete.

Memory: node digests stay in a set (the mark asks "walked this subtree already?" of each,
and there are ~64 entries per leaf, so few); chunk digests go to ``ChunkMarks``, which
holds at most ``gc_mark_chunks_in_memory`` of them and spills the rest to sorted runs on
local disk, and the sweep judges chunks by a merge join of the key-ordered listing with
the merged runs (services/pfs/marks.py). Figures for 100 million objects: docs/lifecycle.md.

Faults: a run deletes only what it proved unreachable, and marks live in this run only, so a
kill -9 at any point loses nothing live; the next run starts over.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

from services.pfs.marks import ChunkMarks, remove_stale_runs
from services.pfs.store_guard import GuardedStore
from shared.api.lifecycle_models import GcReport
from shared.platform.config import Config
from shared.platform.db import Pool
from shared.platform.errors import FailedPrecondition, NotFound, TuskError, Unavailable
from shared.storage.chunking import FileEntry
from shared.storage.file_entries import from_index_entry
from shared.storage.file_index import FileIndex
from shared.storage.file_index.node import STORE_PREFIX as INDEX_PREFIX
from shared.storage.file_index.node import LeafNode

log = logging.getLogger("tusk.pfs.gc")

CHUNK_PREFIX = "chunks/"
DELETE_BATCH = 1000
# PostgreSQL advisory lock key of a running collection ("tusk-gc" in ASCII).
GC_LOCK_KEY = 0x7475_736B_2D67_63
PAGE = 1000


@dataclass
class LiveSet:
    """What must stay: node digests in memory (the mark asks "walked already?" of each),
    chunk digests in ``ChunkMarks`` (bounded in memory, spilled to sorted runs)."""

    nodes: set[bytes]
    chunks: ChunkMarks

    async def add_chunk(self, digest: bytes) -> None:
        self.chunks.add(digest)
        if self.chunks.full:
            await self.chunks.spill()


def _digest(key: str) -> bytes | None:
    """The digest an object's key names; None for a name we do not make."""
    try:
        return bytes.fromhex(key.rsplit("/", 1)[-1])
    except ValueError:
        return None


class Collector:
    """Mark and sweep over ``chunks/`` and ``index/``; one run at a time."""

    def __init__(self, config: Config, pool: Pool, store: GuardedStore, index: FileIndex) -> None:
        self.config = config
        self.pool = pool
        self.store = store
        self.index = index
        self._running = asyncio.Lock()

    async def collect(self, *, grace_s: float | None = None, dry_run: bool = False) -> GcReport:
        """One collection; ``FailedPrecondition`` when another is already running."""
        if self._running.locked():
            raise FailedPrecondition("a garbage collection is already running; try again later")
        async with self._running, self.pool.acquire() as lock_conn:
            # One collection per cluster: a session lock, released if this process dies.
            if not await lock_conn.fetchval("SELECT pg_try_advisory_lock($1)", GC_LOCK_KEY):
                raise FailedPrecondition(
                    "a garbage collection is already running on another PFS replica"
                )
            try:
                return await self._collect(grace_s, dry_run)
            finally:
                await lock_conn.execute("SELECT pg_advisory_unlock($1)", GC_LOCK_KEY)

    async def _collect(self, grace_s: float | None, dry_run: bool) -> GcReport:
        """One collection, under the cluster-wide lock."""
        grace = self.config.gc_grace_s if grace_s is None else grace_s
        started = time.time()
        self.store.start_collection()
        spill_dir = self.config.gc_spill_dir or None
        if removed := await asyncio.to_thread(remove_stale_runs, spill_dir):
            log.info("removed %d mark run directories of killed collections", removed)
        live = LiveSet(set(), ChunkMarks(self.config.gc_mark_chunks_in_memory, spill_dir))
        try:
            oldest = await self._mark(live)
            cutoff = min([started - grace, *(t for t in oldest if t is not None)])
            report = await self._sweep(live, cutoff, dry_run)
        finally:
            self.store.end_collection()
            live.chunks.close()
        report.live_objects += len(live.nodes)
        report.chunk_marks_peak = live.chunks.peak_held
        report.chunk_mark_runs = live.chunks.runs
        log.info(
            "garbage collection%s: %d objects, %d bytes freed; %d live",
            " (dry run)" if dry_run else "",
            report.objects,
            report.bytes,
            report.live_objects,
        )
        return report

    # -- mark -------------------------------------------------------------------------

    async def _mark(self, live: LiveSet) -> list[float | None]:
        """Mark everything reachable; when each owner's oldest write in flight started."""
        async for root in self._commit_roots():
            await self._mark_tree(root, live)
        async for entry in self._staged_entries():
            await _mark_entry(entry, live)
        oldest: list[float | None] = [self.store.oldest_upload()]
        for owner in self.config.gc_reference_owners:
            oldest.append(await self._mark_owner(owner, live))
        return oldest

    async def _mark_tree(self, root: str, live: LiveSet) -> None:
        # A node already marked had its whole subtree marked (a failed walk fails the run,
        # which then deletes nothing), so trees shared between commits are walked once.
        digest = bytes.fromhex(root)
        if digest in live.nodes:
            return
        live.nodes.add(digest)
        try:
            node = await self.index.node(root)
        except NotFound:
            raise FailedPrecondition(
                f"index node {root} is missing: run `tusk fsck` and repair before collecting"
            ) from None
        if isinstance(node, LeafNode):
            for item in node.entries:
                await _mark_entry(from_index_entry(item), live)
            return
        for child in node.children:
            await self._mark_tree(child.hash, live)

    async def _commit_roots(self) -> AsyncIterator[str]:
        after = 0
        while True:
            async with self.pool.acquire() as conn:
                rows = await conn.fetch(
                    """SELECT seq, root FROM pfs_commits WHERE seq > $1 AND root IS NOT NULL
                    ORDER BY seq LIMIT $2""",
                    after,
                    PAGE,
                )
            if not rows:
                return
            for row in rows:
                yield row["root"]
            after = rows[-1]["seq"]

    async def _staged_entries(self) -> AsyncIterator[FileEntry]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch("SELECT entry FROM pfs_staged WHERE entry IS NOT NULL")
        for row in rows:
            value = row["entry"]
            yield FileEntry.from_json(_json(value))

    async def _mark_owner(self, owner: str, live: LiveSet) -> float | None:
        """Mark what one other owner references; its oldest write in flight."""
        base = {"scheduler": self.config.scheduler_url, "s3gateway": self.config.s3gateway_url}
        url = base.get(owner, owner).rstrip("/") + "/v1/references"
        oldest: float | None = None
        cursor: str | None = None
        try:
            async with aiohttp.ClientSession() as session:
                while True:
                    params = {"limit": str(PAGE)} | ({"after": cursor} if cursor else {})
                    async with session.get(url, params=params) as resp:
                        if resp.status != 200:
                            raise Unavailable(
                                f"{owner} answered HTTP {resp.status} to {url}: "
                                "cannot tell what it references, so nothing is collected"
                            )
                        page = await resp.json()
                    for root in page.get("roots", ()):
                        await self._mark_tree(root, live)
                    for chunk in page.get("chunks", ()):
                        await live.add_chunk(bytes.fromhex(chunk))
                    since = page.get("oldest_in_flight")
                    if since is not None:
                        oldest = since if oldest is None else min(oldest, since)
                    cursor = page.get("next")
                    if not cursor:
                        return oldest
        except aiohttp.ClientError as exc:
            raise Unavailable(
                f"cannot reach {owner} at {url} ({type(exc).__name__}): "
                "cannot tell what it references, so nothing is collected"
            ) from None

    # -- sweep ------------------------------------------------------------------------

    async def _sweep(self, live: LiveSet, cutoff: float, dry_run: bool) -> GcReport:
        report = GcReport(dry_run=dry_run)
        # Chunks are judged by a merge join of the (key-ordered) listing with the sorted
        # marks; nodes by the in-memory set.
        chunks = live.chunks.cursor()
        for prefix, marked in ((CHUNK_PREFIX, chunks), (INDEX_PREFIX, live.nodes)):
            batch: list[tuple[str, int]] = []
            async for stat in self.store.list_stats(prefix):
                report.scanned += 1
                if stat.modified >= cutoff:
                    report.young += 1
                    continue
                digest = _digest(stat.key)
                if digest is None or digest in marked:
                    continue  # live, or not a name we make: leave it alone
                batch.append((stat.key, stat.size))
                if len(batch) == DELETE_BATCH:
                    await self._delete(batch, report, dry_run)
                    batch = []
            await self._delete(batch, report, dry_run)
        report.live_objects = chunks.finish()
        return report

    async def _delete(self, batch: list[tuple[str, int]], report: GcReport, dry_run: bool) -> None:
        # Filtered and doomed in one step (no await between): see store_guard.
        doomed = [(k, n) for k, n in batch if not self.store.touched(k)]
        if not doomed:
            return
        keys = [k for k, _ in doomed]
        if not dry_run:
            done = self.store.doom(keys)
            try:
                await self.store.delete_many(keys)
            finally:
                self.store.release(keys, done)
        report.objects += len(doomed)
        report.bytes += sum(n for _, n in doomed)

    # -- schedule ---------------------------------------------------------------------

    async def run_every(self, interval_s: float) -> None:
        """Collect every ``interval_s`` seconds until cancelled; a failed run is logged."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.collect()
            except TuskError as exc:
                log.warning("scheduled garbage collection skipped: %s", exc.message)


async def _mark_entry(entry: FileEntry, live: LiveSet) -> None:
    for ref in entry.chunks:
        await live.add_chunk(bytes.fromhex(ref.chunk))


def _json(value: object) -> object:
    return json.loads(value) if isinstance(value, str) else value
