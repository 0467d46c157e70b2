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
2. Per-datum overhead: a job of D tiny datums (default 10,000); from the job's start to its
   end, times 2 workers, divided by D, minus the bare command's own time (``sh -c 'cp a b'``
   started from Python, median of 200). Goal <= 10 ms per datum per worker.
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


def spec(name: str, repo: str) -> dict[str, Any]:
    return {
        "pipeline": {"name": name},
        "transform": {"cmd": ["sh", "-c", COPY]},
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


def cpu_snapshot() -> dict[str, float]:
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
        if group is None:
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


async def first_job(pfs: PfsClient, pps: PpsClient, name: str, n: int) -> JobInfo:
    started = time.perf_counter()
    await fill_repo(pfs, f"{name}-in", n)
    print(f"  input {name}-in: {n:,} files in {time.perf_counter() - started:.1f} s", flush=True)
    started = time.perf_counter()
    cpu_before = cpu_snapshot()
    await pps.create_pipeline(spec(name, f"{name}-in"))
    job = await wait_jobs(pps, name, 1, timeout=3600)
    wall = time.perf_counter() - started
    cpu_after = cpu_snapshot()
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


def bare_command_seconds(runs: int = 200) -> float:
    """Median wall time of ``sh -c 'cp "$in" OUT'`` on a 1 KiB file, started from Python."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src.bin"
        src.write_bytes(os.urandom(1024))
        out = Path(tmp) / "out"
        out.mkdir()
        env = dict(os.environ, **{"in": str(src)})
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            subprocess.run(["sh", "-c", f'cp "$in" {out}/'], env=env, check=True)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


async def overhead(pfs: PfsClient, pps: PpsClient, datums: int) -> None:
    print(f"\n-- per-datum overhead, {datums:,} datums, parallelism {PARALLELISM} --", flush=True)
    job = await first_job(pfs, pps, "overhead", datums)
    bare = bare_command_seconds()
    per = job_seconds(job) * PARALLELISM / datums
    above = per - bare
    print(
        f"  per datum per worker {per * 1000:.2f} ms; bare sh -c cp {bare * 1000:.2f} ms; "
        f"overhead {above * 1000:.2f} ms (goal <= 10 ms: {'met' if above <= 0.010 else 'MISSED'})",
        flush=True,
    )


async def run(config: Config, big: int, small: int, datums: int) -> None:
    async with PfsClient(config.pfs_url) as pfs, PpsClient(config.pps_url) as pps:
        if datums:
            await overhead(pfs, pps, datums)
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
    args = parser.parse_args()
    with embedded_cluster(args.dir) as cluster, pipeline_services(cluster) as config:
        asyncio.run(run(config, args.big, args.small, args.datums))


if __name__ == "__main__":
    main()
