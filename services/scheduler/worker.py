"""A datum worker: ``python -m services.scheduler.worker <pipeline>``.

Pulls the pipeline's datum tasks from the JetStream work queue one at a time,
runs each in the sandbox, publishes the result and only then acks the task. A
worker killed mid-datum never acks: JetStream redelivers the task to a live
worker after ``task_ack_wait`` seconds without a heartbeat, and the killed run's
partial output was never recorded anywhere. Results carry ``Nats-Msg-Id`` =
job:datum, so a datum's result counts once however often it ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig

from services.scheduler.backends.pod_sandbox import PodSandbox
from services.scheduler.datum_runner import run_datum
from services.scheduler.sandbox import Sandbox
from services.scheduler.tasks import (
    DatumResult,
    DatumTask,
    result_envelope,
    worker_consumer_name,
)
from shared.bus import Bus, connect, results_subject, tasks_stream_name, tasks_subject
from shared.chunking import ChunkCache
from shared.config import Config, load_config
from shared.errors import InvalidArgument, NotFound
from shared.file_index import FileIndex
from shared.objstore import ObjectStore, open_object_store

log = logging.getLogger("tusk.worker")


def worker_consumer_config(config: Config, pipeline: str) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=worker_consumer_name(pipeline),
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=config.task_ack_wait,
        max_ack_pending=1000,
    )


async def load_task(objects: ObjectStore, data: bytes) -> tuple[DatumTask, int]:
    body: dict[str, Any] = json.loads(data)
    if "ref" in body:
        body = json.loads(await objects.get(body["ref"]))
    return DatumTask.from_json(body["task"]), int(body["datum_tries"])


async def _heartbeat(msg: Msg, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        with contextlib.suppress(Exception):
            await msg.in_progress()


class Worker:
    def __init__(
        self,
        config: Config,
        pipeline: str,
        bus: Bus,
        objects: ObjectStore,
        workdir: Path,
        sandbox: Sandbox | None = None,
    ) -> None:
        self.config = config
        # None: bubblewrap on this machine; a PodSandbox in a Kubernetes worker pod.
        self.sandbox = sandbox
        self.pipeline = pipeline
        self.bus = bus
        self.objects = objects
        self.workdir = workdir
        self.cache = ChunkCache(max_bytes=256 << 20)
        self.index = FileIndex(objects)

    async def run(self) -> None:
        sub = await self.bus.js.pull_subscribe(
            tasks_subject(self.config, self.pipeline),
            durable=worker_consumer_name(self.pipeline),
            stream=tasks_stream_name(self.config),
            config=worker_consumer_config(self.config, self.pipeline),
        )
        log.info("worker for %s ready", self.pipeline)
        while True:
            try:
                msgs = await sub.fetch(batch=1, timeout=5.0)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            for msg in msgs:
                await self.handle(msg)

    async def handle(self, msg: Msg) -> None:
        try:
            task, tries = await load_task(self.objects, msg.data)
        except (InvalidArgument, NotFound, ValueError, KeyError) as exc:
            # A task no worker can read would crash every worker it reaches: drop it loudly.
            log.error("dropping unreadable task %s: %s", msg.subject, exc)
            await msg.term()
            return
        delivered = msg.metadata.num_delivered or 1
        left = tries - (delivered - 1)
        if left <= 0:
            result = _died(delivered - 1)
            attempts = delivered - 1
        else:
            async with asyncio.TaskGroup() as group:
                beat = group.create_task(_heartbeat(msg, max(1.0, self.config.task_ack_wait / 3)))
                try:
                    result, attempts = await self._run_with_retries(task, left, delivered)
                finally:
                    beat.cancel()
        envelope = result_envelope(task, result, attempts)
        await self.bus.js.publish(
            results_subject(self.config, task.pipeline),
            json.dumps(envelope).encode(),
            headers={"Nats-Msg-Id": f"{task.job_id}:{task.datum_id}"},
        )
        await msg.ack()

    async def _run_with_retries(
        self, task: DatumTask, left: int, delivered: int
    ) -> tuple[DatumResult, int]:
        attempt = delivered
        while True:
            result = await run_datum(
                self.objects,
                replace(task, attempt=attempt),
                workdir=self.workdir,
                cache=self.cache,
                index=self.index,
                sandbox=self.sandbox,
            )
            left -= 1
            if result.state != "FAILED" or left <= 0:
                return result, attempt
            attempt += 1


def _died(times: int) -> DatumResult:
    return DatumResult(
        state="FAILED",
        output_root=None,
        output_files=0,
        output_bytes=0,
        exit_code=None,
        error=f"the worker running this datum died {times} time(s)",
        logs="",
        seconds=0.0,
        download_bytes=0,
        upload_bytes=0,
    )


def _sandbox() -> Sandbox | None:
    """``TUSK_DATUM_SANDBOX=pod`` (set in Kubernetes worker pods): datums run in the pod's
    user container (``backends/pod_sandbox.py``); otherwise in bubblewrap here."""
    if os.environ.get("TUSK_DATUM_SANDBOX") == "pod":
        return PodSandbox()
    return None


async def main_async(pipeline: str) -> None:
    config = load_config()
    bus = await connect(config, name=f"tusk-worker-{pipeline}")
    try:
        async with open_object_store(config) as objects:
            with tempfile.TemporaryDirectory(prefix=f"tusk-worker-{pipeline}-") as workdir:
                worker = Worker(config, pipeline, bus, objects, Path(workdir), _sandbox())
                task = asyncio.create_task(worker.run())
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(sig, task.cancel)
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        await bus.close()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if len(sys.argv) != 2:
        print("usage: python -m services.scheduler.worker PIPELINE", file=sys.stderr)
        raise SystemExit(2)
    asyncio.run(main_async(sys.argv[1]))


if __name__ == "__main__":
    main()
