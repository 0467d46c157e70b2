"""The job state machine: JOB_CREATED → JOB_STARTING (plan, record datums, publish tasks)
→ JOB_RUNNING (results arrive) → JOB_FINISHING (assemble the output commit) → JOB_SUCCESS,
or JOB_FAILURE / JOB_KILLED.

Every step can run again after a crash: datum rows are inserted once, tasks carry a
``Nats-Msg-Id`` so a re-publish is dropped, results are recorded only while their datum
is STARTING. Jobs of one pipeline run one after another: each compares against the last
successful one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import UTC, datetime
from typing import Any

from services.scheduler import store
from services.scheduler.assembly import DatumOutcome, assemble, check_owners
from services.scheduler.commit_sets import job_commit_set, open_output_commit
from services.scheduler.consumers import publish_task
from services.scheduler.pipelines import PipelineView
from services.scheduler.planner import (
    Baseline,
    JobPlan,
    can_plan_incrementally,
    datum_summary,
    plan_full,
    plan_incremental,
)
from services.scheduler.specs import SpecCache
from services.scheduler.task_queues import TaskQueues
from services.scheduler.tasks import (
    DatumResult,
    DatumTask,
    DatumTaskFile,
    DatumTaskInput,
    batch_size,
    batch_tasks,
    task_envelope,
    task_ref_envelope,
)
from shared.api.events import JobStateChanged
from shared.api.pfs_client import PfsClient
from shared.api.pfs_models import CommitRef
from shared.api.pps_models import (
    DATUM_FAILED,
    DATUM_RECOVERED,
    DATUM_SUCCESS,
    JOB_CREATED,
    JOB_FAILURE,
    JOB_FINISHING,
    JOB_KILLED,
    JOB_RUNNING,
    JOB_STARTING,
    JOB_SUCCESS,
    JobInfo,
)
from shared.pipeline.datums import Datum
from shared.pipeline.spec import PipelineSpec, pfs_inputs
from shared.platform.bus import Bus, tasks_subject
from shared.platform.config import Config
from shared.platform.db import Conn, Pool, acquire
from shared.platform.errors import FailedPrecondition, NotFound, TuskError
from shared.platform.outbox import emit
from shared.storage.file_index import FileIndex
from shared.storage.objstore import ObjectStore

log = logging.getLogger("tusk.scheduler")

# Tasks bigger than this travel through the object store (NATS caps a message at 1 MiB).
MAX_INLINE_TASK = 768 * 1024
MAX_LOG_LINES = 10_000
DRIVE_INTERVAL_S = 1.0
PUBLISH_BATCH = 256
# Stands in for the current hash of a datum the user restarted.
RERUN_HASH = "rerun"


class JobDriver:
    """Moves every pipeline's oldest unfinished job as far as it can go, whenever woken
    (a new job, a datum result) and at least every second (timeouts)."""

    def __init__(
        self,
        config: Config,
        pool: Pool,
        bus: Bus,
        pfs: PfsClient,
        objects: ObjectStore,
        specs: SpecCache,
        view: PipelineView,
    ) -> None:
        self.config = config
        self.view = view
        self.pool = pool
        self.bus = bus
        self.pfs = pfs
        self.objects = objects
        self.index = FileIndex(objects)
        self.specs = specs
        self.queues = TaskQueues(config, pool, bus)
        self._wake = asyncio.Event()
        # Pipelines no worker can run (an image that cannot be pulled) → the reason; their
        # jobs fail when driven, here, so never while this loop starts one.
        self._unrunnable: dict[str, str] = {}

    def wake(self) -> None:
        self._wake.set()

    def set_unrunnable(self, reasons: dict[str, str]) -> None:
        """Which pipelines' jobs must fail now, and why (from the worker reconciler)."""
        if reasons != self._unrunnable:
            self._unrunnable = dict(reasons)
            if reasons:
                self.wake()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), DRIVE_INTERVAL_S)
            self._wake.clear()
            async with acquire(self.pool) as conn:
                stops = await store.jobs_to_stop(conn)
            for job, reason in stops:
                try:
                    await self._fail(job, await self._spec_of(job), reason, state=JOB_KILLED)
                except TuskError as exc:
                    log.warning("stopping job %s of %s: %s; will retry", job.id, job.pipeline, exc)
            async with acquire(self.pool) as conn:
                jobs = await store.jobs_to_drive(conn)
            for job in jobs:
                try:
                    await self.progress(job)
                except TuskError as exc:
                    log.warning("job %s of %s: %s; will retry", job.id, job.pipeline, exc.message)
                except Exception:
                    log.exception(
                        "job %s of %s: unexpected error; will retry", job.id, job.pipeline
                    )

    async def record_results(self, batch: list[bytes]) -> None:
        """Record a batch of datum results in one transaction (a duplicate changes nothing)."""
        bodies = [json.loads(data) for data in batch]
        results = [DatumResult.from_json(body["result"]) for body in bodies]
        rows = [
            store.ResultRow(
                body["job_id"],
                body["datum_id"],
                result.state,
                result.output_root,
                result.output_files,
                result.output_bytes,
                int(body.get("attempts", 1)),
                result.error,
                result.seconds,
            )
            for body, result in zip(bodies, results, strict=True)
        ]
        # Two statements for the whole batch, whatever its size: a round trip per result
        # was most of the scheduler's work in a job of many tiny datums.
        async with acquire(self.pool) as conn, conn.transaction():
            applied = await store.record_datum_results(conn, rows)
            logged = set(applied)
            for body, result in zip(bodies, results, strict=True):
                key = (body["job_id"], body["datum_id"])
                if result.logs and key in logged:
                    logged.discard(key)
                    lines = result.logs.splitlines()[:MAX_LOG_LINES]
                    await store.insert_logs(conn, body["pipeline"], *key, lines)
        if applied:
            self.wake()

    async def _spec_of(self, job: JobInfo) -> PipelineSpec:
        raw = await self.view.spec_version(job.pipeline, job.pipeline_version)
        if raw is None:
            raise NotFound(f"spec version {job.pipeline_version} of {job.pipeline} is gone")
        return self.specs.parse(job.pipeline, job.pipeline_version, raw)

    async def progress(self, job: JobInfo) -> None:
        """Move one job as far as it can go now."""
        unrunnable = self._unrunnable.get(job.pipeline)
        if unrunnable is not None and job.state in (JOB_CREATED, JOB_STARTING, JOB_RUNNING):
            await self._fail(job, await self._spec_of(job), unrunnable)
        elif job.state in (JOB_CREATED, JOB_STARTING):
            await self._start(job)
        elif job.state == JOB_RUNNING:
            async with acquire(self.pool) as conn:
                remaining = await store.job_remaining(conn, job.id)
                published = await store.job_tasks_published(conn, job.id)
            if remaining <= 0:
                await self._finish(job)
            elif not published:
                await self._publish_again(job)
            else:
                await self._kill_if_overdue(job)
        elif job.state == JOB_FINISHING:
            await self._finish(job)

    async def _set_state(self, conn: Conn, job: JobInfo, state: str, **values: Any) -> None:
        reason = values.get("reason")
        await store.update_job(conn, job.id, state=state, **values)
        changed = JobStateChanged(
            pipeline=job.pipeline,
            job=job.id,
            state=state,
            reason=reason,
            output_commit=values.get("output_commit", job.output_commit),
            commit_set=values.get("output_commit", job.output_commit),
        )
        await emit(conn, self.config, changed)

    async def _start(self, job: JobInfo) -> None:
        spec = await self._spec_of(job)
        async with acquire(self.pool) as conn, conn.transaction():
            await self._set_state(conn, job, JOB_STARTING)
        output_commit = job.output_commit or await self._open_output_commit(spec, job)
        if job.output_commit is None:
            async with acquire(self.pool) as conn:
                await store.update_job(conn, job.id, output_commit=output_commit)
        plan = await self._plan(spec, job)
        async with acquire(self.pool) as conn, conn.transaction():
            await store.insert_job_datums(
                conn,
                job.id,
                [store.PlannedDatum(d.id, digest, datum_summary(d)) for d, digest in plan.to_run],
            )
            pending = await store.starting_datum_ids(conn, job.id)
            await self._set_state(
                conn,
                job,
                JOB_RUNNING,
                output_commit=output_commit,
                data_total=plan.total,
                data_skipped=plan.skipped,
                remaining=len(pending),
                removed_datums=plan.removed,
            )
        log.info(
            "job %s of %s: %d datums, %d to run, %d skipped, %d removed (%s plan)",
            job.id, spec.name, plan.total, len(plan.to_run), plan.skipped, len(plan.removed),
            "incremental" if plan.incremental else "full",
        )  # fmt: skip
        await self._publish(spec, job.id, output_commit, plan, pending)

    async def _publish_again(self, job: JobInfo) -> None:
        """A running job whose tasks may not all have gone out (its scheduler died or lost
        the lead while publishing): plan it again and publish its pending datums' tasks.
        Those already queued are dropped by JetStream's duplicate window, or run twice
        beyond it and counted once (a result counts only while its datum is STARTING)."""
        assert job.output_commit is not None  # set before the job became JOB_RUNNING
        spec = await self._spec_of(job)
        plan = await self._plan(spec, job)
        async with acquire(self.pool) as conn:
            pending = await store.starting_datum_ids(conn, job.id)
        log.info(
            "job %s of %s: publishing %d pending task(s) again", job.id, spec.name, len(pending)
        )
        await self._publish(spec, job.id, job.output_commit, plan, pending)

    async def _publish(
        self, spec: PipelineSpec, job_id: str, output_commit: str, plan: JobPlan, pending: set[str]
    ) -> None:
        """Publish the tasks of the plan's ``pending`` datums, then record that they are out."""
        to_publish = [datum for datum, _digest in plan.to_run if datum.id in pending]
        # Tiny datums of a large job share task messages (tasks.batch_size): a message's
        # round trips (publish, fetch, ack) are paid once for up to MAX_BATCH datums.
        per_message = batch_size(len(to_publish), spec.parallelism * self.config.worker.concurrency)
        # As many tasks in flight as before messages held several (their bytes, not their
        # count, is what a loaded NATS must take within a publish's timeout).
        window = PUBLISH_BATCH
        # Publishes overlap (each still waits for JetStream's ack), so workers get tasks fast;
        # never beside a purge of the queue of a deleted pipeline of the same name.
        async with self.queues.publishing(spec.name):
            for start in range(0, len(to_publish), window):
                tasks = [
                    datum_task(spec, job_id, output_commit, datum)
                    for datum in to_publish[start : start + window]
                ]
                await asyncio.gather(
                    *(self._publish_tasks(spec, group) for group in _grouped(tasks, per_message))
                )
        async with acquire(self.pool) as conn:
            await store.mark_tasks_published(conn, job_id)
        if not pending:
            self.wake()

    async def _open_output_commit(self, spec: PipelineSpec, job: JobInfo) -> str:
        provenance = [CommitRef(c.repo, c.branch, c.id) for c in job.input_commits]
        set_id = job_commit_set(job.trigger)
        try:
            return await open_output_commit(
                self.pfs, spec.name, spec.output_branch, job.id, provenance, set_id
            )
        except FailedPrecondition:
            # A commit left open by a job that died with its scheduler: close it as failed.
            head = await self.pfs.inspect_commit(spec.name, spec.output_branch)
            await self.pfs.finish_commit(spec.name, head.id, error="abandoned by a stopped job")
            return await open_output_commit(
                self.pfs, spec.name, spec.output_branch, job.id, provenance, set_id
            )

    async def _plan(self, spec: PipelineSpec, job: JobInfo) -> JobPlan:
        roots = {
            c.name: (await self.pfs.inspect_commit(c.repo, c.id)).index_root
            for c in job.input_commits
        }
        async with acquire(self.pool) as conn:
            reprocess = await store.job_reprocess(conn, job.id)
            last = await store.last_job_with_state(conn, job.pipeline, JOB_SUCCESS)
            current_count = await store.current_datum_count(conn, last.id) if last else 0
            rerun = await store.job_reruns(conn, job.id)
        baseline = None
        if last is not None:
            base_roots = {
                c.name: (await self.pfs.inspect_commit(c.repo, c.id)).index_root
                for c in last.input_commits
            }
            baseline = Baseline(last.pipeline_version, base_roots, {}, current_count)
        # A restarted datum is not among the changed paths: compare every datum instead.
        if (
            baseline is not None
            and not rerun
            and can_plan_incrementally(spec, job.pipeline_version, baseline, reprocess)
        ):

            async def current_of(ids: list[str]) -> dict[str, tuple[str, str | None]]:
                async with acquire(self.pool) as conn:
                    return await store.current_datums(conn, job.pipeline, ids)

            return await plan_incremental(
                self.index, spec, job.input_commits, roots, baseline, current_of
            )
        async with acquire(self.pool) as conn:
            current = await store.current_datums(conn, job.pipeline)
        for datum_id in rerun:
            # No hash equals this one, so the datum runs; its old output is still replaced.
            if datum_id in current:
                current[datum_id] = (RERUN_HASH, current[datum_id][1])
        return await plan_full(
            self.index, spec, job.input_commits, roots, current, reprocess=reprocess
        )

    async def _publish_tasks(self, spec: PipelineSpec, group: list[_Grouped]) -> None:
        """One task message: a datum alone (``job:datum`` as its id), or several (``job+first
        datum+count``; no ``:``, so a worker never takes it for one datum's id)."""
        subject = tasks_subject(self.config, spec.name)
        first = group[0][0]
        if len(group) > 1:
            # tasks.batch_envelope, from the JSON _grouped already made to measure each task.
            tasks = ",".join(text or json.dumps(task.to_json()) for task, text in group)
            payload = f'{{"tasks": [{tasks}], "datum_tries": {spec.datum_tries}}}'.encode()
            msg_id = f"{first.job_id}+{first.datum_id}+{len(group)}"
            await publish_task(self.bus, subject, payload, msg_id)
            return
        payload = json.dumps(task_envelope(first, spec.datum_tries)).encode()
        if len(payload) > MAX_INLINE_TASK:
            key = f"tasks/{first.job_id}/{first.datum_id}.json"
            await self.objects.put(key, payload)
            payload = json.dumps(task_ref_envelope(first.ids, key)).encode()
        await publish_task(self.bus, subject, payload, f"{first.job_id}:{first.datum_id}")

    async def _finish(self, job: JobInfo) -> None:
        spec = await self._spec_of(job)
        async with acquire(self.pool) as conn:
            if job.state != JOB_FINISHING:
                async with conn.transaction():
                    await self._set_state(conn, job, JOB_FINISHING)
            rows = await store.job_datum_rows(conn, job.id)
            removed = await store.job_removed_datums(conn, job.id)
        failed = [r for r in rows if r["state"] == DATUM_FAILED]
        if failed:
            first = failed[0]
            await self._fail(
                job,
                spec,
                f"{len(failed)} datum(s) failed; datum {first['datum_id']}: {first['error']}",
            )
            return
        processed = [
            DatumOutcome(r["datum_id"], r["hash"], r["state"], r["output_root"], r["error"])
            for r in rows
            if r["state"] in (DATUM_SUCCESS, DATUM_RECOVERED)
        ]
        replaced = {d.id for d in processed} | set(removed)
        async with acquire(self.pool) as conn:
            old = await store.current_datums(conn, job.pipeline, sorted(replaced))
            assembly = await assemble(
                self.index, processed, removed, {k: root for k, (_h, root) in old.items()}
            )
            if assembly.conflict is None:
                owners = await store.output_owners(conn, job.pipeline, list(assembly.new_paths))
                check_owners(assembly, owners, replaced)
        if assembly.conflict is not None:
            await self._fail(job, spec, assembly.conflict)
            return
        assert job.output_commit is not None
        commit = await self.pfs.inspect_commit(spec.name, job.output_commit)
        if commit.state == "open":
            if assembly.changes:
                await self.pfs.put_entries(
                    spec.name,
                    spec.output_branch,
                    sorted(assembly.changes.items()),
                    commit=job.output_commit,
                )
            await self.pfs.finish_commit(spec.name, job.output_commit)
        async with acquire(self.pool) as conn, conn.transaction():
            await store.commit_datum_outputs(
                conn,
                job.pipeline,
                job.id,
                replaced=sorted(replaced),
                succeeded=[(d.id, d.hash, d.output_root) for d in processed],
                new_paths=sorted(assembly.new_paths.items()),
            )
            await self._set_state(conn, job, JOB_SUCCESS)
        log.info("job %s of %s succeeded: output commit %s", job.id, spec.name, job.output_commit)
        self.wake()

    async def _kill_if_overdue(self, job: JobInfo) -> None:
        """Enforce ``job_timeout``: an overdue job is killed; its late results are ignored."""
        spec = await self._spec_of(job)
        if spec.job_timeout is None or job.started is None:
            return
        elapsed = (datetime.now(UTC) - datetime.fromisoformat(job.started)).total_seconds()
        if elapsed > spec.job_timeout:
            await self._fail(
                job, spec, f"job timed out after {spec.job_timeout:g} s", state=JOB_KILLED
            )

    async def _fail(
        self, job: JobInfo, spec: PipelineSpec, reason: str, *, state: str = JOB_FAILURE
    ) -> None:
        if job.output_commit is not None:
            commit = await self.pfs.inspect_commit(spec.name, job.output_commit)
            if commit.state == "open":
                await self.pfs.finish_commit(spec.name, job.output_commit, error=reason)
        async with acquire(self.pool) as conn, conn.transaction():
            # Datums still running are marked failed, so their late results change nothing.
            await store.fail_starting_datums(conn, job.id, reason)
            await self._set_state(conn, job, state, reason=reason)
        log.info("job %s of %s ended %s: %s", job.id, spec.name, state, reason)
        self.wake()


