"""The PPS core: pipeline specs (validated, versioned), and reads of jobs, datums and logs.

Creating a pipeline makes its output repo (named after the pipeline) with
branch provenance on its inputs, records spec version 1, and queues a first job
over what the inputs already hold. The scheduler runs jobs; PPS only records
what users ask for, in one transaction with the event that tells the scheduler.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from typing import Any

from services.pps import store
from services.pps.inputs import check_pinned_commits, set_input_triggers
from services.pps.secret_box import SecretBox, key_file_path
from services.pps.secrets import SecretService
from services.scheduler import store as job_store
from shared.api.events import PipelineUpdated, subject_filter
from shared.api.input_commits import job_inputs
from shared.api.pfs_client import PfsClient
from shared.api.pps_models import (
    JOB_CREATED,
    JOB_DONE,
    PIPELINE_ACTIVE,
    PIPELINE_PAUSED,
    PIPELINE_RUNNING,
    DatumInfo,
    InputCommit,
    JobInfo,
    LogLine,
    PipelineInfo,
)
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
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from shared.platform.outbox import emit
from shared.platform.waits import wait_for

log = logging.getLogger("tusk.pps")

# A pipeline that changes between asking PFS and locking its row is resolved again, this
# many times at most (only a storm of concurrent updates exhausts it).
RESOLVE_TRIES = 5
# How long ``stop job`` waits for the scheduler to end the job (it looks every second).
STOP_WAIT_S = 30.0


class PpsService:
    def __init__(self, config: Config, pool: Pool, pfs: PfsClient) -> None:
        self.config = config
        self.pool = pool
        self.pfs = pfs
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
            # PFS is asked before the transaction: no network call while a row is locked.
            inputs = await job_inputs(self.pfs, spec)
            async with self.pool.acquire() as conn, conn.transaction():
                await self.secrets.check_uses(conn, spec.transform.secrets, lock=True)
                if existing is None:
                    info = await store.insert_pipeline(conn, spec.name, spec.raw, PIPELINE_RUNNING)
                    trigger = "create:1"
                else:
                    await store.get_pipeline(conn, spec.name, lock=True)
                    info = await store.update_pipeline_spec(conn, spec.name, spec.raw)
                    trigger = f"update:{info.version}"
                if inputs is not None and info.state in PIPELINE_ACTIVE:
                    await store.create_job(
                        conn, spec.name, info.version, trigger, inputs, reprocess=reprocess
                    )
                await emit(
                    conn,
                    self.config,
                    PipelineUpdated(pipeline=spec.name, version=info.version, state=info.state),
                )
                return await store.get_pipeline(conn, spec.name)
        except BaseException:
            if created_repo:
                await self.pfs.delete_repo(spec.name, force=True)
            raise

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
            return await store.list_pipelines(conn)

    async def inspect_pipeline(self, name: str) -> PipelineInfo:
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
        for _ in range(RESOLVE_TRIES):
            seen = await self.inspect_pipeline(name)
            needs_job = running and seen.state == PIPELINE_PAUSED
            inputs = await self._next_inputs(seen) if needs_job else None
            async with self.pool.acquire() as conn, conn.transaction():
                info = await store.get_pipeline(conn, name, lock=True)
                if info.version != seen.version or info.state != seen.state:
                    continue  # changed while PFS was asked: resolve again
                await store.set_pipeline_state(conn, name, state)
                if (
                    needs_job
                    and inputs is not None
                    and not await self._inputs_already_processed(conn, name, inputs)
                ):
                    await store.create_job(
                        conn, name, info.version, f"start:{uuid.uuid4().hex}", inputs
                    )
                await emit(
                    conn,
                    self.config,
                    PipelineUpdated(pipeline=name, version=info.version, state=state),
                )
                return await store.get_pipeline(conn, name)
        raise Conflict(f"pipeline {name} kept changing; try again")

    async def _next_inputs(self, info: PipelineInfo) -> list[InputCommit] | None:
        """The input commits a new job of ``info``'s spec would read (asked of PFS)."""
        return await job_inputs(self.pfs, parse_pipeline_spec(info.spec))

    async def _inputs_already_processed(self, conn: Conn, name: str, inputs: list[Any]) -> bool:
        jobs = await store.list_jobs(conn, name, 1)
        return bool(jobs) and jobs[0].input_commits == inputs

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
        if not keep_repo:
            spec = parse_pipeline_spec(info.spec)
            crons = [leaf.repo for leaf in iter_inputs(spec.input) if isinstance(leaf, CronInput)]
            for repo in [name, *crons]:
                with contextlib.suppress(NotFound):
                    await self.pfs.delete_repo(repo, force=True)

    async def restart_datum(self, pipeline: str, job_id: str, datum_id: str) -> JobInfo | None:
        """Run a datum again: forget its result and queue a job over the latest inputs."""
        for _ in range(RESOLVE_TRIES):
            seen = await self.inspect_pipeline(pipeline)
            inputs = await self._next_inputs(seen)
            async with self.pool.acquire() as conn, conn.transaction():
                info = await store.get_pipeline(conn, pipeline, lock=True)
                if info.version != seen.version:
                    continue  # a new spec while PFS was asked: resolve again
                job = await self._job(conn, pipeline, job_id)
                datum = await store.get_job_datum(conn, job.id, datum_id)
                if inputs is None:
                    return None
                # The scheduler runs the datum again even though its hash is unchanged.
                return await store.create_job(
                    conn,
                    pipeline,
                    info.version,
                    f"restart:{uuid.uuid4().hex}",
                    inputs,
                    rerun=[datum.id],
                )
        raise Conflict(f"pipeline {pipeline} kept changing; try again")

    # Jobs, datums, logs

    async def _job(self, conn: Conn, pipeline: str, job_id: str) -> JobInfo:
        await store.get_pipeline(conn, pipeline)
        return await store.find_job(conn, pipeline, job_id)

    async def list_jobs(self, pipeline: str | None, limit: int) -> list[JobInfo]:
        async with self.pool.acquire() as conn:
            if pipeline is not None:
                await store.get_pipeline(conn, pipeline)
            return await store.list_jobs(conn, pipeline, limit)

    async def inspect_job(self, pipeline: str, job_id: str) -> JobInfo:
        async with self.pool.acquire() as conn:
            return await self._job(conn, pipeline, job_id)

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
        async with self.pool.acquire() as conn:
            asked = await job_store.request_stop(conn, job.id, "stopped by the user")
        if not asked:
            raise FailedPrecondition(f"job {pipeline}@{job.id} already ended {job.state}")
        return await self.wait_job(pipeline, job.id, STOP_WAIT_S, bus)

    async def delete_job(self, pipeline: str, job_id: str) -> None:
        """``tusk delete job``: a finished job and its datum records, by the jobs' owner."""
        job = await self.inspect_job(pipeline, job_id)
        async with self.pool.acquire() as conn:
            await job_store.delete_finished_job(conn, job.id)

    async def list_datums(self, pipeline: str, job_id: str) -> list[DatumInfo]:
        async with self.pool.acquire() as conn:
            job = await self._job(conn, pipeline, job_id)
            return await store.list_job_datums(conn, job.id)

    async def datums_page(
        self, pipeline: str, job_id: str, *, skipped: bool, after: str, limit: int
    ) -> list[DatumInfo]:
        """One page of a job's datums (with the skipped ones when asked), by id."""
        async with self.pool.acquire() as conn:
            job = await self._job(conn, pipeline, job_id)
            return await job_store.datums_page(
                conn, pipeline, job.id, skipped=skipped, after=after, limit=limit
            )

    async def inspect_datum(self, pipeline: str, job_id: str, datum_id: str) -> DatumInfo:
        async with self.pool.acquire() as conn:
            job = await self._job(conn, pipeline, job_id)
            return await store.get_job_datum(conn, job.id, datum_id)

    async def logs(
        self,
        pipeline: str,
        job_id: str | None,
        datum_id: str | None,
        after: int,
        limit: int,
    ) -> list[LogLine]:
        async with self.pool.acquire() as conn:
            await store.get_pipeline(conn, pipeline)
            full_job = (await self._job(conn, pipeline, job_id)).id if job_id else None
            return await store.read_logs(conn, pipeline, full_job, datum_id, after, limit)

    async def ready(self) -> bool:
        return await db_ready(self.pool)


async def _maybe_pipeline(conn: Conn, name: str) -> PipelineInfo | None:
    try:
        return await store.get_pipeline(conn, name)
    except NotFound:
        return None


__all__ = ["JOB_CREATED", "PpsService", "spec_to_json"]
