"""Tiny datums share task messages: the work per datum is counted, and a worker that dies
in the middle of a message loses no datum and doubles no result.

Real NATS, real bubblewrap, real workers (subprocesses of the scheduler's local backend
in the cluster test; an in-process ``Worker`` in the crash test)."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.scheduler.tasks import (
    MAX_BATCH,
    MAX_BATCH_BYTES,
    DatumTask,
    batch_envelope,
    batch_size,
    batch_tasks,
)
from services.scheduler.worker import Worker
from shared.platform.bus import (
    Bus,
    connect,
    results_stream_name,
    results_subject,
    tasks_stream_name,
    tasks_subject,
)
from shared.platform.config import Config
from shared.storage.objstore.local import LocalStore
from tests.fixtures.cluster import Cluster
from tests.test_datum_runner import needs_bwrap
from tests.test_pipelines import files, read, wait_for_jobs

# -- the pure part ----------------------------------------------------------------------


def test_small_jobs_keep_one_datum_per_message_and_large_ones_share() -> None:
    assert batch_size(1, 4) == 1
    assert batch_size(40, 4) == 1  # every slot still sees several messages
    assert batch_size(120, 2) == 7
    assert batch_size(10_000, 4) == MAX_BATCH
    assert batch_size(100_000, 0) == MAX_BATCH


def test_batches_keep_neighbours_together_within_count_and_bytes() -> None:
    assert batch_tasks([10] * 7, 3) == [[0, 1, 2], [3, 4, 5], [6]]
    half = MAX_BATCH_BYTES // 2
    # A task too big to share goes alone; the others fill up to the byte budget.
    assert batch_tasks([half, half, 1, MAX_BATCH_BYTES + 1, 1], 32) == [[0, 1], [2], [3], [4]]


# -- a whole job: messages counted ------------------------------------------------------

COPY = {
    "pipeline": {"name": "many"},
    "transform": {"cmd": ["sh", "-c", 'cp "$words" /pfs/out/']},
    "input": {"pfs": {"repo": "words", "glob": "/*"}},
}
DATUMS = 120


async def last_seq(bus: Bus, stream: str) -> int:
    return int((await bus.js.stream_info(stream)).state.last_seq)


async def test_a_job_of_many_tiny_datums_sends_few_task_messages_and_one_result_each(
    cluster: Cluster,
) -> None:
    bus = await connect(cluster.config)
    try:
        await bus.ensure_streams()
        tasks_before = await last_seq(bus, tasks_stream_name(cluster.config))
        results_before = await last_seq(bus, results_stream_name(cluster.config))
        await cluster.pfs.create_repo("words")
        contents = {f"/w{i:03d}": f"word {i}".encode() for i in range(DATUMS)}
        await cluster.pfs.put_files("words", "master", files(contents))
        await cluster.pps.create_pipeline(COPY)
        (job,) = await wait_for_jobs(cluster, "many", 1, timeout=120)
        assert job.state == "JOB_SUCCESS", job
        assert job.data_processed == DATUMS
        messages = await last_seq(bus, tasks_stream_name(cluster.config)) - tasks_before
        results = await last_seq(bus, results_stream_name(cluster.config)) - results_before
    finally:
        await bus.close()
    # parallelism 1 x 2 datums at a time per worker: 7 datums a message, 18 messages.
    per_message = batch_size(DATUMS, 1 * cluster.config.worker.concurrency)
    assert per_message > 1
    assert messages == math.ceil(DATUMS / per_message), messages
    assert results == DATUMS, results  # one result per datum, none twice
    for path in ("/w000", f"/w{DATUMS - 1:03d}"):
        assert await read(cluster, "many", path) == contents[path]


# -- a worker dying in the middle of a message ------------------------------------------

PIPELINE = "batched"


@pytest.fixture
async def config(tusk_config: Config) -> Config:
    return tusk_config.replace(task_ack_wait=1)


@pytest.fixture
async def bus(config: Config) -> AsyncIterator[Bus]:
    connected = await connect(config)
    await connected.ensure_streams()
    yield connected
    await connected.close()


def task(datum: str, script: str) -> DatumTask:
    return DatumTask(
        pipeline=PIPELINE,
        job_id="job-1",
        datum_id=datum,
        attempt=1,
        inputs=(),
        cmd=("sh", "-c", script),
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LocalStore]:
    opened = LocalStore(tmp_path / "objects")
    yield opened
    await opened.close()


def start_worker(
    config: Config, bus: Bus, store: LocalStore, tmp_path: Path, name: str
) -> asyncio.Task[None]:
    workdir = tmp_path / name
    workdir.mkdir()
    return asyncio.create_task(Worker(config, PIPELINE, bus, store, workdir).run())


async def stop_worker(running: asyncio.Task[None]) -> None:
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running


@needs_bwrap
async def test_a_worker_dying_mid_message_loses_no_datum_and_doubles_no_result(
    bus: Bus, config: Config, store: LocalStore, tmp_path: Path
) -> None:
    found: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def received(msg: Any) -> None:
        await found.put(json.loads(msg.data))

    sub = await bus.nc.subscribe(results_subject(config, PIPELINE), cb=received)
    results_before = await last_seq(bus, results_stream_name(config))
    # Five quick datums and one that hangs on its first try only.
    batch = [task(f"d{i}", f"echo {i} > /pfs/out/d{i}") for i in range(5)]
    batch.append(task("slow", '[ "$TUSK_DATUM_ATTEMPT" = 1 ] && sleep 60; echo s > /pfs/out/s'))
    await bus.js.publish(
        tasks_subject(config, PIPELINE),
        json.dumps(batch_envelope(batch, 3)).encode(),
        headers={"Nats-Msg-Id": "job-1+d0+6"},
    )
    first = start_worker(config, bus, store, tmp_path, "first")
    try:
        quick = {(await asyncio.wait_for(found.get(), 60))["datum_id"] for _ in range(5)}
        assert quick == {f"d{i}" for i in range(5)}
    finally:
        await stop_worker(first)  # dies with "slow" running and the message unacked
    second = start_worker(config, bus, store, tmp_path, "second")
    try:
        seen: dict[str, dict[str, Any]] = {}
        while "slow" not in seen:
            body = await asyncio.wait_for(found.get(), 60)
            seen[body["datum_id"]] = body
        await acked(bus, config)  # once all six results were out
    finally:
        await stop_worker(second)
        await sub.unsubscribe()
    assert seen["slow"]["result"]["state"] == "SUCCESS"
    assert seen["slow"]["attempts"] == 2  # the death counted as a try
    # The redelivered message ran its quick datums again; their results were dropped as
    # duplicates by their Nats-Msg-Id: the stream holds one result per datum.
    assert await last_seq(bus, results_stream_name(config)) - results_before == 6


async def acked(bus: Bus, config: Config, timeout: float = 10) -> None:
    """Wait until the work queue is empty: its message was acked."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (await bus.js.stream_info(tasks_stream_name(config))).state.messages:
        assert asyncio.get_running_loop().time() < deadline, "the message was never acked"
        await asyncio.sleep(0.05)
