"""Ingest through the real CLI against a real embedded cluster, beside git and DVC (issue 3).

Run: ``.venv/bin/python -m bench.bench_cli_ingest [--files 10000] [--size-mib 1024] [--dir /tmp]``

Starts ``tusk up --detach`` in a temporary ``TUSK_HOME`` (PostgreSQL, NATS, PFS as child
processes), then measures:

1. ``tusk put file R@master -r -f DIR`` of 10,000 x 1 KiB files (100 dirs of 100), wall time
   of the whole command (goal <= 0.5 s), split into the CLI's start-up (``tusk version``) and
   the request itself (the same upload from memory with ``PfsClient.put_files`` in this
   process); beside ``git add -A && git commit`` and ``dvc add`` (goal: >= 7x faster than DVC).
2. ``tusk put file`` of one 1 GiB random file (page cache warm), MB/s (goal >= 500 MB/s);
   then the same file with 1 MiB in the middle rewritten, put again: bytes the object store
   grew by (goal <= 8 MiB); ``dvc add`` of the same 1 GiB file beside it.

DVC is used only if found (``$DVC`` or ``dvc`` on PATH); otherwise it says "dvc not installed".
Every figure is the median of a few runs unless said otherwise; ratios are from this run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path

from shared.api.pfs_client import PfsClient
from shared.platform.config import Config, load_config

MiB = 1 << 20
TUSK = str(Path(sys.executable).with_name("tusk"))


# ---------------------------------------------------------------------------- helpers


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def run(argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    """Run a command, quietly; on failure show its output and stop the benchmark."""
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(
            done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
        )
        raise SystemExit(f"failed ({done.returncode}): {' '.join(argv)}")


def dir_bytes(root: Path) -> int:
    """Sum of the sizes of every file under ``root``."""
    total = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            with suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def dvc_binary() -> str | None:
    """``$DVC`` or ``dvc`` on PATH, or None."""
    explicit = os.environ.get("DVC")
    if explicit:
        return explicit if Path(explicit).exists() else None
    return shutil.which("dvc")


def fmt_s(seconds: float) -> str:
    return f"{seconds:.3f} s"


class EmbeddedCluster:
    """``tusk up --detach`` in a fresh ``TUSK_HOME``; ``tusk(...)`` runs the real CLI there."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = dict(os.environ, TUSK_HOME=str(home))
        for key in [k for k in self.env if k.startswith("TUSK_") and k != "TUSK_HOME"]:
            del self.env[key]  # a caller's TUSK_PFS_URL etc. must not point elsewhere

    @property
    def objects(self) -> Path:
        return self.home / "objects"

    @property
    def config(self) -> Config:
        return load_config(self.home / "config.toml", environ={})

    def tusk(self, *args: str) -> float:
        """Run ``tusk ARGS`` and return its wall time in seconds."""
        started = time.perf_counter()
        run([TUSK, *args], env=self.env)
        return time.perf_counter() - started

    def up(self) -> None:
        run([TUSK, "up", "--detach", "--any-ports"], env=self.env)

    def down(self) -> None:
        subprocess.run([TUSK, "down"], env=self.env, capture_output=True, check=False)


@contextmanager
def embedded_cluster(directory: str | None = None) -> Iterator[EmbeddedCluster]:
    home = Path(tempfile.mkdtemp(prefix="tusk-bench-home-", dir=directory))
    cluster = EmbeddedCluster(home)
    try:
        started = time.perf_counter()
        cluster.up()
        print(f"embedded cluster up in {time.perf_counter() - started:.1f} s ({home})", flush=True)
        yield cluster
    finally:
        cluster.down()
        shutil.rmtree(home, ignore_errors=True)


# ---------------------------------------------------------------------------- small files


def make_small_files(root: Path, count: int, size: int = 1024) -> None:
    """``count`` random files of ``size`` bytes in 100 directories (as a dataset would be)."""
    for i in range(count):
        folder = root / f"part-{i % 100:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"file-{i:06d}.bin").write_bytes(os.urandom(size))


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def put_from_memory(config: Config, repo: str, files: list[tuple[str, bytes]]) -> float:
    """One ``put_files`` request of in-memory files: the server's part plus loopback HTTP."""
    async with PfsClient(config.pfs_url) as pfs:
        await pfs.create_repo(repo)

        async def source() -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
            for path, data in files:
                yield path, _one(data)

        started = time.perf_counter()
        result = await pfs.put_files(repo, "master", source())
        took = time.perf_counter() - started
        assert result.files == len(files), result
        return took


