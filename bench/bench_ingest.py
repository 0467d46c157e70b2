"""Ingest throughput of the chunk store: one big file and many small files into a local store.

Run: ``.venv/bin/python -m bench.bench_ingest [--size-mib 1024] [--dir /tmp]``. Prints one
JSON object per case (MB/s, chunks, seconds). The input file is read in 8 MiB pieces as
``tusk put file`` reads it; its pages are warmed first so the disk read is not measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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


async def run(size_mib: int = 1024, directory: str | None = None) -> list[dict[str, Any]]:
    """Run every case in a fresh temporary directory and return their results."""
    with tempfile.TemporaryDirectory(dir=directory, prefix="tusk-bench-") as work:
        return [
            await bench_big_file(Path(work), size_mib * MiB),
            await bench_small_files(Path(work)),
        ]


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--dir", default=None, help="where to put the input and the store")
    args = parser.parse_args()
    for result in asyncio.run(run(args.size_mib, args.dir)):
        print(json.dumps(result))


if __name__ == "__main__":
    main()