# A task and, when it was measured for a batch, its JSON.
_Grouped = tuple[DatumTask, str | None]


def _grouped(tasks: list[DatumTask], per_message: int) -> list[list[_Grouped]]:
    if per_message <= 1:
        return [[(task, None)] for task in tasks]
    texts = [json.dumps(task.to_json()) for task in tasks]
    return [
        [(tasks[i], texts[i]) for i in group]
        for group in batch_tasks([len(text) for text in texts], per_message)
    ]


def datum_task(spec: PipelineSpec, job_id: str, output_commit: str, datum: Datum) -> DatumTask:
    """The task a worker runs for ``datum``: its files' entries and the spec's transform."""
    leaves = {leaf.name: leaf for leaf in pfs_inputs(spec.input)}
    inputs = []
    for part in datum.inputs:
        leaf = leaves.get(part.input)
        inputs.append(
            DatumTaskInput(
                name=part.input,
                repo=part.repo,
                branch=part.branch,
                commit=part.commit,
                match=part.match,
                files=tuple(DatumTaskFile(f.input, f.path, f.entry) for f in part.files),
                lazy=bool(leaf and leaf.lazy),
                empty_files=bool(leaf and leaf.empty_files),
                join_on=part.join_on,
                group_by=part.group_by,
            )
        )
    return DatumTask(
        pipeline=spec.name,
        job_id=job_id,
        datum_id=datum.id,
        attempt=1,
        inputs=tuple(inputs),
        cmd=tuple(spec.transform.cmd),
        stdin=tuple(spec.transform.stdin),
        env=dict(spec.transform.env),
        err_cmd=tuple(spec.transform.err_cmd) or None,
        err_stdin=tuple(spec.transform.err_stdin),
        datum_timeout=spec.datum_timeout,
        output_commit=output_commit,
        accept_return_code=tuple(spec.transform.accept_return_code),
        working_dir=spec.transform.working_dir,
        user=spec.transform.user,
        secrets=tuple(spec.transform.secrets),
        datum_batching=spec.transform.datum_batching,
    )