def bench_small_files(cluster: EmbeddedCluster, work: Path, count: int, runs: int) -> None:
    data = work / "small"
    make_small_files(data, count)
    files = sorted(
        ("/small/" + str(p.relative_to(data)), p.read_bytes()) for p in data.rglob("*.bin")
    )
    print(f"\n== {count:,} x 1 KiB files ({runs} runs each, median) ==", flush=True)

    startup = statistics.median(cluster.tusk("version") for _ in range(runs))
    cli: list[float] = []
    for n in range(runs):
        cluster.tusk("create", "repo", f"small{n}")
        cli.append(cluster.tusk("put", "file", f"small{n}@master", "-r", "-f", str(data)))
    request = statistics.median(
        asyncio.run(put_from_memory(cluster.config, f"mem{n}", files)) for n in range(runs)
    )
    tusk = statistics.median(cli)
    print(
        f"tusk put file -r (CLI wall)           {fmt_s(tusk)}  (runs: "
        + ", ".join(f"{t:.3f}" for t in cli)
        + ")  goal <= 0.5 s: "
        + ("met" if tusk <= 0.5 else "MISSED")
    )
    print(f"  CLI start-up alone (tusk version)   {fmt_s(startup)}")
    print(f"  the request alone (put_files, in-process client, files in memory) {fmt_s(request)}")

    git = []
    for n in range(runs):
        repo = work / f"git{n}"
        shutil.copytree(data, repo / "small")
        run(["git", "init", "-q"], cwd=repo)
        run(["git", "config", "user.email", "bench@example.com"], cwd=repo)
        run(["git", "config", "user.name", "bench"], cwd=repo)
        git.append(timed(partial(run, ["sh", "-c", "git add -A && git commit -qm x"], cwd=repo)))
        shutil.rmtree(repo)
    git_s = statistics.median(git)
    print(
        f"git add -A && git commit              {fmt_s(git_s)}  (tusk is {git_s / tusk:.1f}x faster)"
    )

    dvc = dvc_binary()
    if dvc is None:
        print("dvc add                               dvc not installed")
        return
    times = []
    for n in range(runs):
        repo = work / f"dvc{n}"
        shutil.copytree(data, repo / "small")
        run([dvc, "init", "--no-scm", "-q"], cwd=repo)
        run([dvc, "config", "core.analytics", "false"], cwd=repo)
        times.append(timed(partial(run, [dvc, "add", "-q", "small"], cwd=repo)))
        shutil.rmtree(repo)
    dvc_s = statistics.median(times)
    ratio = dvc_s / tusk
    print(
        f"dvc add                               {fmt_s(dvc_s)}  (tusk is {ratio:.1f}x faster; "
        f"goal >= 7x: {'met' if ratio >= 7 else 'MISSED'})"
    )


# ---------------------------------------------------------------------------- one big file


def make_big_file(path: Path, size: int) -> None:
    with path.open("wb") as file:
        for _ in range(0, size, 64 * MiB):
            file.write(os.urandom(min(64 * MiB, size - file.tell())))


def warm(path: Path) -> None:
    with path.open("rb") as file:
        while file.read(16 * MiB):
            pass


def bench_big_file(cluster: EmbeddedCluster, work: Path, size: int) -> None:
    big = work / "big.bin"
    make_big_file(big, size)
    warm(big)
    print(f"\n== one {size // MiB} MiB file ==", flush=True)
    cluster.tusk("create", "repo", "big")
    before = dir_bytes(cluster.objects)
    first = took = cluster.tusk("put", "file", "big@master:/big.bin", "-f", str(big))
    grew = dir_bytes(cluster.objects) - before
    rate = size / took / 1e6
    print(
        f"tusk put file (CLI wall)              {fmt_s(took)} = {rate:.0f} MB/s  goal >= 500 MB/s: "
        + ("met" if rate >= 500 else "MISSED")
    )
    print(f"  object store grew by {grew / MiB:.1f} MiB (random data, zstd cannot shrink it)")

    # Rewrite 1 MiB in the middle, then put the whole file again.
    with big.open("r+b") as file:
        file.seek(size // 2)
        file.write(os.urandom(MiB))
    warm(big)
    before = dir_bytes(cluster.objects)
    took = cluster.tusk("put", "file", "big@master:/big.bin", "-f", str(big))
    grew = dir_bytes(cluster.objects) - before
    print(
        f"re-put with 1 MiB changed mid-file    {fmt_s(took)} = {size / took / 1e6:.0f} MB/s; "
        f"new bytes stored {grew / MiB:.2f} MiB  goal <= 8 MiB: "
        + ("met" if grew <= 8 * MiB else "MISSED")
    )

    dvc = dvc_binary()
    if dvc is None:
        print("dvc add of the same file              dvc not installed")
        return
    repo = work / "dvcbig"
    repo.mkdir()
    os.link(big, repo / "big.bin")  # same inode: page cache stays warm, no copy
    run([dvc, "init", "--no-scm", "-q"], cwd=repo)
    run([dvc, "config", "core.analytics", "false"], cwd=repo)
    dvc_s = timed(lambda: run([dvc, "add", "-q", "big.bin"], cwd=repo))
    print(
        f"dvc add of the same file              {fmt_s(dvc_s)} = {size / dvc_s / 1e6:.0f} MB/s "
        f"(tusk is {dvc_s / first:.1f}x faster)"
    )
    shutil.rmtree(repo)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where the cluster and inputs go")
    args = parser.parse_args()
    dvc = dvc_binary()
    print(f"dvc: {dvc or 'dvc not installed'}; git: {shutil.which('git') or 'not found'}")
    with tempfile.TemporaryDirectory(prefix="tusk-bench-cli-", dir=args.dir) as tmp:
        work = Path(tmp)
        with embedded_cluster(args.dir) as cluster:
            bench_small_files(cluster, work, args.files, args.runs)
            bench_big_file(cluster, work, args.size_mib * MiB)


if __name__ == "__main__":
    main()
