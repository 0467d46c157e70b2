"""Jobs PPS asks for: when a pipeline is created, updated or started, and when a user
restarts a datum.

PPS owns pipelines, the scheduler owns jobs. PPS records its change, then tells the
scheduler directly (``PUT /v1/pipelines/{name}`` with its record and the job the change
asks for), so the user's next ``list job`` sees the job. The same request rides on the
change's ``pipeline.updated`` event (written in PPS's transaction, so it is never lost):
if PPS stopped before its direct call, the event makes the job. Both name the job by its
trigger, and one trigger makes one job, so the two never make two.

A job is made only for the spec version the request names, and only while the pipeline
is active; the pipeline's row in the scheduler's view is locked while it is recorded, as
for jobs made by input commits (``services.scheduler.inputs``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from services.scheduler import store
from services.scheduler.input_commits import job_inputs
from services.scheduler.pipelines import PipelineView
from services.scheduler.specs import SpecCache
from shared.api.events import Event, PipelineUpdated
from shared.api.pfs_client import PfsClient
from shared.api.pps_models import PIPELINE_ACTIVE, JobInfo, JobRequest, PipelineInfo
from shared.platform.db import Pool, acquire
from shared.platform.errors import NotFound

log = logging.getLogger("tusk.scheduler")


class JobRequests:
    def __init__(
        self,
        pool: Pool,
        pfs: PfsClient,
        specs: SpecCache,
        view: PipelineView,
        on_job: Callable[[], None],
    ) -> None:
        self.pool = pool
        self.pfs = pfs
        self.specs = specs
        self.view = view
        self.on_job = on_job

    async def pipeline_changed(self, info: PipelineInfo, job: JobRequest | None) -> JobInfo | None:
        """PPS's direct word: record the pipeline as it is now, and make ``job``."""
        await self.view.save(info)
        return await self.make(info.name, info.version, job) if job is not None else None

    async def on_events(self, batch: list[bytes]) -> None:
        """``pipeline.updated`` events: ask PPS about each pipeline, make any job asked for."""
        for data in batch:
            payload = Event.from_bytes(data).payload
            if not isinstance(payload, PipelineUpdated):
                continue
            info = await self.view.refresh(payload.pipeline)
            if info is not None and payload.job is not None and not payload.deleted:
                await self.make(payload.pipeline, payload.version, payload.job)

    async def make(
        self,
        pipeline: str,
        version: int,
        request: JobRequest,
        *,
        rerun: tuple[str, ...] = (),
        paused_too: bool = False,
    ) -> JobInfo | None:
        """The job ``request`` names (made now or before), or None when none is due: another
        version is current, the pipeline is gone or (unless ``paused_too``) paused, or an
        input has no data yet."""
        async with acquire(self.pool) as conn:
            try:
                info = await store.get_pipeline(conn, pipeline)
            except NotFound:
                return None
            made = await store.job_by_trigger(conn, pipeline, request.trigger)
        if made is not None:
            return made
        if not _due(info, version, paused_too):
            return None
        spec = self.specs.parse(info.name, info.version, info.spec)
        # PFS is asked before the transaction: no network call while a row is locked.
        inputs = await job_inputs(self.pfs, spec)
        if inputs is None:
            return None
        async with acquire(self.pool) as conn, conn.transaction():
            try:
                info = await store.get_pipeline(conn, pipeline, lock=True)
            except NotFound:
                return None
            if not _due(info, version, paused_too):
                return None
            if request.unless_read:
                newest = await store.list_jobs(conn, pipeline, 1)
                if newest and newest[0].input_commits == inputs:
                    return None
            job = await store.create_job(
                conn,
                pipeline,
                version,
                request.trigger,
                inputs,
                reprocess=request.reprocess,
                rerun=rerun,
            )
            if job is None:
                return await store.job_by_trigger(conn, pipeline, request.trigger)
        log.info("job %s of %s (%s)", job.id, pipeline, request.trigger)
        self.on_job()
        return job

    async def restart_datum(self, info: PipelineInfo, job_id: str, datum_id: str) -> JobInfo | None:
        """A new job over the latest inputs that runs the datum again even though its hash
        is unchanged (None when an input has no data)."""
        await self.view.save(info)
        async with acquire(self.pool) as conn:
            job = await store.find_job(conn, info.name, job_id)
            datum = await store.get_job_datum(conn, job.id, datum_id)
        request = JobRequest(trigger=f"restart:{uuid.uuid4().hex}")
        # A paused pipeline gets it too; it runs once the pipeline is started.
        return await self.make(info.name, info.version, request, rerun=(datum.id,), paused_too=True)


def _due(info: PipelineInfo, version: int, paused_too: bool) -> bool:
    return info.version == version and (paused_too or info.state in PIPELINE_ACTIVE)
