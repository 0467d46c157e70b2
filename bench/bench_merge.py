"""Benchmark of a three-way merge (issue #14) on a large file index, local object store.

Run: ``.venv/bin/python -m bench.bench_merge [--entries N] [--changes 10,100,1000]``

Builds an N-entry tree (default 1,000,000 files) as the merge base, then for each k makes
SOURCE (k files changed and k/2 deleted) and DEST (k other files changed and k added) and
times the merge PFS runs — ``plan_merge`` (the two diffs against the base, walked together)
plus the ``apply`` of SOURCE's side onto DEST — with a cold node cache, printing the
index nodes read and written. Beside it: one full scan of the tree, what a merge that
walks the repo (rather than the changes) would cost at least.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time

from services.pfs.merge import plan_merge
from shared.storage.chunking import ChunkRef, FileEntry
from shared.storage.file_entries import to_index_entry
from shared.storage.file_index import FileIndex, IndexEntry
from shared.storage.objstore.local import LocalStore


def entry(i: int, version: int = 0) -> FileEntry:
    chunk = "%064x" % (i * 7919 + version)
    return FileEntry(4096, "%064x" % (i + (version << 40)), (ChunkRef(chunk, 0, 4096),))


def path(i: int) -> str:
    return f"/dataset/part-{i % 1000:03d}/file-{i:07d}.parquet"


def changes(
    indexes: list[int], version: int, deleted: int = 0
) -> list[tuple[str, IndexEntry | None]]:
    out: list[tuple[str, IndexEntry | None]] = []
    for n, i in enumerate(indexes):
        p = path(i)
        out.append((p, None if n < deleted else to_index_entry(p, entry(i, version))))
    return sorted(out, key=lambda c: c[0])


async def run(n: int, ks: list[int]) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-merge-") as tmp:
        store = LocalStore(tmp)
        index = FileIndex(store)
        started = time.perf_counter()
        items = sorted((to_index_entry(path(i), entry(i)) for i in range(n)), key=lambda e: e.key)
        base = await index.build(items)
        del items
        print(f"built a {n:,}-file base in {time.perf_counter() - started:.1f} s")

        index.clear_cache()
        started = time.perf_counter()
        scanned = sum([1 async for _ in index.scan(base)])
        scan_s = time.perf_counter() - started
        print(f"full scan of {scanned:,} files (cold): {scan_s * 1000:.0f} ms")

        rng = random.Random(14)
        print(f"{'k':>6} {'merge ms':>9} {'nodes read':>11} {'nodes written':>14} {'changes':>8}")
        for k in ks:
            picked = rng.sample(range(n), 2 * k)
            theirs, ours = picked[:k], picked[k:]
            source = await index.apply(base, changes(theirs, 1, deleted=k // 2))
            added: list[tuple[str, IndexEntry | None]] = [
                (f"/new/{k}-{j:06d}", to_index_entry(f"/new/{k}-{j:06d}", entry(n + j)))
                for j in range(k)
            ]
            dest = await index.apply(base, sorted(changes(ours, 2) + added, key=lambda c: c[0]))
            index.clear_cache()
            index.reset_counters()
            started = time.perf_counter()
            plan = await plan_merge(index, base, source, dest, None)
            await index.apply(dest, plan.changes)
            took = time.perf_counter() - started
            assert not plan.conflicts and len(plan.changes) == k
            print(
                f"{k:>6} {took * 1000:>9.0f} {index.nodes_read:>11} {index.nodes_written:>14} {len(plan.changes):>8}"
            )
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--changes", default="10,100,1000")
    args = parser.parse_args()
    asyncio.run(run(args.entries, [int(k) for k in args.changes.split(",")]))


if __name__ == "__main__":
    main()
