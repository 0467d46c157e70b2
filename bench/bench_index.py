"""Benchmark of the file index on a local object store.

Run: ``.venv/bin/python -m bench.bench_index [--entries N]``

Builds an N-entry tree (default 1,000,000) in a temp directory, then measures:
- apply of one change into it vs into a 1,000-entry tree (goal: ratio <= 1.5);
- diff of two N-entry trees differing in 10 keys, warm and cold node cache
  (goal: <= 100 ms);
and prints the node reads and writes of each step.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path

from shared.storage.file_index import FileIndex, IndexEntry
from shared.storage.objstore.local import LocalStore
from tests.fixtures.counting_store import CountingStore


def make_entries(n: int) -> list[IndexEntry]:
    """N sorted entries shaped like PFS's: 1,000 dirs, JSON-ish values of ~110 bytes."""
    keys = sorted(f"/dataset/part-{i % 1000:03d}/file-{i:07d}.parquet" for i in range(n))
    return [
        IndexEntry(
            key,
            b'{"hash":"%s","chunks":[["%s",0,4096]]}' % (b"%016x" % i, b"%032x" % (i * 7919)),
            4096 + i % 997,
        )
        for i, key in enumerate(keys)
    ]


async def timed_applies(
    index: FileIndex, trees: list[tuple[str, list[IndexEntry]]], runs: int
) -> list[tuple[float, float, float]]:
    """Per tree: median seconds, mean node reads and writes of applying one value edit.

    Runs alternate between the trees so that disk noise (write-back of the build, journal
    commits) hits them alike; each run edits a different random key.
    """
    rng = random.Random()  # unseeded: every call edits new keys, so every node is new
    times: list[list[float]] = [[] for _ in trees]
    reads = [0] * len(trees)
    writes = [0] * len(trees)
    for n in range(runs):
        for t, (root, entries) in enumerate(trees):
            old = entries[rng.randrange(len(entries))]
            change = IndexEntry(old.key, old.value + b" edit %d" % rng.getrandbits(64), n)
            read_before, written_before = index.nodes_read, index.nodes_written
            started = time.perf_counter()
            await index.apply(root, [(old.key, change)])
            times[t].append(time.perf_counter() - started)
            reads[t] += index.nodes_read - read_before
            writes[t] += index.nodes_written - written_before
    return [
        (statistics.median(times[t]), reads[t] / runs, writes[t] / runs) for t in range(len(trees))
    ]


async def run(n: int) -> None:
    with tempfile.TemporaryDirectory(prefix="tusk-bench-index-") as tmp:
        store = CountingStore(LocalStore(Path(tmp) / "objects"))
        index = FileIndex(store)
        try:
            started = time.perf_counter()
            entries = make_entries(n)
            print(f"generated {n:,} entries in {time.perf_counter() - started:.2f} s")

            started = time.perf_counter()
            big = await index.build(entries)
            took = time.perf_counter() - started
            assert big is not None
            height = (await index.node(big)).level + 1
            print(
                f"build {n:,} entries: {took:.2f} s ({n / took:,.0f} entries/s), "
                f"{index.nodes_written:,} nodes written, height {height}"
            )

            small_entries = make_entries(1000)
            small = await index.build(small_entries)
            assert small is not None

            runs = 41
            await timed_applies(index, [(big, entries), (small, small_entries)], 3)  # warm-up
            (
                (t_big, big_reads, big_writes),
                (t_small, small_reads, small_writes),
            ) = await timed_applies(index, [(big, entries), (small, small_entries)], runs)
            print(
                f"apply 1 change, warm cache (median of {runs}): "
                f"{n:,} entries {t_big * 1000:.2f} ms "
                f"(reads {big_reads:.1f}, writes {big_writes:.1f}); "
                f"1,000 entries {t_small * 1000:.2f} ms "
                f"(reads {small_reads:.1f}, writes {small_writes:.1f}); "
                f"ratio {t_big / t_small:.2f} (goal <= 1.5)"
            )
            cold = FileIndex(store)
            [(t_cold, cold_reads, cold_writes)] = await timed_applies(cold, [(big, entries)], runs)
            print(
                f"apply 1 change, cold cache: {t_cold * 1000:.2f} ms, "
                f"reads {cold_reads:.1f}, writes {cold_writes:.1f}"
            )

            rng = random.Random(2)
            picked = sorted(rng.sample(range(n), 10))
            changes: list[tuple[str, IndexEntry | None]] = []
            for j, i in enumerate(picked):
                old = entries[i]
                if j % 3 == 0:
                    changes.append((old.key, None))
                elif j % 3 == 1:
                    changes.append((old.key, IndexEntry(old.key, b"{}", 1)))
                else:
                    key = old.key + ".bak"
                    changes.append((key, IndexEntry(key, b"{}", 1)))
            other = await index.apply(big, changes)

            for label, diff_index in (("warm", index), ("cold", FileIndex(store))):
                diff_index.reset_counters()
                started = time.perf_counter()
                found = [d async for d in diff_index.diff(big, other)]
                took = time.perf_counter() - started
                assert len(found) == 10, found
                print(
                    f"diff of two {n:,}-entry trees differing in 10 keys, {label} cache: "
                    f"{took * 1000:.2f} ms, nodes read {diff_index.nodes_read}, "
                    f"visited {diff_index.node_visits} (goal <= 100 ms)"
                )

            scan_index = FileIndex(store)
            started = time.perf_counter()
            count = 0
            async for _ in scan_index.scan(big):
                count += 1
            took = time.perf_counter() - started
            print(
                f"full scan, cold cache: {count:,} entries in {took:.2f} s, "
                f"{scan_index.nodes_read:,} nodes read"
            )
        finally:
            await store.close()


def main() -> None:
    """Parse arguments and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    args = parser.parse_args()
    asyncio.run(run(args.entries))


if __name__ == "__main__":
    main()
