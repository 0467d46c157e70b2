"""Worker reconciliation: the backend runs workers for exactly the active pipelines, and
what goes wrong with them (ImagePullBackOff, CrashLoopBackOff, OOMKilled …) shows on the
pipeline (PIPELINE_CRASHING with the pod's reason: PPS, the pipelines' owner, is told) and
on its running job."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from services.scheduler import store
from services.scheduler.backends import WorkerBackend, WorkerSet
from services.scheduler.pipelines import PipelineView
from services.scheduler.specs import SpecCache
from services.scheduler.task_queues import TaskQueues
from shared.api.pps_models import PIPELINE_ACTIVE, PIPELINE_CRASHING, PipelineInfo
from shared.platform.bus import Bus
from shared.platform.config import Config
from shared.platform.db import Pool, acquire
from shared.platform.errors import TuskError

log = logging.getLogger("tusk.scheduler")

RECONCILE_INTERVAL_S = 2.0


class WorkerReconciler:
    """Brings the backend's workers in line with the pipelines, every few seconds and
    whenever a pipeline changes (``poke``)."""

    def __init__(
        self,
        config: Config,
        pool: Pool,
        bus: Bus,
        backend: WorkerBackend,
        specs: SpecCache,
        queues: TaskQueues,
        view: PipelineView,
        on_unrunnable: Callable[[dict[str, str]], None] | None = None,
    ) -> None:
        self.config = config
        self.view = view
        self.queues = queues
        # Told which pipelines no worker can run (``fails_jobs`` problems), and why.
        self.on_unrunnable = on_unrunnable
        self.pool = pool
        self.bus = bus
        self.backend = backend
        self.specs = specs
        self._poked = asyncio.Event()
        self._known_pipelines: set[str] = set()

    def poke(self) -> None:
        self._poked.set()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poked.wait(), RECONCILE_INTERVAL_S)
            self._poked.clear()
            try:
                await self.reconcile()
            except TuskError as exc:
                log.warning("reconciling workers: %s", exc.message)

    async def reconcile(self) -> None:
        async with acquire(self.pool) as conn:
            pipelines = await store.list_pipelines(conn)
        desired = {
            p.name: WorkerSet(p.name, p.version, self.specs.parse(p.name, p.version, p.spec))
            for p in pipelines
            if p.state in PIPELINE_ACTIVE
        }
        await self.backend.reconcile(desired)
        await self._report_problems(pipelines)
        names = {p.name for p in pipelines}
        for gone in self._known_pipelines - names:
            await self.queues.forget_if_gone(gone)
        self._known_pipelines = names

    async def _report_problems(self, pipelines: list[PipelineInfo]) -> None:
        problems = {
            entry["pipeline"]: entry["problems"][0]
            for entry in self.backend.status()
            if entry.get("problems")
        }
        if self.on_unrunnable is not None:
            self.on_unrunnable(
                {name: _problem_reason(p) for name, p in problems.items() if p.get("fails_jobs")}
            )
        for pipeline in pipelines:
            problem = problems.get(pipeline.name)
            if problem is not None and pipeline.state in PIPELINE_ACTIVE:
                reason = _problem_reason(problem)
                if pipeline.state != PIPELINE_CRASHING or pipeline.reason != reason:
                    # The pipeline's state is PPS's: it is told, the job's reason is ours.
                    await self.view.report_workers(pipeline.name, reason)
                    async with acquire(self.pool) as conn:
                        await store.set_running_jobs_reason(conn, pipeline.name, reason)
            elif problem is None and pipeline.state == PIPELINE_CRASHING:
                await self.view.report_workers(pipeline.name, None)


def _problem_reason(problem: dict[str, Any]) -> str:
    if problem.get("line"):  # a backend's own whole line (local: the image's pull)
        return str(problem["line"])
    return "worker {pod}: {reason}: {message}".format(
        pod=problem.get("pod") or "-",
        reason=problem.get("reason"),
        message=problem.get("message") or "",
    ).strip()
