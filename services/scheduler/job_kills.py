"""Stopping a job's running datums on a worker: ``tusk stop job`` (and a job's timeout)
end the job ``JOB_KILLED`` in the scheduler; every worker of the pipeline hears the
``job.state`` event and cancels that job's datums it is running, which kills their
sandboxes (``Sandbox.run`` kills the process group when cancelled). Tasks of a killed job
that arrive later are not run. The scheduler has already marked those datums failed, so
the worker only acks their messages (a ``FAILED`` result it sends changes nothing).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable
from typing import TypeVar

from shared.api.events import JobStateChanged, subject_filter
from shared.api.pps_models import JOB_KILLED
from shared.platform.backoff import Backoff, keep_running
from shared.platform.bus import Bus
from shared.platform.config import Config

log = logging.getLogger("tusk.worker")

T = TypeVar("T")
# Killed jobs remembered, so their late tasks are not run (oldest forgotten first).
REMEMBERED = 1000


class JobKilled(Exception):
    """The datum's job was stopped while it ran (or before it started)."""


class JobKills:
    """The datums this worker runs, by job, and the jobs killed while it runs."""

    def __init__(self) -> None:
        self._running: dict[str, set[asyncio.Task[object]]] = {}
        self._killed: OrderedDict[str, None] = OrderedDict()

    def killed(self, job_id: str) -> bool:
        return job_id in self._killed

    async def run(self, job_id: str, step: Awaitable[T]) -> T:
        """``step`` for a datum of ``job_id``; raises :class:`JobKilled` if the job is
        stopped first or meanwhile (the step is cancelled: its sandbox is killed). A cancel
        of the caller itself (the worker stopping) propagates as usual."""
        if self.killed(job_id):
            if asyncio.iscoroutine(step):
                step.close()
            raise JobKilled(job_id)
        task: asyncio.Task[T] = asyncio.ensure_future(step)
        self._running.setdefault(job_id, set()).add(task)
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and self.killed(job_id) and not (current and current.cancelling()):
                raise JobKilled(job_id) from None
            raise
        finally:
            running = self._running.get(job_id)
            if running is not None:
                running.discard(task)
                if not running:
                    del self._running[job_id]

    def kill(self, job_id: str) -> int:
        """Mark ``job_id`` killed and cancel its running datums; how many were running."""
        self._killed[job_id] = None
        while len(self._killed) > REMEMBERED:
            self._killed.popitem(last=False)
        tasks = list(self._running.get(job_id, ()))
        for task in tasks:
            task.cancel()
        return len(tasks)

    async def watch(self, bus: Bus, config: Config, pipeline: str) -> None:
        """Kill datums of the pipeline's jobs as they are killed, for good (a lost NATS
        connection is waited out and the subscription made again)."""
        subject = subject_filter(config.nats_prefix, "job.state", pipeline)

        async def follow() -> None:
            async with bus.subscribe_events(subject, "new") as events:
                async for event in events:
                    payload = event.payload
                    if isinstance(payload, JobStateChanged) and payload.state == JOB_KILLED:
                        count = self.kill(payload.job)
                        if count:
                            log.info(
                                "job %s killed: stopped %d running datum(s)", payload.job, count
                            )

        await keep_running(f"job kills of {pipeline}", follow, log, Backoff(maximum=10.0))
