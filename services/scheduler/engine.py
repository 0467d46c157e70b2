"""The scheduler's engine: it leads, and composes the parts that do the work.

- ``services.scheduler.pipelines``: the scheduler's view of PPS's pipelines, learnt from PPS.
- ``services.scheduler.inputs``: ``commit.finished``/``branch.moved`` → JOB_CREATED jobs.
- ``services.scheduler.job_requests``: the jobs PPS asks for (pipeline changes, restarts).
- ``services.scheduler.jobs``: the job state machine, and datum results as they arrive.
- ``services.scheduler.workers``: the backend's workers follow the pipelines; their
  problems show on the pipeline.
- ``services.scheduler.cron``: due cron ticks committed.
- ``services.scheduler.consumers``: the JetStream consumers that feed them.

Everything durable lives in PostgreSQL and JetStream, so a restarted scheduler picks up
where it stopped. One scheduler drives at a time (a PostgreSQL advisory lock); another
replica waits as a hot standby. The loops outlive a PostgreSQL or NATS restart: each
retries with backoff (``shared.platform.backoff.keep_running``), and a leader whose lock
connection died (the lock with it) stops its loops and waits to lead again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from services.scheduler.backends import WorkerBackend
from services.scheduler.consumers import check_result, pull
from services.scheduler.cron import CronTicker
from services.scheduler.inputs import JobStarter
from services.scheduler.job_requests import JobRequests
from services.scheduler.jobs import JobDriver
from services.scheduler.pipelines import PipelineView
from services.scheduler.specs import SpecCache
from services.scheduler.workers import WorkerReconciler
from shared.api.events import subject_filter
from shared.api.pfs_client import PfsClient
from shared.api.pps_client import PpsClient
from shared.platform.backoff import Backoff, keep_running
from shared.platform.bus import Bus, results_stream_name
from shared.platform.config import Config
from shared.platform.db import Conn, Pool, acquire, check_alive
from shared.platform.errors import Unavailable
from shared.storage.objstore import ObjectStore

log = logging.getLogger("tusk.scheduler")

# "tusksche": the advisory lock the active scheduler holds.
SCHEDULER_LOCK_KEY = 0x7475_736B_7363_6865
# How often the leader checks that its lock's connection (and so the lock) is still there.
LOCK_CHECK_INTERVAL_S = 1.0
# Longest wait between retries of a failing loop, and between tries to lead again.
RETRY_MAX_S = 10.0

Loop = Callable[[], Awaitable[None]]


class Engine:
    def __init__(
        self,
        config: Config,
        pool: Pool,
        bus: Bus,
        pfs: PfsClient,
        pps: PpsClient,
        objects: ObjectStore,
        backend: WorkerBackend,
    ) -> None:
        self.config = config
        self.pool = pool
        self.bus = bus
        self.backend = backend
        self.leader = False
        specs = SpecCache()
        self.specs = specs
        self.view = PipelineView(pool, pps)
        self.jobs = JobStarter(pool, pfs, specs)
        self.driver = JobDriver(config, pool, bus, pfs, objects, specs, self.view)
        self.requests = JobRequests(pool, pfs, specs, self.view, on_job=self.wake)
        self.workers = WorkerReconciler(
            config,
            pool,
            bus,
            backend,
            specs,
            self.driver.queues,
            self.view,
            on_unrunnable=self.driver.set_unrunnable,
        )
        self.crons = CronTicker(pool, pfs, specs)

    def wake(self) -> None:
        self.driver.wake()

    async def run(self) -> None:
        """Lead whenever this replica can, until cancelled (the app owns this task).

        Only a lost PostgreSQL is survived here (``Unavailable``); anything else ends the
        task, and the app then stops the process so that its supervisor restarts it.
        """
        backoff = Backoff(maximum=RETRY_MAX_S)
        while True:
            try:
                await self._lead(backoff)
            except* Unavailable as lost:
                reason = "; ".join(str(exc) for exc in lost.exceptions)
                log.warning("the scheduler stopped leading: %s; it will try again", reason)
            await asyncio.sleep(backoff.next())

    async def _lead(self, backoff: Backoff) -> None:
        """Wait for the leader lock, then run the loops while the lock's connection lives."""
        async with acquire(self.pool) as lock_conn:
            await lock_conn.execute("SELECT pg_advisory_lock($1)", SCHEDULER_LOCK_KEY)
            self.leader = True
            backoff.reset()
            log.info("scheduler is the leader")
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._hold_lock(lock_conn))
                    for name, loop in self._loops():
                        retry = Backoff(maximum=RETRY_MAX_S)
                        group.create_task(keep_running(name, loop, log, retry), name=name)
            finally:
                # No explicit unlock: giving the connection back to the pool resets its
                # session (asyncpg runs pg_advisory_unlock_all), which frees the lock even
                # when this task is cancelled again mid-shutdown.
                self.leader = False

    def _loops(self) -> list[tuple[str, Loop]]:
        return [
            *self._consumers(),
            ("checking pipelines against PPS", self.view.run),
            ("driving jobs", self.driver.run),
            ("reconciling workers", self.workers.run),
            ("ticking crons", self.crons.run),
        ]

    def _consumers(self) -> list[tuple[str, Loop]]:
        """Which events feed which part: every JetStream consumer of the scheduler."""
        prefix, events = self.config.nats_prefix, self.config.stream_name

        async def commits() -> None:
            subject = subject_filter(prefix, "commit.finished")
            await pull(self.bus, events, subject, "scheduler-commits", self._on_inputs)

        async def branch_moves() -> None:
            subject = subject_filter(prefix, "branch.moved")
            await pull(self.bus, events, subject, "scheduler-branches", self._on_inputs)

        async def pipeline_events() -> None:
            subject = subject_filter(prefix, "pipeline.updated")
            await pull(
                self.bus,
                events,
                subject,
                "scheduler-pipelines",
                self._on_pipeline_changed,
                deliver_new=True,
            )

        async def results() -> None:
            stream = results_stream_name(self.config)
            subject = f"{prefix}.results.>"
            await pull(
                self.bus,
                stream,
                subject,
                "scheduler-results",
                self.driver.record_results,
                decode=check_result,
            )

        return [
            ("consuming commits", commits),
            ("consuming branch moves", branch_moves),
            ("consuming pipeline events", pipeline_events),
            ("consuming datum results", results),
        ]

    async def _on_inputs(self, batch: list[bytes]) -> None:
        if await self.jobs.on_events(batch):
            self.wake()

    async def _on_pipeline_changed(self, batch: list[bytes]) -> None:
        await self.requests.on_events(batch)
        self.workers.poke()
        self.wake()

    async def _hold_lock(self, conn: Conn) -> None:
        """Raise ``Unavailable`` once the lock's connection is gone: the lock went with it,
        and another replica may lead now, so these loops must stop."""
        while True:
            await asyncio.sleep(LOCK_CHECK_INTERVAL_S)
            await check_alive(conn)

    def status(self) -> dict[str, Any]:
        return {
            "leader": self.leader,
            "workers": self.backend.status(),
            "spec_cache": {"parses": self.specs.parses, "specs": len(self.specs)},
        }


__all__ = ["Engine"]
