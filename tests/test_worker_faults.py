"""A worker against a real NATS, a real store, real bwrap and a real PPS (or none):
environment faults are retried without burning tries, deliveries are bounded, and a
datum whose worker keeps dying still gets its result."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from services.pps.app import build_app as build_pps
from services.scheduler.tasks import DatumTask, task_envelope, worker_consumer_name
from services.scheduler.worker import DELIVERY_MARGIN, Worker, ensure_worker_consumer
from shared.api.pps_client import PpsClient
from shared.pipeline.spec import SecretUse
from shared.platform.bus import Bus, connect, results_subject, tasks_stream_name, tasks_subject
from shared.platform.config import Config
from shared.storage.objstore.local import LocalStore
from tests.fixtures.apps import serve, stop
from tests.fixtures.servers import free_port
from tests.test_datum_runner import needs_bwrap

PIPELINE = "faulty"
TOKEN = "tok-0123456789abcdef"


@pytest.fixture
async def config(tusk_config: Config) -> Config:
    return tusk_config.replace(task_ack_wait=1, pps_url=f"http://127.0.0.1:{free_port()}")


@pytest.fixture
async def bus(config: Config) -> AsyncIterator[Bus]:
    connected = await connect(config)
    await connected.ensure_streams()
    yield connected
    await connected.close()


@pytest.fixture
async def results(bus: Bus, config: Config) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
    """Every datum result the worker publishes, as parsed envelopes."""
    found: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def received(msg: Any) -> None:
        await found.put(json.loads(msg.data))

    sub = await bus.nc.subscribe(results_subject(config, PIPELINE), cb=received)
    yield found
    await sub.unsubscribe()


def task(datum: str, script: str, **fields: Any) -> DatumTask:
    return DatumTask(
        pipeline=PIPELINE,
        job_id="job-1",
        datum_id=datum,
        attempt=1,
        inputs=(),
        cmd=("sh", "-c", script),
        **fields,
    )


async def publish(bus: Bus, config: Config, item: DatumTask, tries: int) -> None:
    await bus.js.publish(
        tasks_subject(config, PIPELINE),
        json.dumps(task_envelope(item, tries)).encode(),
        headers={"Nats-Msg-Id": f"{item.job_id}:{item.datum_id}"},
    )


@pytest.fixture
async def running(
    bus: Bus, config: Config, tmp_path: Path
) -> AsyncIterator[tuple[Worker, PpsClient]]:
    """A worker for ``PIPELINE``, fetching secrets from ``config.pps_url``, running."""
    store = LocalStore(tmp_path / "objects")
    workdir = tmp_path / "work"
    workdir.mkdir()
    async with PpsClient(config.pps_url) as pps:
        worker = Worker(
            config, PIPELINE, bus, store, workdir, secrets=pps, environment_patience=3.0
        )
        running = asyncio.create_task(worker.run())
        try:
            yield worker, pps
        finally:
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running
            await store.close()


async def next_result(
    results: asyncio.Queue[dict[str, Any]], timeout: float = 30
) -> dict[str, Any]:
    return await asyncio.wait_for(results.get(), timeout)


SECRET_TASK = task(
    "d-secret",
    'test "$TOKEN" = ' + TOKEN + ' && echo "got $TOKEN" && echo ok > /pfs/out/ok',
    secrets=(SecretUse("creds", key="token", env_var="TOKEN"),),
)


@needs_bwrap
async def test_pps_down_is_retried_in_place_then_fails_the_datum_without_burning_tries(
    bus: Bus,
    config: Config,
    running: tuple[Worker, PpsClient],
    results: asyncio.Queue[dict[str, Any]],
) -> None:
    started = asyncio.get_running_loop().time()
    await publish(bus, config, SECRET_TASK, tries=3)
    envelope = await next_result(results)
    elapsed = asyncio.get_running_loop().time() - started
    result = envelope["result"]
    assert result["state"] == "FAILED"
    assert result["error"].startswith("environment fault for 3 s: cannot reach")
    # One try, however often the fetch was retried: the datum never ran.
    assert envelope["attempts"] == 1
    assert 3 <= elapsed < 15


@needs_bwrap
async def test_pps_back_within_patience_runs_the_datum_on_its_first_try(
    bus: Bus,
    config: Config,
    running: tuple[Worker, PpsClient],
    results: asyncio.Queue[dict[str, Any]],
) -> None:
    worker, _ = running
    worker.environment_patience = 60.0
    # The secret is stored (in PostgreSQL) through a PPS the worker does not know of.
    elsewhere = await serve(build_pps(config), other := free_port())
    try:
        async with PpsClient(f"http://127.0.0.1:{other}") as pps:
            await pps.create_secret(
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": "creds"},
                    "stringData": {"token": TOKEN},
                }
            )
    finally:
        await stop(elsewhere)
    await publish(bus, config, SECRET_TASK, tries=3)
    await asyncio.sleep(1.5)  # the worker is retrying by now
    port = int(config.pps_url.rsplit(":", 1)[1])
    server = await serve(build_pps(config), port)
    try:
        envelope = await next_result(results, timeout=60)
    finally:
        await stop(server)
    result = envelope["result"]
    assert (result["state"], result["error"]) == ("SUCCESS", None)
    assert envelope["attempts"] == 1
    assert TOKEN not in result["logs"]
    assert "got [secret]" in result["logs"]


async def test_a_task_whose_worker_keeps_dying_ends_failed_after_its_tries(
    bus: Bus, config: Config, tmp_path: Path, results: asyncio.Queue[dict[str, Any]]
) -> None:
    """Two deliveries taken and never acked (workers that died), then a live worker: the
    datum's two tries are spent, so it publishes FAILED without running the command."""
    await ensure_worker_consumer(bus, config, PIPELINE, 2 + DELIVERY_MARGIN)
    dead = await bus.js.pull_subscribe_bind(
        durable=worker_consumer_name(PIPELINE), stream=tasks_stream_name(config)
    )
    await publish(bus, config, task("d-dies", "echo ran > /pfs/out/ran"), tries=2)
    for delivery in (1, 2):
        (msg,) = await dead.fetch(1, timeout=10)
        assert msg.metadata.num_delivered == delivery
        # Not acked: after ack_wait (1 s) JetStream hands the task out again.
    store = LocalStore(tmp_path / "objects")
    worker = Worker(config, PIPELINE, bus, store, tmp_path)
    running = asyncio.create_task(worker.run())
    try:
        envelope = await next_result(results)
    finally:
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        await store.close()
    assert envelope["result"]["state"] == "FAILED"
    assert envelope["result"]["error"] == (
        "no result after 2 deliveries: the worker running this datum died 2 time(s)"
    )
    assert envelope["attempts"] == 2


async def test_the_worker_consumer_bounds_deliveries_and_follows_datum_tries(
    bus: Bus, config: Config
) -> None:
    stream = tasks_stream_name(config)
    name = worker_consumer_name(PIPELINE)
    # A consumer from before max_deliver was set redelivers forever (-1): bounded now.
    await bus.js.add_consumer(
        stream,
        ConsumerConfig(
            name=name,
            durable_name=name,
            filter_subject=tasks_subject(config, PIPELINE),
            ack_policy=AckPolicy.EXPLICIT,
        ),
    )
    assert (await bus.js.consumer_info(stream, name)).config.max_deliver == -1
    assert await ensure_worker_consumer(bus, config, PIPELINE, 6) == 6
    # A task with more tries raises it; one with fewer never lowers it.
    assert await ensure_worker_consumer(bus, config, PIPELINE, 13) == 13
    assert await ensure_worker_consumer(bus, config, PIPELINE, 5) == 13
    assert (await bus.js.consumer_info(stream, name)).config.max_deliver == 13
