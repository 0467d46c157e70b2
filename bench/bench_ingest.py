"""Ingest throughput of the chunk store: one big file and many small files into a local store.

Run: ``.venv/bin/python -m bench.bench_ingest [--size-mib 1024] [--dir /tmp] [--cli]``. Prints
one JSON object per case (MB/s, chunks, seconds). The input file is read in 8 MiB pieces as
``tusk put file`` reads it; its pages are warmed first so the disk read is not measured.

Peers in the same run (issue #12, goal 4): ``cp`` + ``sync`` of the same bytes onto the same
file system, and ``cat`` of a local copy to /dev/null (after dropping the page cache where
this machine lets us). With ``--cli`` an embedded cluster (``tusk up``) also runs ``tusk put
file`` and ``tusk get file > /dev/null`` of the same file; each ratio is printed beside.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from shared.storage.chunking import PackWriter, read_range
from shared.storage.objstore.local import LocalStore

MiB = 1 << 20
READ_SIZE = 8 * MiB


def _make_input(path: Path, size: int) -> None:
    with path.open("wb") as file:
        for _ in range(0, size, 64 * MiB):
            file.write(os.urandom(min(64 * MiB, size - file.tell())))


async def bench_big_file(work: Path, size: int) -> dict[str, Any]:
    """Time writing one ``size``-byte random file, re-writing it (all dedup), and reading it."""
    source = work / "input.bin"
    await asyncio.to_thread(_make_input, source, size)
    store = LocalStore(work / "objects")
    results: dict[str, Any] = {"case": "big_file", "mib": size // MiB}
    try:
        for label in ("first_put", "same_again"):
            started = time.perf_counter()
            async with PackWriter(store) as writer:
                writer.start_file()
                with source.open("rb") as file:
                    while piece := await asyncio.to_thread(file.read, READ_SIZE):
                        await writer.write(piece)
                writer.end_file()
                [entry] = await writer.close()
            seconds = time.perf_counter() - started
            results[label] = {
                "seconds": round(seconds, 3),
                "MB_per_s": round(size / seconds / 1e6),
                "chunks_written": writer.chunks_written,
                "chunks_deduplicated": writer.chunks_deduplicated,
            }
        started = time.perf_counter()
        total = 0
        async for piece in read_range(store, entry):
            total += len(piece)
        seconds = time.perf_counter() - started
        results["read"] = {"seconds": round(seconds, 3), "MB_per_s": round(total / seconds / 1e6)}
    finally:
        await store.close()
    return results


def cp_sync_seconds(source: Path, target: Path) -> float:
    """``cp`` then ``sync`` of the copy: the disk's pace for the same bytes."""
    started = time.perf_counter()
    subprocess.run(["cp", str(source), str(target)], check=True)
    subprocess.run(["sync", str(target)], check=True)
    seconds = time.perf_counter() - started
    target.unlink()
    return seconds


def drop_page_cache() -> bool:
    """Drop the page cache (root only); False if this machine does not let us."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def timed_run(command: list[str], env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


async def bench_against_peers(work: Path, size: int, cli: bool) -> dict[str, Any]:
    """The library's put and, with ``cli``, ``tusk put file``/``get file`` beside ``cp`` +
    ``sync`` and ``cat`` of the same bytes, alternating so both sides see the same machine."""
    source = work / "peer-input.bin"
    await asyncio.to_thread(_make_input, source, size)
    timed_run(["cat", str(source)])  # warm: the input is read from memory, as by cp
    results: dict[str, Any] = {"case": "peers", "mib": size // MiB}
    store = LocalStore(work / "peer-objects")
    try:
        cp_s = cp_sync_seconds(source, work / "cp-copy.bin")
        started = time.perf_counter()
        async with PackWriter(store) as writer:
            writer.start_file()
            with source.open("rb") as file:
                while piece := await asyncio.to_thread(file.read, READ_SIZE):
                    await writer.write(piece)
            writer.end_file()
            await writer.close()
        put_s = time.perf_counter() - started
    finally:
        await store.close()
    results["cp_sync_s"] = round(cp_s, 3)
    results["library_put_s"] = round(put_s, 3)
    results["library_put_vs_cp_sync"] = round(cp_s / put_s, 2)
    results["chunks_raw"] = f"{writer.chunks_raw}/{writer.chunks_written}"
    if not cli:
        return results
    from bench.bench_cli_ingest import TUSK, embedded_cluster

    with embedded_cluster(str(work)) as cluster:
        cluster.tusk("create", "repo", "big")
        cp_s = cp_sync_seconds(source, work / "cp-copy.bin")
        put_s = cluster.tusk("put", "file", "big@master:/big.bin", "-f", str(source))
        results["cli_cp_sync_s"] = round(cp_s, 3)
        results["cli_put_s"] = round(put_s, 3)
        results["cli_put_vs_cp_sync"] = round(cp_s / put_s, 2)
        get = [TUSK, "get", "file", "big@master:/big.bin"]
        cold = drop_page_cache()
        cat_s = timed_run(["cat", str(source)])
        drop_page_cache()
        get_s = timed_run(get, cluster.env)
        results["page_cache"] = "dropped before each" if cold else "warm (cannot drop: not root)"
        results["cat_s"] = round(cat_s, 3)
        results["cli_get_s"] = round(get_s, 3)
        results["cli_get_vs_cat"] = round(cat_s / get_s, 2)
        warm_cat_s = timed_run(["cat", str(source)])
        warm_get_s = timed_run(get, cluster.env)
        results["warm_cat_s"] = round(warm_cat_s, 3)
        results["warm_cli_get_s"] = round(warm_get_s, 3)
        results["warm_cli_get_vs_cat"] = round(warm_cat_s / warm_get_s, 2)
    return results


async def bench_small_files(work: Path, count: int = 10_000, size: int = 1024) -> dict[str, Any]:
    """Time packing ``count`` files of ``size`` random bytes (already in memory)."""
    files = [os.urandom(size) for _ in range(count)]
    store = LocalStore(work / "small-objects")
    try:
        started = time.perf_counter()
        async with PackWriter(store) as writer:
            for data in files:
                writer.start_file()
                await writer.write(data)
                writer.end_file()
            await writer.close()
        seconds = time.perf_counter() - started
    finally:
        await store.close()
    return {
        "case": "small_files",
        "files": count,
        "seconds": round(seconds, 3),
        "files_per_s": round(count / seconds),
        "chunks_written": writer.chunks_written,
    }


async def run(
    size_mib: int = 1024, directory: str | None = None, cli: bool = False
) -> list[dict[str, Any]]:
    """Run every case in a fresh temporary directory and return their results."""
    with tempfile.TemporaryDirectory(dir=directory, prefix="tusk-bench-") as work:
        return [
            await bench_big_file(Path(work), size_mib * MiB),
            await bench_small_files(Path(work)),
            await bench_against_peers(Path(work), size_mib * MiB, cli),
        ]


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--dir", default=None, help="where to put the input and the store")
    parser.add_argument("--cli", action="store_true", help="also tusk put/get file via tusk up")
    args = parser.parse_args()
    for result in asyncio.run(run(args.size_mib, args.dir, args.cli)):
        print(json.dumps(result))


if __name__ == "__main__":
    main()
