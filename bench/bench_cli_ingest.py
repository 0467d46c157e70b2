"""Ingest through the real CLI against a real embedded cluster, beside git and DVC (issues 3, 12).

Run: ``.venv/bin/python -m bench.bench_cli_ingest [--files 10000] [--size-mib 1024] [--dir /tmp]``

Starts ``tusk up --detach`` in a temporary ``TUSK_HOME`` (PostgreSQL, NATS, PFS as child
processes), then measures, each ratio in this one run:

1. The CLI's start-up: ``tusk version``, ``tusk --help``, ``tusk put file --help`` and
   ``tusk list repo`` against a bare ``python -c`` of the same interpreter importing what
   that command needs (goal: <= 2x).
2. ``tusk put file R@master -r -f DIR`` of 10,000 x 1 KiB files (100 dirs of 100), in rounds
   with ``git add -A && git commit`` and ``dvc add`` of the same files (goals: >= 4x faster
   than git, >= 10x faster than DVC); the request alone (the same upload from memory with
   ``PfsClient.put_files`` in this process) beside it.
3. ``tusk put file`` of one 1 GiB random file (page cache warm), MB/s; then the same file with
   1 MiB in the middle rewritten, put again: bytes the object store grew by (goal <= 8 MiB);
   ``dvc add`` of the same 1 GiB file beside it. ``--size-mib 0`` skips this part.

DVC is not a project dependency: ``bench/install-dvc.sh`` puts it in its own venv, which is
found there, or by ``$DVC``, or on PATH; otherwise the DVC lines say "dvc not installed".
Every figure is the median of a few runs unless said otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
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


# Where bench/install-dvc.sh puts DVC (its own venv: its dependencies are not ours).
DVC_VENV = Path(os.environ.get("DVC_VENV", Path.home() / ".cache" / "tusk-bench" / "dvc"))


def dvc_binary() -> str | None:
    """``$DVC``, DVC in bench/install-dvc.sh's venv, or ``dvc`` on PATH; else None."""
    explicit = os.environ.get("DVC")
    if explicit:
        return explicit if Path(explicit).exists() else None
    installed = DVC_VENV / "bin" / "dvc"
    return str(installed) if installed.exists() else shutil.which("dvc")


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


