"""The PPS core: pipeline specs (validated, versioned); jobs, datums and logs asked of
the scheduler.

Creating a pipeline makes its output repo (named after the pipeline) with branch
provenance on its inputs, records spec version 1, and asks for a first job over what the
inputs already hold. PPS owns pipelines; the scheduler owns jobs. A change is recorded in
one transaction with its ``pipeline.updated`` event (which carries the job it asks for),
then the scheduler is told directly, so the job is there when the call returns; if the
scheduler cannot be reached, the event tells it later.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import uuid
from typing import Any

from services.pps import store
from services.pps.inputs import check_pinned_commits, set_input_triggers
from services.pps.secret_box import SecretBox, key_file_path
from services.pps.secrets import SecretService
from shared.api.events import PipelineUpdated, subject_filter
from shared.api.pfs_client import PfsClient
from shared.api.pps_models import (
    JOB_CREATED,
    JOB_DONE,
    PIPELINE_ACTIVE,
    PIPELINE_CRASHING,
    PIPELINE_PAUSED,
    PIPELINE_RUNNING,
    DatumInfo,
    JobInfo,
    JobRequest,
    LogLine,
    PipelineInfo,
)
from shared.api.scheduler_client import SchedulerClient
from shared.pipeline.spec import (
    CronInput,
    PipelineSpec,
    input_branches,
    iter_inputs,
    parse_pipeline_spec,
    spec_to_json,
)
from shared.platform.bus import Bus
from shared.platform.config import Config
from shared.platform.db import Conn, Pool, db_ready
from shared.platform.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from shared.platform.outbox import emit
from shared.platform.waits import wait_for

log = logging.getLogger("tusk.pps")

# How long ``stop job`` waits for the scheduler to end the job (it looks every second).
STOP_WAIT_S = 30.0


class PpsService:
    def __init__(
        self, config: Config, pool: Pool, pfs: PfsClient, scheduler: SchedulerClient
    ) -> None:
        self.config = config
        self.pool = pool
        self.pfs = pfs
        self.scheduler = scheduler
        self.secrets = SecretService(pool, SecretBox(key_file_path(config)))

    # Pipelines

    async def create_pipeline(
        self, raw: dict[str, Any], *, update: bool, reprocess: bool
    ) -> PipelineInfo:
        """Create (or with ``update`` replace) a pipeline; a bad spec changes nothing."""
        spec = parse_pipeline_spec(raw)
        async with self.pool.acquire() as conn:
            existing = await _maybe_pipeline(conn, spec.name)
            await self.secrets.check_uses(conn, spec.transform.secrets, lock=False)
        if existing is not None and not update:
            raise AlreadyExists(
                f"pipeline {spec.name} already exists; use tusk update pipeline to change it"
            )
        if existing is None and update:
            raise NotFound(f"pipeline {spec.name} not found; use tusk create pipeline")
        await self._check_inputs(spec)
        await check_pinned_commits(self.pfs, spec)
        created_repo = await self._ensure_output_repo(spec, new=existing is None)
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await self.secrets.check_uses(conn, spec.transform.secrets, lock=True)
                if existing is None:
                    info = await store.insert_pipeline(conn, spec.name, spec.raw, PIPELINE_RUNNING)
                    trigger = "create:1"
                else:
                    await store.get_pipeline(conn, spec.name, lock=True)
                    info = await store.update_pipeline_spec(conn, spec.name, spec.raw)
                    trigger = f"update:{info.version}"
                # A new pipeline's first job is not needed when a commit event already made
                # one over the same inputs (the two race); an update's always runs.
                job = (
                    JobRequest(trigger, reprocess=reprocess, unless_read=existing is None)
                    if info.state in PIPELINE_ACTIVE
                    else None
                )
                await emit(
                    conn,
                    self.config,
                    PipelineUpdated(
                        pipeline=spec.name, version=info.version, state=info.state, job=job
                    ),
                )
        except BaseException:
            if created_repo:
                await self.pfs.delete_repo(spec.name, force=True)
            raise
        await self._tell_scheduler(info, job)
        return await self._with_last_job(info)

    async def _tell_scheduler(self, info: PipelineInfo, job: JobRequest | None) -> None:
        """Tell the scheduler (the jobs' owner) about a change PPS committed, so it knows
        at once; if it cannot be reached, the change's event tells it later."""
        try:
            await self.scheduler.pipeline_changed(info, job)
        except Unavailable as exc:
            log.warning(
                "pipeline %s: the scheduler learns of this change from its event: %s",
                info.name,
                exc.message,
            )

    async def _with_last_job(self, info: PipelineInfo) -> PipelineInfo:
        return (await self._with_last_jobs([info], info.name))[0]

    async def _with_last_jobs(
        self, infos: list[PipelineInfo], name: str | None = None
    ) -> list[PipelineInfo]:
        """Pipelines with their newest job's state, asked of the scheduler; without it
        when the scheduler cannot answer (a listing of pipelines still works)."""
        if not infos:
            return infos
        try:
            states = await self.scheduler.last_job_states(name)
        except Unavailable as exc:
            log.warning("pipelines listed without their jobs' states: %s", exc.message)
            return infos
        return [dataclasses.replace(i, last_job_state=states.get(i.name)) for i in infos]

    async def _check_inputs(self, spec: PipelineSpec) -> None:
        cron_repos = {leaf.repo for leaf in iter_inputs(spec.input) if isinstance(leaf, CronInput)}
        for repo, _branch in input_branches(spec):
            if repo in cron_repos:
                continue  # made by the pipeline itself (_ensure_output_repo)
            if repo == spec.name:
                raise InvalidArgument(
                    f"pipeline spec: input repo {repo} is the pipeline's own output repo (a cycle)"
                )
            try:
                await self.pfs.inspect_repo(repo)
            except NotFound:
                raise InvalidArgument(
                    f"pipeline spec: input repo {repo} not found (tusk create repo {repo})"
                ) from None

    async def _ensure_output_repo(self, spec: PipelineSpec, *, new: bool) -> bool:
        """Make the output repo and branch with provenance on the inputs; True if made now."""
        provenance = [f"{repo}@{branch}" for repo, branch in input_branches(spec)]
        made = False
        if new:
            try:
                await self.pfs.create_repo(spec.name, f"output of pipeline {spec.name}")
                made = True
            except AlreadyExists:
                raise AlreadyExists(
                    f"a repo named {spec.name} already exists; a pipeline's output repo takes "
                    "its name, so pick another pipeline name or delete that repo"
                ) from None
        try:
            for leaf in iter_inputs(spec.input):
                if isinstance(leaf, CronInput):
                    with contextlib.suppress(AlreadyExists):
                        await self.pfs.create_repo(leaf.repo, f"cron ticks of pipeline {spec.name}")
            for repo, branch in input_branches(spec):
                branches = {b.name for b in await self.pfs.list_branches(repo)}
                if branch not in branches:
                    await self.pfs.create_branch(repo, branch)
            await set_input_triggers(self.pfs, spec)
            await self.pfs.create_branch(spec.name, spec.output_branch, provenance=provenance)
        except InvalidArgument as exc:
            if made:
                await self.pfs.delete_repo(spec.name, force=True)
            raise InvalidArgument(f"pipeline spec: input: {exc.message}") from None
        except BaseException:
            if made:
                await self.pfs.delete_repo(spec.name, force=True)
            raise
        return made

    async def list_pipelines(self) -> list[PipelineInfo]:
        async with self.pool.acquire() as conn:
            infos = await store.list_pipelines(conn)
        return await self._with_last_jobs(infos)

    async def inspect_pipeline(self, name: str) -> PipelineInfo:
        return await self._with_last_job(await self._pipeline(name))

    async def _pipeline(self, name: str) -> PipelineInfo:
        """PPS's own record (NotFound with a hint if there is none)."""
        async with self.pool.acquire() as conn:
            return await store.get_pipeline(conn, name)

    async def pipeline_history(self, name: str) -> list[dict[str, Any]]:
        async with self.pool.acquire() as conn:
            await store.get_pipeline(conn, name)
            return [
                {"version": v, "spec": spec, "created": created}
                for v, spec, created in await store.pipeline_versions(conn, name)
            ]

    async def set_running(self, name: str, running: bool) -> PipelineInfo:
        """Stop (pause) or start a pipeline; starting runs a job if inputs moved meanwhile."""
        state = PIPELINE_RUNNING if running else PIPELINE_PAUSED
        async with self.pool.acquire() as conn, conn.transaction():
            info = await store.get_pipeline(conn, name, lock=True)
            job = (
                JobRequest(f"start:{uuid.uuid4().hex}", unless_read=True)
                if running and info.state == PIPELINE_PAUSED
                else None
            )
            await store.set_pipeline_state(conn, name, state)
            await emit(
                conn,
                self.config,
                PipelineUpdated(pipeline=name, version=info.version, state=state, job=job),
            )
            info = await store.get_pipeline(conn, name)
        await self._tell_scheduler(info, job)
        return await self._with_last_job(info)

    async def report_workers(self, name: str, problem: str | None) -> PipelineInfo:
        """What the scheduler sees of a pipeline's workers: an active pipeline turns
        PIPELINE_CRASHING with ``problem`` as its reason, or back to PIPELINE_RUNNING."""
        state, reason = (PIPELINE_CRASHING, problem) if problem else (PIPELINE_RUNNING, None)
        async with self.pool.acquire() as conn, conn.transaction():
            info = await store.get_pipeline(conn, name, lock=True)
            if info.state not in PIPELINE_ACTIVE or (info.state, info.reason) == (state, reason):
                return info
            await store.set_pipeline_state(conn, name, state, reason)
            await emit(
                conn,
                self.config,
                PipelineUpdated(pipeline=name, version=info.version, state=state),
            )
            return await store.get_pipeline(conn, name)

    async def delete_pipeline(self, name: str, *, keep_repo: bool) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            info = await store.get_pipeline(conn, name, lock=True)
            await store.delete_pipeline(conn, name)
            await emit(
                conn,
                self.config,
                PipelineUpdated(
                    pipeline=name, version=info.version, state=info.state, deleted=True
                ),
            )
        try:
            # Before this returns: a pipeline made again under the name starts afresh.
            await self.scheduler.forget_pipeline(name)
        except Unavailable as exc:
            log.warning("pipeline %s: the scheduler forgets its jobs later: %s", name, exc.message)
        if not keep_repo:
            spec = parse_pipeline_spec(info.spec)
            crons = [leaf.repo for leaf in iter_inputs(spec.input) if isinstance(leaf, CronInput)]
            for repo in [name, *crons]:
                with contextlib.suppress(NotFound):
                    await self.pfs.delete_repo(repo, force=True)

    async def restart_datum(self, pipeline: str, job_id: str, datum_id: str) -> JobInfo | None:
        """Run a datum again: the scheduler queues a job over the latest inputs that runs it
        even though its hash is unchanged."""
        return await self.scheduler.restart_datum(await self._pipeline(pipeline), job_id, datum_id)

    # Jobs, datums, logs: the scheduler's, asked of it once the pipeline is known here.

    async def list_jobs(self, pipeline: str | None, limit: int) -> list[JobInfo]:
        if pipeline is not None:
            await self._pipeline(pipeline)
        return await self.scheduler.list_jobs(pipeline, limit=limit)

    async def inspect_job(self, pipeline: str, job_id: str) -> JobInfo:
        await self._pipeline(pipeline)
        return await self.scheduler.inspect_job(pipeline, job_id)

    async def wait_job(
        self, pipeline: str, job_id: str, timeout: float | None, bus: Bus
    ) -> JobInfo:
        """The job once done; woken by the pipeline's job events, not a timer."""
        last = await self.inspect_job(pipeline, job_id)

        async def done() -> JobInfo | None:
            nonlocal last
            last = await self.inspect_job(pipeline, job_id)
            return last if last.state in JOB_DONE else None

        subject = subject_filter(self.config.nats_prefix, "job.state", pipeline)
        job = await wait_for(bus, subject, done, timeout)
        if job is None:
            raise FailedPrecondition(f"job {pipeline}@{last.id} is still {last.state}")
        return job

    async def stop_job(self, pipeline: str, job_id: str, bus: Bus) -> JobInfo:
        """``tusk stop job``: the scheduler (the jobs' owner) ends it JOB_KILLED; wait for that."""
        job = await self.inspect_job(pipeline, job_id)
        if not await self.scheduler.request_stop(pipeline, job.id, "stopped by the user"):
            raise FailedPrecondition(f"job {pipeline}@{job.id} already ended {job.state}")
        return await self.wait_job(pipeline, job.id, STOP_WAIT_S, bus)

    async def delete_job(self, pipeline: str, job_id: str) -> None:
        """``tusk delete job``: a finished job and its datum records, by the jobs' owner."""
        job = await self.inspect_job(pipeline, job_id)
        await self.scheduler.delete_job(pipeline, job.id)

    async def list_datums(self, pipeline: str, job_id: str) -> list[DatumInfo]:
        await self._pipeline(pipeline)
        return await self.scheduler.list_datums(pipeline, job_id)

    async def datums_page(
        self,
        pipeline: str,
        job_id: str,
        *,
        skipped: bool,
        after: str,
        limit: int,
        only_state: str | None = None,
    ) -> tuple[list[DatumInfo], str | None]:
        """One page of a job's datums (with the skipped ones when asked; ``only_state``:
        those in that state), by id, and the cursor of the next page."""
        await self._pipeline(pipeline)
        return await self.scheduler.datums_page(
            pipeline, job_id, all_=skipped, after=after, limit=limit, only_state=only_state
        )

    async def inspect_datum(self, pipeline: str, job_id: str, datum_id: str) -> DatumInfo:
        await self._pipeline(pipeline)
        return await self.scheduler.inspect_datum(pipeline, job_id, datum_id)

    async def logs(
        self,
        pipeline: str,
        job_id: str | None,
        datum_id: str | None,
        after: int,
        limit: int,
    ) -> list[LogLine]:
        await self._pipeline(pipeline)
        return await self.scheduler.logs(
            pipeline, job=job_id, datum=datum_id, after=after, limit=limit
        )

    async def ready(self) -> bool:
        return await db_ready(self.pool)


async def _maybe_pipeline(conn: Conn, name: str) -> PipelineInfo | None:
    try:
        return await store.get_pipeline(conn, name)
    except NotFound:
        return None


__all__ = ["JOB_CREATED", "PpsService", "spec_to_json"]
