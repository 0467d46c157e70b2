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

No datum can hang its job, and no task can crash-loop a worker (``handle`` never
raises but for a cancel):

- Anything wrong with one datum — its task cannot be decoded, a bad input, a bad
  output, a sandbox that cannot start, an unexpected exception in the runner — ends
  that datum ``FAILED`` with a one-line reason; ``FAILED`` runs are retried in place
  up to ``datum_tries``.
- A task that cannot be decoded still gets a ``FAILED`` result when its job and datum
  ids can be read (``tasks.readable_ids``), so its job finishes; otherwise it is
  terminated (never redelivered) with a line in the worker's log.
- Environment faults (the object store or PPS down, the sandbox unusable on this
  worker) do not count as tries: the run is retried in place with backoff for up to
  ``environment_patience`` seconds, then the datum fails with the fault's reason.
- Each redelivery (a worker died mid-datum) counts as a try. The consumer's
  ``max_deliver`` is ``datum_tries`` + ``DELIVERY_MARGIN``, so a task is never
  redelivered forever; once a datum's tries are spent by deaths, the next delivery
  publishes its ``FAILED`` result without running it. The margin leaves room for that
  delivery itself to be lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import json
import logging
import os
import signal
import sys
import tempfile
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.scheduler.backends.pod_sandbox import PodSandbox
from services.scheduler.datum_batch import run_batch
from services.scheduler.datum_runner import ScratchReaper, run_datum
from services.scheduler.datum_secrets import SecretSource, fetch_secrets
from services.scheduler.job_kills import JobKilled, JobKills
from services.scheduler.sandbox import Sandbox
from services.scheduler.tasks import (
    DatumResult,
    DatumTask,
    TaskIds,
    batch_readable_ids,
    failed_result,
    readable_ids,
    result_envelope,
    worker_consumer_name,
)
from shared.api.pps_client import PpsClient
from shared.pipeline.spec import DEFAULT_DATUM_TRIES
from shared.platform.bus import (
    Bus,
    Delivery,
    DurableConsumer,
    connect,
    results_subject,
    tasks_stream_name,
    tasks_subject,
)
from shared.platform.config import Config, load_config
from shared.platform.errors import (
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    TuskError,
    Unavailable,
)
from shared.storage.chunking import ChunkCache
from shared.storage.file_index import FileIndex
from shared.storage.objstore import ObjectStore, open_object_store

if TYPE_CHECKING:
    from services.scheduler.lazy_fs import LazyInputs

log = logging.getLogger("tusk.worker")

# Deliveries of a task beyond its datum_tries (see the module doc).
DELIVERY_MARGIN = 3
# How long environment faults are retried in place before the datum fails (seconds).
ENVIRONMENT_PATIENCE = 300.0
_BACKOFF_FIRST = 1.0
_BACKOFF_MAX = 30.0
# OS errors of the worker's machine rather than of the datum.
_ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EMFILE, errno.ENFILE})
# Secrets fetched per (job, name), kept for the datums of a few recent jobs.
_SECRET_CACHE = 32
_REASON_MAX = 500
_MIN_BEAT = 0.1
# Task messages a worker holds beyond the datums it runs at once (fetched ahead).
PREFETCH = 1


def worker_consumer(config: Config, pipeline: str, max_deliver: int) -> DurableConsumer:
    """The pipeline's shared worker consumer; created, or updated in place, with this."""
    return DurableConsumer(
        stream=tasks_stream_name(config),
        name=worker_consumer_name(pipeline),
        subject=tasks_subject(config, pipeline),
        ack_wait=config.task_ack_wait,
        max_deliver=max_deliver,
    )


async def ensure_worker_consumer(bus: Bus, config: Config, pipeline: str, max_deliver: int) -> int:
    """Make sure the pipeline's worker consumer exists and redelivers a task at least
    ``max_deliver`` times (never fewer than it already allowed: workers of one pipeline
    may see tasks of different ``datum_tries``); return its ``max_deliver``."""
    return await bus.ensure_consumer(worker_consumer(config, pipeline, max_deliver))


async def load_task(objects: ObjectStore, data: bytes) -> tuple[DatumTask, int]:
    """The task of a one-datum message and its datum_tries (see ``load_tasks``)."""
    tasks, tries = await load_tasks(objects, data)
    if len(tasks) != 1:
        raise InvalidArgument(f"malformed task message: {len(tasks)} tasks, expected one")
    return tasks[0], tries