def cpu_of_children() -> float:
    """CPU seconds (user + system) of every finished child process so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def git_add_commit(data: Path, repo: Path) -> float:
    """``git add -A && git commit`` of a fresh copy of ``data``; the copy is not timed."""
    shutil.copytree(data, repo / "small")
    run(["git", "init", "-q"], cwd=repo)
    run(["git", "config", "user.email", "bench@example.com"], cwd=repo)
    run(["git", "config", "user.name", "bench"], cwd=repo)
    # No automatic gc in the background: it would pack the objects while we delete them.
    run(["git", "config", "gc.auto", "0"], cwd=repo)
    run(["git", "config", "maintenance.auto", "false"], cwd=repo)
    took = timed(partial(run, ["sh", "-c", "git add -A && git commit -qm x"], cwd=repo))
    shutil.rmtree(repo, ignore_errors=True)
    return took


def dvc_add(dvc: str, data: Path, repo: Path) -> float:
    """``dvc add`` of a fresh copy of ``data`` (``dvc init --no-scm``, analytics off first)."""
    shutil.copytree(data, repo / "small")
    run([dvc, "init", "--no-scm", "-q"], cwd=repo)
    run([dvc, "config", "core.analytics", "false"], cwd=repo)
    took = timed(partial(run, [dvc, "add", "-q", "small"], cwd=repo))
    shutil.rmtree(repo, ignore_errors=True)
    return took


def bench_small_files(cluster: EmbeddedCluster, work: Path, count: int, runs: int) -> None:
    """``tusk put file -r`` vs git and DVC, in rounds: each round runs each tool once, so a
    machine that slows down or speeds up over the minutes slows every tool alike.

    Each round has files of its own (new random bytes): the same files again would be
    all-duplicate chunks and index nodes for tusk, which git and DVC in a fresh repo are not.
    """
    dvc = dvc_binary()
    print(f"\n== {count:,} x 1 KiB files ({runs} rounds of tusk, git, dvc; medians) ==", flush=True)
    tusk: list[float] = []
    tusk_cpu: list[float] = []
    git: list[float] = []
    dvc_times: list[float] = []
    # CPU seconds of each tool's processes (tusk: the CLI only; its servers are not children)
    git_cpu: list[float] = []
    dvc_cpu: list[float] = []
    for n in range(runs):
        data = work / f"small{n}"
        make_small_files(data, count)
        cluster.tusk("create", "repo", f"small{n}")
        before = cpu_of_children()
        tusk.append(cluster.tusk("put", "file", f"small{n}@master", "-r", "-f", str(data)))
        tusk_cpu.append(cpu_of_children() - before)
        before = cpu_of_children()
        git.append(git_add_commit(data, work / f"git{n}"))
        git_cpu.append(cpu_of_children() - before)
        if dvc is not None:
            before = cpu_of_children()
            dvc_times.append(dvc_add(dvc, data, work / f"dvc{n}"))
            dvc_cpu.append(cpu_of_children() - before)
        shutil.rmtree(data)
    requests = []
    for n in range(runs):
        files = [(f"/small/mem-{n}/{i:06d}.bin", os.urandom(1024)) for i in range(count)]
        requests.append(asyncio.run(put_from_memory(cluster.config, f"mem{n}", files)))
    tusk_s, git_s = statistics.median(tusk), statistics.median(git)
    print(
        f"tusk put file -r (CLI wall)           {fmt_s(tusk_s)}  (runs: "
        + ", ".join(f"{t:.3f}" for t in tusk)
        + f"; CLI process CPU {statistics.median(tusk_cpu):.3f} s)"
    )
    print(
        "  the request alone (put_files, in-process client, files in memory) "
        + fmt_s(statistics.median(requests))
    )
    print(
        f"git add -A && git commit              {fmt_s(git_s)}  (runs: "
        + ", ".join(f"{t:.3f}" for t in git)
        + f"; CPU {statistics.median(git_cpu):.3f} s"
        + f")  tusk is {git_s / tusk_s:.1f}x faster; goal >= 4x: "
        + ("met" if git_s / tusk_s >= 4 else "MISSED")
    )
    if dvc is None:
        print("dvc add                               dvc not installed (bench/install-dvc.sh)")
        return
    dvc_s = statistics.median(dvc_times)
    ratio = dvc_s / tusk_s
    print(
        f"dvc add                               {fmt_s(dvc_s)}  (runs: "
        + ", ".join(f"{t:.3f}" for t in dvc_times)
        + f"; CPU {statistics.median(dvc_cpu):.3f} s"
        + f")  tusk is {ratio:.1f}x faster; goal >= 10x: "
        + ("met" if ratio >= 10 else "MISSED")
    )


# ---------------------------------------------------------------------------- start-up

# (what tusk runs, the floor: a bare interpreter importing what that command really needs)
STARTUP_PAIRS: list[tuple[list[str], str]] = [
    (["version"], "import click, importlib.metadata"),
    (["--help"], "import click"),
    (["put", "file", "--help"], "import click"),
    (["list", "repo"], "import click, shared.api.pfs_client"),
]


def bench_startup(cluster: EmbeddedCluster, runs: int) -> None:
    """The CLI's start-up against a bare ``python -c`` that imports what the command needs.

    Each pair runs alternately, ``runs`` times, after one warm-up; the ratio is of the
    medians (goal <= 2x). ``list repo`` makes its request too: its ratio is an upper bound.
    """
    python = sys.executable
    print(f"\n== CLI start-up ({runs} alternating runs each, medians) ==", flush=True)
    bare = statistics.median(
        timed_process([python, "-c", "pass"], cluster.env) for _ in range(runs)
    )
    print(f"python -c pass                        {fmt_s(bare)}")
    for args, needs in STARTUP_PAIRS:
        cli = [TUSK, *args]
        floor = [python, "-c", needs]
        timed_process(cli, cluster.env)
        timed_process(floor, cluster.env)
        cli_s: list[float] = []
        floor_s: list[float] = []
        for _ in range(runs):
            cli_s.append(timed_process(cli, cluster.env))
            floor_s.append(timed_process(floor, cluster.env))
        ratio = statistics.median(cli_s) / statistics.median(floor_s)
        label = "tusk " + " ".join(args)
        print(
            f"{label:<37} {fmt_s(statistics.median(cli_s))}  vs python -c '{needs}' "
            f"{fmt_s(statistics.median(floor_s))}: {ratio:.2f}x  goal <= 2x: "
            + ("met" if ratio <= 2 else "MISSED")
        )


def timed_process(argv: list[str], env: dict[str, str]) -> float:
    """Wall time of one run of ``argv`` (its output thrown away)."""
    started = time.perf_counter()
    run(argv, env=env)
    return time.perf_counter() - started


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
    parser.add_argument("--size-mib", type=int, default=1024, help="0: skip the big file")
    parser.add_argument("--runs", type=int, default=5, help="rounds of tusk, git and dvc")
    parser.add_argument("--startup-runs", type=int, default=15)
    parser.add_argument("--dir", default=None, help="where the cluster and inputs go")
    args = parser.parse_args()
    dvc = dvc_binary()
    print(f"dvc: {dvc or 'dvc not installed'}; git: {shutil.which('git') or 'not found'}")
    with tempfile.TemporaryDirectory(prefix="tusk-bench-cli-", dir=args.dir) as tmp:
        work = Path(tmp)
        with embedded_cluster(args.dir) as cluster:
            bench_startup(cluster, args.startup_runs)
            bench_small_files(cluster, work, args.files, args.runs)
            if args.size_mib:
                bench_big_file(cluster, work, args.size_mib * MiB)


if __name__ == "__main__":
    main()
