"""Reading through a FUSE mount vs the PFS API vs local disk; ``find`` over a 100,000-file mount (issue 5).

Run: ``.venv/bin/python -m bench.bench_mount [--size-mib 1024] [--files 100000] [--dir /tmp]``

Starts ``tusk up --detach`` in a temporary ``TUSK_HOME`` (real PostgreSQL, NATS, PFS),
puts one random file of ``--size-mib`` MiB and ``--files`` 1 KiB files (100 directories)
into repo ``bench``, then mounts ``bench@master`` read-only with the foreground mount
(``python -m services.mountd mount DIR bench``, its own process, as ``tusk mount`` runs).

1. Sequential read of the big file in 1 MiB reads: through the mount (first read, then
   again), through ``PfsClient.get_file`` (one streamed request), and from a local copy
   on disk (page cache dropped first if this machine lets us). Ratios mount/API and
   mount/local.
2. ``find DIR/bench -type f | wc -l`` over the mount (every directory listed through
   PFS pages, attributes from readdirplus) and over a local copy of the same tree.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

from bench.bench_cli_ingest import EmbeddedCluster, embedded_cluster
from shared.api.pfs_client import PfsClient

PIECE = 4 << 20
READ = 1 << 20


async def _random_file(size: int) -> AsyncIterator[bytes]:
    # Incompressible, and each piece starts differently so no two chunks are alike.
    block = os.urandom(PIECE)
    for i in range(0, size, PIECE):
        yield (i.to_bytes(8, "little") + block[8:])[: min(PIECE, size - i)]


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _small_path(i: int) -> str:
    return f"/small/part-{i % 100:02d}/file-{i:06d}.bin"


def _open_copy(path: Path) -> BinaryIO:
    # Local writes of 4 MiB pieces take about a millisecond: no thread needed in a benchmark.
    return open(path, "wb")


async def load_repo(pfs: PfsClient, size: int, files: int, local: Path) -> None:
    await pfs.create_repo("bench")
    started = time.perf_counter()

    async def big() -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
        async def content() -> AsyncIterator[bytes]:
            with _open_copy(local / "big.bin") as copy:
                async for piece in _random_file(size):
                    copy.write(piece)
                    yield piece

        yield "/big.bin", content()

    await pfs.put_files("bench", "master", big())
    print(f"put {size >> 20} MiB file in {time.perf_counter() - started:.1f} s", flush=True)

    started = time.perf_counter()

    async def small() -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
        for i in range(files):
            yield _small_path(i), _one(b"%08d" % i * 128)

    await pfs.put_files("bench", "master", small())
    for i in range(files):
        path = local / _small_path(i).lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"%08d" % i * 128)
    print(f"put {files:,} small files in {time.perf_counter() - started:.1f} s", flush=True)


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def read_file(path: Path) -> tuple[float, int]:
    """Seconds to read ``path`` sequentially in 1 MiB reads, and bytes read."""
    buffer = bytearray(READ)
    total = 0
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            total += n
    return time.perf_counter() - started, total


async def read_api(pfs: PfsClient) -> tuple[float, int]:
    total = 0
    started = time.perf_counter()
    async for part in pfs.get_file("bench", "master", "/big.bin"):
        total += len(part)
    return time.perf_counter() - started, total


def rate(seconds: float, size: int) -> str:
    return f"{seconds:.2f} s ({size / seconds / (1 << 20):.0f} MiB/s)"


def find_count(root: Path) -> tuple[float, int]:
    started = time.perf_counter()
    result = subprocess.run(
        ["find", str(root), "-type", "f"], capture_output=True, check=True, text=True
    )
    return time.perf_counter() - started, len(result.stdout.splitlines())


def start_mount(cluster: EmbeddedCluster, directory: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.mountd", "mount", str(directory), "bench"],
        env=cluster.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    for _ in range(200):
        if (directory / "bench" / "big.bin").exists():
            return proc
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"the mount did not come up: {proc.communicate()[1].decode()}")


def stop_mount(mount: subprocess.Popen[bytes], mountpoint: Path) -> None:
    """Ctrl-C the foreground mount, as a user would; detach it if it does not go."""
    mount.send_signal(signal.SIGINT)
    try:
        mount.wait(30)
    except subprocess.TimeoutExpired:
        mount.kill()
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)


async def main(size: int, files: int, directory: str | None) -> None:
    work = Path(tempfile.mkdtemp(prefix="tusk-bench-mount-", dir=directory))
    local = work / "local"
    local.mkdir()
    mountpoint = work / "mnt"
    try:
        with embedded_cluster(directory) as cluster:
            async with PfsClient(cluster.config.pfs_url) as pfs:
                await load_repo(pfs, size, files, local)
                api_s, api_n = await read_api(pfs)
            mount = start_mount(cluster, mountpoint)
            try:
                big = mountpoint / "bench" / "big.bin"
                first_s, first_n = read_file(big)
                again_s, _ = read_file(big)
                dropped = drop_page_cache()
                local_s, local_n = read_file(local / "big.bin")
                assert first_n == api_n == local_n == size, (first_n, api_n, local_n)
                print(f"sequential read of {size >> 20} MiB, 1 MiB reads:")
                print(f"  mount, first read : {rate(first_s, size)}")
                print(f"  mount, second read: {rate(again_s, size)}")
                print(f"  PfsClient.get_file: {rate(api_s, size)}")
                cache = "cold page cache" if dropped else "page cache NOT dropped (no permission)"
                print(f"  local disk ({cache}): {rate(local_s, size)}")
                print(
                    f"  ratios (time): mount/API {first_s / api_s:.2f}, "
                    f"mount/local {first_s / local_s:.2f}",
                    flush=True,
                )
                print(
                    f"  goal 5a, mount speed / get file speed >= 0.7: first read "
                    f"{api_s / first_s:.2f}, second {api_s / again_s:.2f}",
                    flush=True,
                )
                find_s, found = find_count(mountpoint / "bench" / "small")
                find_again_s, _ = find_count(mountpoint / "bench" / "small")
                local_find_s, local_found = find_count(local / "small")
                assert found == local_found == files, (found, local_found)
                print(f"find over {files:,} files in 100 directories:")
                print(
                    f"  mount: {find_s:.2f} s ({files / find_s:,.0f} files/s); again {find_again_s:.2f} s"
                )
                print(
                    f"  local: {local_find_s:.2f} s; ratio {find_s / local_find_s:.1f}", flush=True
                )
                print(
                    f"  goal 5b, find on the mount / find on local <= 2: first "
                    f"{find_s / local_find_s:.1f}, again {find_again_s / local_find_s:.1f}",
                    flush=True,
                )
            finally:
                stop_mount(mount, mountpoint)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--dir", default=None, help="where temporary data goes")
    args = parser.parse_args()
    asyncio.run(main(args.size_mib << 20, args.files, args.dir))
