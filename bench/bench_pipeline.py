"""Pipelines: incremental latency flat in N, and per-datum overhead (issue 4).

Run: ``.venv/bin/python -m bench.bench_pipeline [--big 20000] [--small 1000] [--datums 10000]``

Starts ``tusk up --detach`` in a temporary ``TUSK_HOME`` (real PostgreSQL, NATS, PFS); if
that cluster does not run PPS and the scheduler yet, starts them beside it the same way
(``python -m services.pps`` / ``python -m services.scheduler`` as child processes with the
cluster's config). Workers are the scheduler's local backend: real subprocesses running each
datum in a bubblewrap sandbox. Every pipeline is ``cp "$in" /pfs/out/`` over glob ``/*``
with ``parallelism_spec.constant = 2``.

1. Incremental latency: an input repo of N files (1 KiB each, one commit); the pipeline's
   first job processes all N. Then, 11 times: add 1 file and time from the input commit
   finished to the pipeline's output commit finished -- from PFS's own timestamps (both
   from one clock) and as the client saw it (``put_files`` returned → the output commit
   arrived on ``subscribe``). Goal <= 1.5 s, and the figure at N=1,000 within 1.5x of it.
2. Per-datum cost: a job of D tiny datums (default 10,000); from the job's start to its
   end, times 2 workers, divided by D, against the bare command (``sh -c 'cp a b'``
   started from Python, median of 200) and the bubblewrap floor (the same ``cp`` in the
   workers' sandbox, median of 200), both measured in the same run. Goal <= 3.5x the bare
   command. Also the job's fixed costs (plan and publish, assembly) and the peak RSS of
   the scheduler and the workers (``--overhead-only --datums 100000`` for issue 12's
   100,000-datum job).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench.bench_cli_ingest import TUSK, EmbeddedCluster, embedded_cluster
from shared.api.pfs_client import PfsClient
from shared.api.pps_client import PpsClient
from shared.api.pps_models import JobInfo
from shared.platform.config import Config, dump_config_toml
from tusk.embedded.components import pick_port

PARALLELISM = 2
COPY = 'cp "$in" /pfs/out/'


# The same copy with datum batching: the command starts once per task message and asks
# for each datum (docs/pipeline-spec.md, "Datum batching").
BATCHED_COPY = f"while tusk next datum; do . /run/tusk/datum.env; {COPY}; done"


def spec(name: str, repo: str, *, batching: bool = False) -> dict[str, Any]:
    transform: dict[str, Any] = {"cmd": ["sh", "-c", BATCHED_COPY if batching else COPY]}
    if batching:
        transform["datum_batching"] = True
    return {
        "pipeline": {"name": name},
        "transform": transform,
        "input": {"pfs": {"repo": repo, "name": "in", "glob": "/*"}},
        "parallelism_spec": {"constant": PARALLELISM},
    }


def ts(value: str | None) -> float:
    assert value is not None
    return datetime.fromisoformat(value).timestamp()


# ---------------------------------------------------------------------------- services


def _running_components(cluster: EmbeddedCluster) -> set[str]:
    done = subprocess.run(
        [TUSK, "status", "-o", "json"],
        env=cluster.env,
        capture_output=True,
        check=False,
    )
    with contextlib.suppress(ValueError):
        body = json.loads(done.stdout)
        return {c["name"] for c in body.get("components", []) if c.get("state") == "up"}
    return set()


@contextlib.contextmanager
def pipeline_services(cluster: EmbeddedCluster) -> Iterator[Config]:
    """The cluster's config, with PPS and the scheduler running (started here if need be)."""
    running = _running_components(cluster)
    if {"pps", "scheduler"} <= running:
        print("PPS and scheduler: run by tusk up", flush=True)
        yield cluster.config
        return
    taken: set[int] = set()
    ports = {}
    for name, preferred in (("pps", 7652), ("scheduler", 7653)):
        ports[name] = pick_port(preferred, taken)
        taken.add(ports[name])
    config = cluster.config.replace(
        pps_url=f"http://127.0.0.1:{ports['pps']}",
        scheduler_url=f"http://127.0.0.1:{ports['scheduler']}",
    )
    config_path = cluster.home / "bench-config.toml"
    config_path.write_text(dump_config_toml(config))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name in ("pps", "scheduler"):
            env = dict(cluster.env, TUSK_CONFIG=str(config_path))
            env["TUSK_LISTEN_PORT"] = str(ports[name])
            log = (cluster.home / "logs" / f"bench-{name}.log").open("ab")
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", f"services.{name}"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=Path(__file__).resolve().parents[1],
                )
            )
            asyncio.run(_wait_ready(f"http://127.0.0.1:{ports[name]}/readyz", procs[-1]))
        print(f"PPS and scheduler: started beside tusk up (ports {ports})", flush=True)
        yield config
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"{url}: the service exited with {proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise SystemExit(f"{url} not ready after {timeout} s")


