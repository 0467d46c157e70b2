"""A datum worker: ``python -m services.scheduler.worker <pipeline>``.

Pulls the pipeline's datum tasks from the JetStream work queue one at a time,
runs each in the sandbox, publishes the result and only then acks the task. A
worker killed mid-datum never acks: JetStream redelivers the task to a live
worker after ``task_ack_wait`` seconds without a heartbeat, and the killed run's
partial output was never recorded anywhere. Results carry ``Nats-Msg-Id`` =
job:datum, so a datum's result counts once however often it ran.

Lazy inputs: a worker that runs datums in bubblewrap mounts a lazy-input tree
(``lazy_fs``) under its scratch directory at start and serves ``lazy: true`` inputs
from it. Where it cannot (pyfuse3 missing, no ``/dev/fuse``, the mount refused, or
datums running in a pod's user container, which cannot see a FUSE mount made in the
worker's), lazy inputs are copied like the others, and the first datum with a lazy
input logs one warning saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from shared.errors import InvalidArgument, NotFound, Unavailable
from shared.file_index import FileIndex
from shared.objstore import ObjectStore, open_object_store

if TYPE_CHECKING:
    from services.scheduler.lazy_fs import LazyInputs

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
        lazy: LazyInputs | None = None,
        lazy_unavailable: str | None = None,
    ) -> None:
        self.config = config
        # None: bubblewrap on this machine; a PodSandbox in a Kubernetes worker pod.
        self.sandbox = sandbox
        self.pipeline = pipeline
        self.bus = bus
        self.objects = objects
        self.workdir = workdir
        self.cache = ChunkCache(max_bytes=256 << 20)
        self.concurrency = max(1, int(os.environ.get("TUSK_WORKER_CONCURRENCY", "2")))
        self.index = FileIndex(objects)
        # The lazy-input tree, or why there is none (said once, at the first lazy input).
        self.lazy = lazy
        self.lazy_unavailable = lazy_unavailable

    async def run(self) -> None:
        sub = await self.bus.js.pull_subscribe(
            tasks_subject(self.config, self.pipeline),
            durable=worker_consumer_name(self.pipeline),
            stream=tasks_stream_name(self.config),
            config=worker_consumer_config(self.config, self.pipeline),
        )
        log.info("worker for %s ready (%d datums at a time)", self.pipeline, self.concurrency)
        slots = asyncio.Semaphore(self.concurrency)

        async def handle_then_free(msg: Msg) -> None:
            try:
                await self.handle(msg)
            finally:
                slots.release()

        # A few datums in flight per worker overlap one's sandbox with another's storage
        # and NATS round trips; each datum still runs alone in its own sandbox.
        async with asyncio.TaskGroup() as group:
            while True:
                await slots.acquire()
                try:
                    msgs = await sub.fetch(batch=1, timeout=5.0)
                except (nats.errors.TimeoutError, TimeoutError):
                    slots.release()
                    continue
                except BaseException:
                    slots.release()
                    raise
                for msg in msgs:
                    group.create_task(handle_then_free(msg))

    async def handle(self, msg: Msg) -> None:
        try:
            task, tries = await load_task(self.objects, msg.data)
        except (InvalidArgument, NotFound, ValueError, KeyError) as exc:
            # A task no worker can read would crash every worker it reaches: drop it loudly.
            log.error("dropping unreadable task %s: %s", msg.subject, exc)
            await msg.term()
            return
        if self.lazy is None and self.lazy_unavailable and any(i.lazy for i in task.inputs):
            log.warning("lazy inputs are copied on this worker: %s", self.lazy_unavailable)
            self.lazy_unavailable = None
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
                lazy=self.lazy,
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


def _fuse_unavailable() -> str | None:
    try:
        from shared.fuse_session import fuse_unavailable_reason
    except ImportError:
        return "pyfuse3 is not installed (the 'fuse' extra)"
    return fuse_unavailable_reason()


@contextlib.asynccontextmanager
async def lazy_inputs(
    objects: ObjectStore, cache: ChunkCache, mountpoint: Path, sandbox: Sandbox | None
) -> AsyncIterator[tuple[LazyInputs | None, str | None]]:
    """The worker's lazy-input tree mounted at ``mountpoint`` for the block, or
    ``(None, why not)`` where lazy inputs must be copied instead."""
    if sandbox is not None:
        yield None, "datums run in the pod's user container, which cannot see a FUSE mount"
        return
    reason = _fuse_unavailable()
    if reason is not None:
        yield None, reason
        return
    from services.scheduler.lazy_fs import mount_lazy_inputs

    async with contextlib.AsyncExitStack() as stack:
        try:
            mounted = await stack.enter_async_context(mount_lazy_inputs(objects, cache, mountpoint))
        except Unavailable as exc:
            yield None, exc.message
            return
        yield mounted, None


async def main_async(pipeline: str) -> None:
    config = load_config()
    bus = await connect(config, name=f"tusk-worker-{pipeline}")
    try:
        async with open_object_store(config) as objects:
            with tempfile.TemporaryDirectory(prefix=f"tusk-worker-{pipeline}-") as workdir:
                worker = Worker(config, pipeline, bus, objects, Path(workdir), _sandbox())
                # Unmounted before the scratch directory holding it is removed.
                async with lazy_inputs(
                    objects, worker.cache, Path(workdir) / "lazy", worker.sandbox
                ) as (lazy, why_not):
                    worker.lazy, worker.lazy_unavailable = lazy, why_not
                    task = asyncio.create_task(worker.run())
                    loop = asyncio.get_running_loop()
                    for sig in (signal.SIGTERM, signal.SIGINT):
                        loop.add_signal_handler(sig, task.cancel)
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
    finally:
        await bus.close()


_CLONE_NEWNS = 0x00020000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18


def private_mount_namespace() -> bool:
    """Move this process into a mount namespace of its own whose mounts do not
    propagate to the host; True if it did.

    The lazy-input tree is then mounted only there: sandboxes started by this worker
    inherit it, and when the worker dies, even by SIGKILL, the namespace and the mount
    go with it instead of leaving a dead FUSE mount on the machine. Needs
    CAP_SYS_ADMIN, and must run before any thread starts (threads made earlier would
    stay in the old namespace). Without it the tree is mounted in the host's namespace.
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWNS) != 0:
        return False
    if libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        # Still shared with the host: mounts would leak out, which is the old behaviour.
        log.warning("mount namespace not made private: %s", os.strerror(ctypes.get_errno()))
    return True


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if len(sys.argv) != 2:
        print("usage: python -m services.scheduler.worker PIPELINE", file=sys.stderr)
        raise SystemExit(2)
    private_mount_namespace()
    asyncio.run(main_async(sys.argv[1]))


if __name__ == "__main__":
    main()
