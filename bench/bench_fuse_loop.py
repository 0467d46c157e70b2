"""pyfuse3's own request loop under trio vs asyncio (issue #17's trio question, issue #12's mount goal).

Run: ``.venv/bin/python -m bench.bench_fuse_loop [--size-mib 512] [--runs 3]``

A one-file tree whose bytes are already in memory, so the figures are the FUSE round
trips alone (kernel → pyfuse3 → a Python ``read`` handler → reply), with nothing of
mountd's PFS client, object store or caches. The tree is served in a child process under
``trio.run(pyfuse3.main)`` or under asyncio (``pyfuse3.asyncio.enable()``, as
``shared/platform/fuse_session.py`` runs it); this process reads the file with 1 MiB reads
and reads the server's CPU time from /proc. Alternating modes, so both see the same
machine. Each mode is run with the kernel's default read-ahead (128 KiB) and with it
raised to 8 MiB (``read_ahead_kb`` of the tree's device in sysfs; root only), which makes
the kernel ask up to 1 MiB per request.
"""

from __future__ import annotations

import argparse
import os
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SERVER = r"""
import errno, os, stat, sys
import pyfuse3
mode, mountpoint, size, read_ahead = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
DATA = memoryview(os.urandom(1 << 20) * (size >> 20))
NAME, INODE = b"data.bin", pyfuse3.ROOT_INODE + 1

class Tree(pyfuse3.Operations):
    def _attrs(self, inode):
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.st_mode = (stat.S_IFDIR | 0o555) if inode == pyfuse3.ROOT_INODE else (stat.S_IFREG | 0o444)
        a.st_size = 0 if inode == pyfuse3.ROOT_INODE else size
        a.entry_timeout = a.attr_timeout = 300
        return a
    async def getattr(self, inode, ctx=None):
        return self._attrs(inode)
    async def lookup(self, parent, name, ctx=None):
        if parent != pyfuse3.ROOT_INODE or name != NAME:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(INODE)
    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=inode, keep_cache=False)
    async def read(self, fh, off, size):
        return DATA[off : off + size]

pyfuse3.init(Tree(), mountpoint, {"fsname=bench", "ro"})
if mode == "asyncio":
    import asyncio, pyfuse3.asyncio
    pyfuse3.asyncio.enable()
    async def main():
        task = asyncio.create_task(pyfuse3.main(max_tasks=64))
        await asyncio.to_thread(raise_ahead)
        print("ready", flush=True)
        await task
    run = lambda: asyncio.run(main())
else:
    import trio
    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pyfuse3.main, 64)
            await trio.to_thread.run_sync(raise_ahead)
            print("ready", flush=True)
    run = lambda: trio.run(main)

def raise_ahead():
    # The tree's backing device's read-ahead in sysfs (root only).
    if read_ahead:
        device = os.stat(mountpoint).st_dev
        with open(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb", "w") as knob:
            knob.write(f"{read_ahead}\n")

try:
    run()
finally:
    pyfuse3.close(unmount=True)
"""


def server_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_through(mode: str, size: int, read_ahead: int, work: Path) -> tuple[float, float]:
    """Wall seconds to read the file once with 1 MiB reads, and the server's CPU seconds."""
    mountpoint = Path(tempfile.mkdtemp(dir=work))
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, mode, str(mountpoint), str(size), str(read_ahead)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        path = mountpoint / "data.bin"
        assert stat.S_ISREG(os.stat(path).st_mode)
        buffer = bytearray(1 << 20)
        before = server_cpu(server.pid)
        started = time.perf_counter()
        with open(path, "rb", buffering=0) as file:
            while file.readinto(buffer):
                pass
        wall = time.perf_counter() - started
        return wall, server_cpu(server.pid) - before
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib << 20
    with tempfile.TemporaryDirectory(prefix="tusk-bench-fuse-") as work:
        for read_ahead in (0, 8192):
            shown = (
                "kernel default read-ahead" if not read_ahead else f"read-ahead {read_ahead} KiB"
            )
            figures: dict[str, list[tuple[float, float]]] = {"asyncio": [], "trio": []}
            for _ in range(args.runs):
                for mode in figures:
                    figures[mode].append(read_through(mode, size, read_ahead, Path(work)))
            print(f"{args.size_mib} MiB, 1 MiB reads, {shown} (median of {args.runs}):")
            for mode, runs in figures.items():
                wall = sorted(w for w, _ in runs)[len(runs) // 2]
                cpu = sorted(c for _, c in runs)[len(runs) // 2]
                print(
                    f"  {mode:8} {wall:.2f} s ({args.size_mib / wall:.0f} MiB/s), "
                    f"server CPU {cpu:.2f} s"
                )
            trio_wall = sorted(w for w, _ in figures["trio"])[args.runs // 2]
            asyncio_wall = sorted(w for w, _ in figures["asyncio"])[args.runs // 2]
            print(f"  trio/asyncio time {trio_wall / asyncio_wall:.2f}", flush=True)


if __name__ == "__main__":
    main()