# ---------------------------------------------------------------------------- CPU by process

_CLK = os.sysconf("SC_CLK_TCK")
_GROUPS = (
    ("services.scheduler.worker", "workers (python)"),
    ("services.scheduler", "scheduler"),
    ("services.pps", "pps"),
    ("services.pfs", "pfs"),
    ("postgres", "postgres"),
    ("nats-server", "nats"),
    ("bench.bench_pipeline", "this benchmark"),
)


def _in_cluster(pid: str, home: str | None) -> bool:
    """Whether process ``pid`` belongs to the cluster of ``TUSK_HOME=home`` (its
    environment says so); other clusters on a shared machine are not counted."""
    if home is None:
        return True
    try:
        return f"TUSK_HOME={home}".encode() in Path("/proc", pid, "environ").read_bytes()
    except OSError:
        return False


def cpu_snapshot(home: str | None = None) -> dict[str, float]:
    """CPU seconds per component: its processes' own time, and its reaped children's apart.

    A worker's reaped children are its sandboxes (bwrap, sh, cp): they show as
    "<group> children". Processes that exit between two snapshots are lost unless
    their parent reaped them (PostgreSQL backends and sandboxes are reaped).
    """
    totals: dict[str, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode()
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        group = next((label for key, label in _GROUPS if key in cmdline), None)
        if group is None or (group != "this benchmark" and not _in_cluster(entry.name, home)):
            continue
        own = (int(fields[11]) + int(fields[12])) / _CLK
        children = (int(fields[13]) + int(fields[14])) / _CLK
        totals[group] = totals.get(group, 0.0) + own
        totals[group + " children"] = totals.get(group + " children", 0.0) + children
    return totals


def cpu_report(before: dict[str, float], after: dict[str, float], wall: float) -> str:
    spent = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    parts = [f"{k} {v:.1f}" for k, v in sorted(spent.items(), key=lambda kv: -kv[1]) if v >= 0.05]
    total = sum(v for v in spent.values() if v > 0)
    return f"CPU seconds over {wall:.1f} s wall ({total / wall:.2f} cores busy): " + ", ".join(
        parts
    )


# ---------------------------------------------------------------------------- helpers


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def fill_repo(pfs: PfsClient, repo: str, count: int, batch: int = 50_000) -> None:
    """``repo`` with ``count`` 1 KiB files at the root, in as few commits as the batch allows."""
    await pfs.create_repo(repo)
    for start in range(0, count, batch):

        async def source(start: int = start) -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
            for i in range(start, min(count, start + batch)):
                yield f"/f-{i:07d}.bin", _one(os.urandom(1024))

        await pfs.put_files(repo, "master", source())


async def wait_jobs(pps: PpsClient, pipeline: str, count: int, timeout: float) -> JobInfo:
    """The newest job, once ``count`` jobs exist and all are done."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = await pps.list_jobs(pipeline)
        if len(jobs) >= count and all(j.done for j in jobs):
            return jobs[0]
        if time.monotonic() > deadline:
            raise SystemExit(f"{pipeline}: jobs not done after {timeout:.0f} s: {jobs[:2]}")
        await asyncio.sleep(0.2)


def job_seconds(job: JobInfo) -> float:
    return ts(job.finished) - ts(job.started)


async def first_job(
    pfs: PfsClient,
    pps: PpsClient,
    name: str,
    n: int,
    home: str | None = None,
    *,
    batching: bool = False,
) -> JobInfo:
    started = time.perf_counter()
    await fill_repo(pfs, f"{name}-in", n)
    print(f"  input {name}-in: {n:,} files in {time.perf_counter() - started:.1f} s", flush=True)
    started = time.perf_counter()
    cpu_before = cpu_snapshot(home)
    await pps.create_pipeline(spec(name, f"{name}-in", batching=batching))
    job = await wait_jobs(pps, name, 1, timeout=3600)
    wall = time.perf_counter() - started
    cpu_after = cpu_snapshot(home)
    assert job.state == "JOB_SUCCESS", job
    assert job.data_processed == n, job
    print(
        f"  first job of {name}: {n:,} datums, {job_seconds(job):.1f} s from job start to end "
        f"({wall:.1f} s from create pipeline), "
        f"{job_seconds(job) * PARALLELISM / n * 1000:.2f} ms per datum per worker",
        flush=True,
    )
    inside = [d.seconds for d in await pps.list_datums(name, job.id) if d.seconds is not None]
    if inside:
        print(
            f"  time inside the datum runner (materialise, sandbox, store output): median "
            f"{statistics.median(inside) * 1000:.1f} ms, mean "
            f"{statistics.fmean(inside) * 1000:.1f} ms over {len(inside):,} datums",
            flush=True,
        )
    print("  " + cpu_report(cpu_before, cpu_after, wall), flush=True)
    return job


async def add_one(
    pfs: PfsClient,
    pps: PpsClient,
    name: str,
    k: int,
    jobs_before: int,
    phases: list[tuple[float, float, float]],
) -> tuple[float, float]:
    """(PFS timestamps, client wall) from the input commit finished to the output finished."""
    repo = f"{name}-in"
    arrived: asyncio.Queue[Any] = asyncio.Queue()
    async with PfsClient(pfs.base_url) as watcher:
        task = asyncio.create_task(_forward(watcher, name, arrived))
        try:
            await asyncio.sleep(0.2)  # the subscription is open before the put

            async def source() -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
                yield f"/new-{k:03d}.bin", _one(os.urandom(1024))

            put = await pfs.put_files(repo, "master", source())
            committed = time.perf_counter()
            while True:
                seen, info = await asyncio.wait_for(arrived.get(), timeout=120)
                if any(p.id == put.commit.id for p in info.provenance):
                    break
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    job = await wait_jobs(pps, name, jobs_before + 1, timeout=120)
    assert job.state == "JOB_SUCCESS" and job.data_processed == 1, job
    phases.append(
        (
            ts(job.created) - ts(put.commit.finished),
            ts(job.finished) - ts(job.created),
            ts(info.finished) - ts(job.finished),
        )
    )
    return ts(info.finished) - ts(put.commit.finished), seen - committed


async def _forward(pfs: PfsClient, repo: str, queue: asyncio.Queue[Any]) -> None:
    async for info in pfs.subscribe_commits(repo, "master"):
        await queue.put((time.perf_counter(), info))


async def incremental(
    pfs: PfsClient, pps: PpsClient, name: str, n: int, runs: int = 11
) -> tuple[float, float]:
    print(f"\n-- incremental latency, N = {n:,} --", flush=True)
    await first_job(pfs, pps, name, n)
    server: list[float] = []
    client: list[float] = []
    phases: list[tuple[float, float, float]] = []
    for k in range(runs):
        s, c = await add_one(pfs, pps, name, k, 1 + k, phases)
        server.append(s)
        client.append(c)
    s_med, c_med = statistics.median(server), statistics.median(client)
    print(
        f"  add 1 file → output commit finished (median of {runs}): {s_med:.3f} s by PFS "
        f"timestamps, {c_med:.3f} s as the client saw it (runs: "
        + ", ".join(f"{s:.2f}" for s in server)
        + f")  goal <= 1.5 s: {'met' if s_med <= 1.5 else 'MISSED'}",
        flush=True,
    )
    event, job, land = (statistics.median(p[i] for p in phases) * 1000 for i in range(3))
    print(
        f"  where (medians): input commit finished → job created {event:.0f} ms, job created → "
        f"job finished {job:.0f} ms, job finished → output commit finished {land:.0f} ms",
        flush=True,
    )
    return s_med, c_med


def _median_wall(argv: list[str], env: dict[str, str], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, env=env, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bare_command_seconds(runs: int = 200) -> float:
    """Median wall time of ``sh -c 'cp "$in" OUT'`` on a 1 KiB file, started from Python."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src.bin"
        src.write_bytes(os.urandom(1024))
        out = Path(tmp) / "out"
        out.mkdir()
        env = dict(os.environ, **{"in": str(src)})
        return _median_wall(["sh", "-c", f'cp "$in" {out}/'], env, runs)


def bwrap_floor_seconds(runs: int = 200) -> float:
    """Median wall time of the same ``cp`` in the workers' own bubblewrap sandbox (the
    argv ``Sandbox.argv`` builds for a datum: one input bound at /pfs/in, /pfs/out
    writable), started from Python: what a datum costs before any of Tusk's own work."""
    from services.scheduler.sandbox import Sandbox

    sandbox = Sandbox()
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "in"
        inputs.mkdir()
        (inputs / "src.bin").write_bytes(os.urandom(1024))
        out = Path(tmp) / "out"
        out.mkdir()
        out.chmod(0o777)  # the sandbox runs as nobody
        argv = sandbox.argv(["sh", "-c", COPY], inputs={"in": inputs}, out=out)
        env = sandbox.environment({"in": "/pfs/in/src.bin"})
        return _median_wall(argv, env, runs)


def peak_rss_mib(home: str | None) -> dict[str, float]:
    """Peak resident memory (VmHWM) of the scheduler and of each worker, MiB."""
    found: dict[str, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode()
            status = Path(entry.path, "status").read_text()
        except OSError:
            continue
        if not _in_cluster(entry.name, home):
            continue
        if "services.scheduler.worker" in cmdline:
            label = f"worker {entry.name}"
        elif "-m services.scheduler" in cmdline or cmdline.rstrip().endswith("services.scheduler"):
            label = f"scheduler {entry.name}"
        else:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                found[label] = int(line.split()[1]) / 1024
    return found


async def fixed_costs(pps: PpsClient, name: str, job: JobInfo) -> str:
    """The job's fixed costs, apart from its datums: created → started (queue), started →
    first datum result (plan, record, publish the first tasks), last datum result →
    finished (assembly of the output commit, finishing it)."""
    finished = [ts(d.finished) for d in await pps.list_datums(name, job.id) if d.finished]
    if not finished or job.started is None:
        return "  fixed costs: no datum timestamps"
    first, last = min(finished), max(finished)
    return (
        f"  fixed costs: job created → started {ts(job.started) - ts(job.created):.2f} s; "
        f"started → first datum result {first - ts(job.started):.2f} s (plan, publish); "
        f"last datum result → job finished {ts(job.finished) - last:.2f} s (assembly); "
        f"datums running {last - first:.1f} s"
    )


class PeerSampler:
    """The bare command and the bwrap floor, timed in turn in a thread *while the job
    runs*, so both see the load the job's datums saw (a shared machine's speed drifts by
    2x within minutes); one sample each every ``every`` seconds."""

    def __init__(self, every: float = 0.25) -> None:
        self.every = every
        self.bare: list[float] = []
        self.floor: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeerSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.bare.append(bare_command_seconds(1))
            self.floor.append(bwrap_floor_seconds(1))


async def overhead(
    pfs: PfsClient, pps: PpsClient, datums: int, home: str, *, batching: bool = False
) -> None:
    name = "batched" if batching else "overhead"
    print(
        f"\n-- per-datum overhead{' with datum_batching' if batching else ''}, {datums:,} "
        f"datums, parallelism {PARALLELISM} --",
        flush=True,
    )
    rss_before = peak_rss_mib(home)
    with PeerSampler() as during:
        job = await first_job(pfs, pps, name, datums, home, batching=batching)
    print(await fixed_costs(pps, name, job), flush=True)
    rss_after = peak_rss_mib(home)
    print(
        "  peak RSS (MiB) before → after the job: "
        + ", ".join(
            f"{k} {rss_before.get(k, 0):.0f} → {v:.0f}" for k, v in sorted(rss_after.items())
        ),
        flush=True,
    )
    bare_after = bare_command_seconds()
    floor_after = bwrap_floor_seconds()
    bare = statistics.median(during.bare) if during.bare else bare_after
    floor = statistics.median(during.floor) if during.floor else floor_after
    per = job_seconds(job) * PARALLELISM / datums
    print(
        f"  bare sh -c cp / bwrap floor, medians of {len(during.bare)} each sampled during the "
        f"job: {bare * 1000:.2f} / {floor * 1000:.2f} ms; of 200 each after it, on a quiet "
        f"cluster: {bare_after * 1000:.2f} / {floor_after * 1000:.2f} ms",
        flush=True,
    )
    print(
        f"  per datum per worker {per * 1000:.2f} ms; bare {bare * 1000:.2f} ms; "
        f"bwrap floor {floor * 1000:.2f} ms ({floor / bare:.2f}x bare)",
        flush=True,
    )
    goal = 1.5 if batching else 3.5
    for label, peer in (("sampled during the job", bare), ("after it", bare_after)):
        print(
            f"  ratio per datum / bare ({label}) {per / peer:.2f}x (goal <= {goal}x: "
            f"{'met' if per / peer <= goal else 'MISSED'})",
            flush=True,
        )
    print(
        f"  per datum / bwrap floor {per / floor:.2f}x during, {per / floor_after:.2f}x after; "
        f"above bare {(per - bare_after) * 1000:.2f} ms",
        flush=True,
    )


async def run(config: Config, big: int, small: int, datums: int, home: str, batching: str) -> None:
    async with PfsClient(config.pfs_url) as pfs, PpsClient(config.pps_url) as pps:
        if datums:
            if batching != "only":
                await overhead(pfs, pps, datums, home)
            if batching:
                await overhead(pfs, pps, datums, home, batching=True)
        if not big or not small:
            return
        lat_small = await incremental(pfs, pps, "small", small)
        lat_big = await incremental(pfs, pps, "big", big)
        ratio = lat_big[0] / lat_small[0]
        print(
            f"\nincremental latency N={big:,} vs N={small:,}: {lat_big[0]:.3f} s vs "
            f"{lat_small[0]:.3f} s, ratio {ratio:.2f} (goal: flat, <= 1.5x: "
            f"{'met' if ratio <= 1.5 else 'MISSED'})",
            flush=True,
        )


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", type=int, default=20_000, help="N of the large input")
    parser.add_argument("--small", type=int, default=1_000, help="N of the small input")
    parser.add_argument("--datums", type=int, default=10_000, help="0 skips the overhead case")
    parser.add_argument("--dir", default=None, help="where the cluster goes")
    parser.add_argument(
        "--overhead-only", action="store_true", help="skip the incremental-latency cases"
    )
    parser.add_argument(
        "--batching",
        nargs="?",
        const="also",
        default="",
        choices=["also", "only"],
        help="the overhead job with datum_batching too (or only: --batching only)",
    )
    args = parser.parse_args()
    with embedded_cluster(args.dir) as cluster, pipeline_services(cluster) as config:
        big, small = (0, 0) if args.overhead_only else (args.big, args.small)
        asyncio.run(run(config, big, small, args.datums, str(cluster.home), args.batching))


if __name__ == "__main__":
    main()