async def load_tasks(objects: ObjectStore, data: bytes) -> tuple[list[DatumTask], int]:
    """The tasks of a message (one, or a batch of ``tasks.batch_envelope``) and their
    datum_tries; a stored envelope is fetched first."""
    body: dict[str, Any] = json.loads(data)
    if "ref" in body:
        body = json.loads(await objects.get(body["ref"]))
    tries = body["datum_tries"]
    if isinstance(tries, bool) or not isinstance(tries, int) or tries < 1:
        raise InvalidArgument(f"malformed task message: datum_tries {tries!r}")
    if "tasks" in body:
        items = body["tasks"]
        if not isinstance(items, list) or not items:
            raise InvalidArgument("malformed task message: 'tasks' must be a non-empty list")
        return [DatumTask.from_json(item) for item in items], tries
    return [DatumTask.from_json(body["task"])], tries


def _body(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


def one_line(exc: BaseException) -> str:
    """An exception as one line for a datum's ``error``."""
    text = exc.message if isinstance(exc, TuskError) else f"{type(exc).__name__}: {exc}"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first if len(first) <= _REASON_MAX else first[: _REASON_MAX - 3] + "..."


def is_environment_fault(exc: BaseException) -> bool:
    """Whether ``exc`` is this worker's environment failing rather than the datum: a
    dependency down (``Unavailable``), the sandbox unusable here (``FailedPrecondition``),
    the machine out of disk or file descriptors."""
    if isinstance(exc, Unavailable | FailedPrecondition):
        return True
    return isinstance(exc, OSError) and exc.errno in _ENVIRONMENT_ERRNOS


async def _heartbeat(msg: Delivery, every: float) -> None:
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
        *,
        secrets: SecretSource | None = None,
        environment_patience: float = ENVIRONMENT_PATIENCE,
    ) -> None:
        self.config = config
        # None: bubblewrap on this machine; a PodSandbox in a Kubernetes worker pod.
        self.sandbox = sandbox
        self.pipeline = pipeline
        self.bus = bus
        self.objects = objects
        self.workdir = workdir
        self.cache = ChunkCache(max_bytes=256 << 20)
        self.concurrency = max(1, config.worker.concurrency)
        # Datums running at once, over all the messages in hand.
        self._slots = asyncio.Semaphore(self.concurrency)
        # One bubblewrap sandbox description for every datum (building it reads the
        # interpreter's directories and /etc); None keeps a pod's or an image's own.
        self._datum_sandbox = sandbox if sandbox is not None else Sandbox()
        # Datums' scratch trees are removed in a thread while the next datums run.
        self.reaper = ScratchReaper(workdir)
        self.index = FileIndex(objects)
        # The lazy-input tree, or why there is none (said once, at the first lazy input).
        self.lazy = lazy
        self.lazy_unavailable = lazy_unavailable
        # Where secret data comes from (PPS); None: a task naming secrets fails.
        self.secrets = secrets
        self._secret_cache: OrderedDict[tuple[str, str], dict[str, bytes]] = OrderedDict()
        self.environment_patience = environment_patience
        # The consumer's max_deliver as this worker last made sure of it.
        self.max_deliver = 0
        # Running datums by job, cancelled when their job is killed (tusk stop job).
        self.kills = JobKills()

    async def run(self) -> None:
        consumer = worker_consumer(
            self.config, self.pipeline, DEFAULT_DATUM_TRIES + DELIVERY_MARGIN
        )
        async with self.bus.pull(consumer) as reader:
            self.max_deliver = reader.max_deliver
            log.info("worker for %s ready (%d datums at a time)", self.pipeline, self.concurrency)
            # Messages in hand: one more than the datums that run at once, so the next task
            # is here when a sandbox ends instead of a fetch round trip later.
            limit = self.concurrency + PREFETCH
            in_hand = 0
            changed = asyncio.Condition()

            def has_room() -> bool:
                return in_hand < limit

            async def handle_then_free(msg: Delivery) -> None:
                nonlocal in_hand
                try:
                    await self.handle(msg)
                finally:
                    async with changed:
                        in_hand -= 1
                        changed.notify()

            # A few datums in flight per worker overlap one's sandbox with another's
            # storage and NATS round trips; each datum still runs alone in its own sandbox.
            async with asyncio.TaskGroup() as group:
                group.create_task(self.reaper.run())
                group.create_task(self.kills.watch(self.bus, self.config, self.pipeline))
                while True:
                    async with changed:
                        await changed.wait_for(has_room)
                        wanted = limit - in_hand
                        in_hand = limit
                    msgs: list[Delivery] = []
                    try:
                        msgs = await reader.fetch(wanted, timeout=5.0)
                    finally:
                        async with changed:
                            in_hand -= wanted - len(msgs)
                    for msg in msgs:
                        group.create_task(handle_then_free(msg))

    async def handle(self, msg: Delivery) -> None:
        """Take one task message to published results (then ack it), or leave it for
        redelivery; never raises but for a cancel, so no task can stop the worker."""
        try:
            await self._handle(msg)
        except Exception:
            # NATS gone while publishing, say: unacked, the task comes back after ack_wait.
            log.exception("task on %s not finished; it will be redelivered", msg.subject)

    async def _handle(self, msg: Delivery) -> None:
        delivered = msg.delivered
        try:
            tasks, tries = await load_tasks(self.objects, msg.data)
        except Exception as exc:
            if is_environment_fault(exc) and delivered + 1 < self.max_deliver:
                log.warning("task on %s cannot be fetched now: %s", msg.subject, one_line(exc))
                await msg.nak(delay=_BACKOFF_MAX)
                return
            await self._refuse(msg, f"the datum's task cannot be read: {one_line(exc)}", delivered)
            return
        if (
            self.lazy is None
            and self.lazy_unavailable
            and any(i.lazy for task in tasks for i in task.inputs)
        ):
            log.warning("lazy inputs are copied on this worker: %s", self.lazy_unavailable)
            self.lazy_unavailable = None
        if tries + DELIVERY_MARGIN > self.max_deliver:
            self.max_deliver = await ensure_worker_consumer(
                self.bus, self.config, self.pipeline, tries + DELIVERY_MARGIN
            )
        left = tries - (delivered - 1)
        async with asyncio.TaskGroup() as group:
            if left <= 0 or delivered >= self.max_deliver:
                for task in tasks:
                    group.create_task(self._publish(task.ids, _died(delivered - 1), delivered - 1))
            else:
                # Three beats per ack_wait: one lost beat must not let the task go elsewhere.
                every = max(_MIN_BEAT, self.config.task_ack_wait / 3)
                beat = group.create_task(_heartbeat(msg, every))
                try:
                    if tasks[0].datum_batching:
                        await self._batch(tasks, delivered)
                    else:
                        async with asyncio.TaskGroup() as datums:
                            for task in tasks:
                                datums.create_task(self._datum(task, left, delivered))
                finally:
                    beat.cancel()
        # Every result of the message is stored in JetStream before the message goes: a
        # worker that dies first leaves it for redelivery (results already out are dropped
        # as duplicates by their Nats-Msg-Id, and recorded once by the scheduler).
        await msg.ack()

    async def _datum(self, task: DatumTask, left: int, delivered: int) -> None:
        """Run one datum in a free slot, then publish its result: the slot is free for
        the next datum while the result travels."""
        async with self._slots:
            try:
                result, attempts = await self.kills.run(
                    task.job_id, self._run_with_retries(task, left, delivered)
                )
            except JobKilled:
                result, attempts = failed_result("its job was stopped"), delivered
        await self._publish(task.ids, result, attempts)

    async def _batch(self, tasks: list[DatumTask], delivered: int) -> None:
        """The datums of a ``datum_batching`` message through one sandbox (``datum_batch``),
        in one slot; each result is published as its datum ends. A datum's failure is its
        try of this delivery (no retry in place: the next datums go on). An environment
        fault raises, leaving the message for redelivery (a try for each of its datums)."""
        told: set[str] = set()
        async with self._slots, asyncio.TaskGroup() as sends:

            async def on_result(task: DatumTask, result: DatumResult) -> None:
                told.add(task.datum_id)
                sends.create_task(self._publish(task.ids, result, delivered))

            try:
                await self.kills.run(
                    tasks[0].job_id,
                    run_batch(
                        self.objects,
                        tasks,
                        workdir=self.workdir,
                        on_result=on_result,
                        cache=self.cache,
                        sandbox=self._datum_sandbox,
                        index=self.index,
                        secrets=await self._secrets_for(tasks[0]),
                    ),
                )
            except JobKilled:
                for task in tasks:
                    if task.datum_id not in told:
                        await on_result(task, failed_result("its job was stopped"))
            except Exception as exc:
                if is_environment_fault(exc):
                    raise
                log.exception("datums of job %s: the batch runner failed", tasks[0].job_id)
                reason = f"the worker failed running this datum: {one_line(exc)}"
                for task in tasks:
                    if task.datum_id not in told:
                        await on_result(task, failed_result(reason))

    async def _refuse(self, msg: Delivery, reason: str, delivered: int) -> None:
        """A task that cannot run: fail its datum if the message says which, else drop it."""
        body = _body(msg.data)
        batch = batch_readable_ids(body, self.pipeline)
        one = readable_ids(body, msg.msg_id, self.pipeline) if batch is None else None
        failing = batch if batch is not None else [one] if one is not None else []
        if not failing:
            await msg.term(f"a task that names no job and datum: {reason}")
            return
        for ids in failing:
            log.error("datum %s of job %s fails: %s", ids.datum_id, ids.job_id, reason)
            await self._publish(ids, failed_result(reason), delivered)
        await msg.ack()

    async def _publish(self, ids: TaskIds, result: DatumResult, attempts: int) -> None:
        await self.bus.publish_raw(
            results_subject(self.config, ids.pipeline),
            json.dumps(result_envelope(ids, result, attempts)).encode(),
            f"{ids.job_id}:{ids.datum_id}",
        )

    async def _run_with_retries(
        self, task: DatumTask, left: int, delivered: int
    ) -> tuple[DatumResult, int]:
        attempt = delivered
        while True:
            result, retriable = await self._attempt(replace(task, attempt=attempt))
            left -= 1
            if result.state != "FAILED" or left <= 0 or not retriable:
                return result, attempt
            attempt += 1

    async def _attempt(self, task: DatumTask) -> tuple[DatumResult, bool]:
        """One try of the datum, and whether another try may help. Faults of the datum
        are a ``FAILED`` result; faults of the environment are retried here with backoff
        (not counted as tries) for up to ``environment_patience`` seconds, then fail the
        datum with their reason, for good: more tries would only wait longer."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.environment_patience
        delay = _BACKOFF_FIRST
        while True:
            try:
                return await self._run_datum(task), True
            except (InvalidArgument, NotFound) as exc:  # a secret that is not there, say
                return failed_result(exc.message), True
            except DataLoss as exc:  # an input's bytes are gone: no try can bring them back
                return failed_result(exc.message), False
            except Exception as exc:
                if not is_environment_fault(exc):
                    log.exception(
                        "datum %s of job %s: the runner failed", task.datum_id, task.job_id
                    )
                    reason = f"the worker failed running this datum: {one_line(exc)}"
                    return failed_result(reason), True
                left = deadline - loop.time()
                if left <= 0:
                    reason = (
                        f"environment fault for {self.environment_patience:g} s: {one_line(exc)}"
                    )
                    return failed_result(reason), False
                log.warning(
                    "datum %s of job %s: %s; trying again in %.0f s (not counted as a try)",
                    task.datum_id, task.job_id, one_line(exc), min(delay, left),
                )  # fmt: skip
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, _BACKOFF_MAX)

    async def _run_datum(self, task: DatumTask) -> DatumResult:
        return await run_datum(
            self.objects,
            task,
            workdir=self.workdir,
            cache=self.cache,
            index=self.index,
            sandbox=self._datum_sandbox,
            lazy=self.lazy,
            secrets=await self._secrets_for(task),
            reaper=self.reaper,
        )

    async def _secrets_for(self, task: DatumTask) -> dict[str, dict[str, bytes]]:
        """The data of the secrets ``task`` names, fetched once per job and secret."""
        if not task.secrets:
            return {}
        if self.secrets is None:
            raise InvalidArgument("this worker has no way to fetch secrets")
        found: dict[str, dict[str, bytes]] = {}
        for name in sorted({use.name for use in task.secrets}):
            key = (task.job_id, name)
            if key not in self._secret_cache:
                fetched = await fetch_secrets(
                    self.secrets, [use for use in task.secrets if use.name == name]
                )
                self._secret_cache[key] = fetched[name]
                while len(self._secret_cache) > _SECRET_CACHE:
                    self._secret_cache.popitem(last=False)
            found[name] = self._secret_cache[key]
        return found


def _died(times: int) -> DatumResult:
    return failed_result(
        f"no result after {times} deliveries: the worker running this datum died {times} time(s)"
    )


def _sandbox(config: Config) -> Sandbox | None:
    """``worker.datum_sandbox = "pod"`` (``TUSK_DATUM_SANDBOX=pod``, set in Kubernetes
    worker pods): datums run in the pod's user container (``backends/pod_sandbox.py``);
    otherwise in bubblewrap here, in the cached image ``worker.image``
    (``TUSK_WORKER_IMAGE``) names when the local backend set it."""
    worker = config.worker
    if worker.datum_sandbox == "pod":
        return PodSandbox()
    digest = worker.image
    if digest:
        # The local backend pulled the image before starting this worker (docs/images.md).
        from services.scheduler.image_sandbox import ImageSandbox
        from shared.images.store import ImageStore

        return ImageSandbox(ImageStore(Path(worker.image_cache)).image(digest))
    return None


def _fuse_unavailable() -> str | None:
    try:
        from shared.platform.fuse_session import fuse_unavailable_reason
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
        async with (
            open_object_store(config) as objects,
            PpsClient(config.pps_url, cluster_id=config.cluster_id) as pps,
        ):
            with tempfile.TemporaryDirectory(prefix=f"tusk-worker-{pipeline}-") as workdir:
                worker = Worker(
                    config, pipeline, bus, objects, Path(workdir), _sandbox(config), secrets=pps
                )
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
