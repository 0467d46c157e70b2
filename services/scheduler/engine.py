"""The scheduler's engine: commit events → jobs → datum tasks → results → output commits.

Everything durable lives in PostgreSQL and JetStream, so a restarted scheduler
picks up where it stopped:

- ``commit.finished`` and ``branch.moved`` events arrive through durable consumers;
  each makes at most one job per pipeline (``services.scheduler.inputs``), then is acked.
- A job is driven through JOB_STARTING (plan, record datums, publish tasks),
  JOB_RUNNING (results arrive), JOB_FINISHING (assemble the output commit) to
  JOB_SUCCESS or JOB_FAILURE. Every step can run again after a crash: datum rows
  are inserted once, tasks carry a ``Nats-Msg-Id`` so a re-publish is dropped,
  results are recorded only while their datum is STARTING.
- Jobs of one pipeline run one after another: each compares against the last
  successful one.

One scheduler drives at a time (a PostgreSQL advisory lock); another replica
waits as a hot standby. The loops outlive a PostgreSQL or NATS restart: each retries
with backoff (``shared.platform.backoff.keep_running``), and a leader whose lock connection died
(the lock with it) stops its loops and waits to lead again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from services.scheduler.assembly import DatumOutcome, assemble, check_owners
from services.scheduler.backends import WorkerBackend, WorkerSet
from services.scheduler.cron import tick_if_due
from services.scheduler.inputs import JobStarter
from services.scheduler.planner import (
    Baseline,
    JobPlan,
    can_plan_incrementally,
    datum_summary,
    plan_full,
    plan_incremental,
)
from services.scheduler.tasks import (
    DatumResult,
    DatumTask,
    DatumTaskFile,
    DatumTaskInput,
    task_envelope,
    task_ref_envelope,
    worker_consumer_name,
)
from shared.api.events import Event, JobStateChanged, subject_filter
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
    PIPELINE_ACTIVE,
    PIPELINE_CRASHING,
    PIPELINE_RUNNING,
    JobInfo,
    PipelineInfo,
)
from shared.pipeline.datums import Datum
from shared.pipeline.spec import (
    CronInput,
    PipelineSpec,
    iter_inputs,
    parse_pipeline_spec,
    pfs_inputs,
)
from shared.platform.backoff import Backoff, keep_running
from shared.platform.bus import Bus, results_stream_name, tasks_stream_name, tasks_subject
from shared.platform.config import Config
from shared.platform.db import Conn, acquire, check_alive
from shared.platform.errors import FailedPrecondition, NotFound, TuskError, Unavailable
from shared.platform.outbox import enqueue
from shared.pps import store
from shared.storage.file_index import FileIndex
from shared.storage.objstore import ObjectStore

log = logging.getLogger("tusk.scheduler")

# "tusksche": the advisory lock the active scheduler holds.
SCHEDULER_LOCK_KEY = 0x7475_736B_7363_6865
# Tasks bigger than this travel through the object store (NATS caps a message at 1 MiB).
MAX_INLINE_TASK = 768 * 1024
MAX_LOG_LINES = 10_000
DRIVE_INTERVAL_S = 1.0
RECONCILE_INTERVAL_S = 2.0
CRON_INTERVAL_S = 1.0
PUBLISH_BATCH = 256
# How often the leader checks that its lock's connection (and so the lock) is still there.
LOCK_CHECK_INTERVAL_S = 1.0
# Longest wait between retries of a failing loop, and between tries to lead again.
RETRY_MAX_S = 10.0
# A batch that failed for a passing cause comes back after this, not after the ack wait.
REDELIVER_AFTER_S = 1.0


class Engine:
    def __init__(
        self,
        config: Config,
        pool: asyncpg.Pool,
        bus: Bus,
        pfs: PfsClient,
        objects: ObjectStore,
        backend: WorkerBackend,
    ) -> None:
        self.config = config
        self.pool = pool
        self.bus = bus
        self.pfs = pfs
        self.objects = objects
        self.index = FileIndex(objects)
        self.backend = backend
        self._wake = asyncio.Event()
        self._reconcile = asyncio.Event()
        self.leader = False
        self._known_pipelines: set[str] = set()
        self.jobs = JobStarter(pool, pfs)

    def wake(self) -> None:
        self._wake.set()

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

    def _loops(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        return [
            ("consuming commits", self._consume_commits),
            ("consuming branch moves", self._consume_branch_moves),
            ("consuming pipeline events", self._consume_pipeline_events),
            ("consuming datum results", self._consume_results),
            ("driving jobs", self._drive),
            ("reconciling workers", self._reconcile_workers),
            ("ticking crons", self._tick_crons),
        ]

    async def _hold_lock(self, conn: Conn) -> None:
        """Raise ``Unavailable`` once the lock's connection is gone: the lock went with it,
        and another replica may lead now, so these loops must stop."""
        while True:
            await asyncio.sleep(LOCK_CHECK_INTERVAL_S)
            await check_alive(conn)

    # Consumers

    async def _pull(
        self,
        stream: str,
        subject: str,
        durable: str,
        handle: Callable[[list[bytes]], Awaitable[None]],
        *,
        deliver_new: bool = False,
    ) -> None:
        """Handle the messages of a durable pull consumer a batch at a time, acking them once
        ``handle`` returns; a ``TuskError`` leaves the batch for redelivery (handlers are
        idempotent)."""
        config = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=60,
            deliver_policy=DeliverPolicy.NEW if deliver_new else DeliverPolicy.ALL,
            max_ack_pending=1000,
        )
        try:
            sub = await self.bus.js.pull_subscribe(
                subject, durable=durable, stream=stream, config=config
            )
        except nats.errors.Error as exc:
            raise Unavailable(f"{durable}: cannot subscribe: {exc!r}") from exc
        try:
            while True:
                try:
                    msgs = await sub.fetch(batch=50, timeout=1.0)
                except (nats.errors.TimeoutError, TimeoutError):
                    continue
                except nats.errors.Error as exc:
                    raise Unavailable(f"{durable}: fetching: {exc!r}") from exc
                try:
                    await handle([msg.data for msg in msgs])
                except TuskError as exc:
                    # Redelivered soon, when the cause (PostgreSQL restarting…) may be gone.
                    log.warning("%s: %s; will retry", durable, exc.message)
                    await self._redeliver(msgs)
                    continue
                except Exception:
                    # A bug must not stop the consumer for good: log it, retry the batch later.
                    log.exception("%s: unexpected error; the batch will be redelivered", durable)
                    continue
                for msg in msgs:
                    await msg.ack()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _redeliver(self, msgs: list[Any]) -> None:
        with contextlib.suppress(nats.errors.Error):
            for msg in msgs:
                await msg.nak(delay=REDELIVER_AFTER_S)

    async def _consume_commits(self) -> None:
        subject = subject_filter(self.config.nats_prefix, "commit.finished")
        await self._pull(self.config.stream_name, subject, "scheduler-commits", self._on_inputs)

    async def _consume_branch_moves(self) -> None:
        subject = subject_filter(self.config.nats_prefix, "branch.moved")
        await self._pull(self.config.stream_name, subject, "scheduler-branches", self._on_inputs)

    async def _on_inputs(self, batch: list[bytes]) -> None:
        if await self.jobs.on_events(batch):
            self.wake()

    async def _consume_pipeline_events(self) -> None:
        subject = subject_filter(self.config.nats_prefix, "pipeline.updated")

        async def changed(_batch: list[bytes]) -> None:
            self._reconcile.set()
            self.wake()

        await self._pull(
            self.config.stream_name, subject, "scheduler-pipelines", changed, deliver_new=True
        )

    async def _consume_results(self) -> None:
        subject = f"{self.config.nats_prefix}.results.>"
        await self._pull(
            results_stream_name(self.config), subject, "scheduler-results", self._on_results
        )

    async def _on_results(self, batch: list[bytes]) -> None:
        """Record a batch of datum results in one transaction (a duplicate changes nothing)."""
        applied_any = False
        async with acquire(self.pool) as conn, conn.transaction():
            for data in batch:
                body = json.loads(data)
                result = DatumResult.from_json(body["result"])
                applied = await store.record_datum_result(
                    conn,
                    body["job_id"],
                    body["datum_id"],
                    state=result.state,
                    output_root=result.output_root,
                    output_files=result.output_files,
                    output_bytes=result.output_bytes,
                    attempts=int(body.get("attempts", 1)),
                    error=result.error,
                    seconds=result.seconds,
                )
                if applied and result.logs:
                    lines = result.logs.splitlines()[:MAX_LOG_LINES]
                    await store.insert_logs(
                        conn, body["pipeline"], body["job_id"], body["datum_id"], lines
                    )
                applied_any = applied_any or applied
        if applied_any:
            self.wake()

    # Workers

    async def _reconcile_workers(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reconcile.wait(), RECONCILE_INTERVAL_S)
            self._reconcile.clear()
            try:
                async with acquire(self.pool) as conn:
                    pipelines = await store.list_pipelines(conn)
                desired = {
                    p.name: WorkerSet(p.name, p.version, parse_pipeline_spec(p.spec))
                    for p in pipelines
                    if p.state in PIPELINE_ACTIVE
                }
                await self.backend.reconcile(desired)
                await self._report_worker_problems(pipelines)
                names = {p.name for p in pipelines}
                for gone in self._known_pipelines - names:
                    await self._forget_tasks(gone)
                self._known_pipelines = names
            except TuskError as exc:
                log.warning("reconciling workers: %s", exc.message)

    async def _tick_crons(self) -> None:
        while True:
            await asyncio.sleep(CRON_INTERVAL_S)
            try:
                async with acquire(self.pool) as conn:
                    pipelines = await store.list_pipelines(conn)
                now = datetime.now(UTC)
                for pipeline in pipelines:
                    if pipeline.state not in PIPELINE_ACTIVE:
                        continue
                    created = datetime.fromisoformat(pipeline.created)
                    for leaf in iter_inputs(parse_pipeline_spec(pipeline.spec).input):
                        if isinstance(leaf, CronInput):
                            await tick_if_due(self.pfs, leaf, created, now)
            except TuskError as exc:
                log.warning("cron ticks: %s", exc.message)

    async def _report_worker_problems(self, pipelines: list[PipelineInfo]) -> None:
        """Pod failures (ImagePullBackOff, CrashLoopBackOff, OOMKilled …) show on the pipeline
        (PIPELINE_CRASHING with the pod's reason) and on its running job's reason."""
        problems = {
            entry["pipeline"]: entry["problems"][0]
            for entry in self.backend.status()
            if entry.get("problems")
        }
        async with acquire(self.pool) as conn, conn.transaction():
            for pipeline in pipelines:
                problem = problems.get(pipeline.name)
                if problem is not None and pipeline.state in PIPELINE_ACTIVE:
                    reason = "worker {pod}: {reason}: {message}".format(
                        pod=problem.get("pod") or "-",
                        reason=problem.get("reason"),
                        message=problem.get("message") or "",
                    ).strip()
                    if pipeline.state != PIPELINE_CRASHING or pipeline.reason != reason:
                        await store.set_pipeline_state(
                            conn, pipeline.name, PIPELINE_CRASHING, reason
                        )
                        await conn.execute(
                            "UPDATE pps_jobs SET reason = $2 WHERE pipeline = $1 "
                            "AND state = ANY($3::text[])",
                            pipeline.name,
                            reason,
                            [JOB_STARTING, JOB_RUNNING],
                        )
                elif problem is None and pipeline.state == PIPELINE_CRASHING:
                    await store.set_pipeline_state(conn, pipeline.name, PIPELINE_RUNNING)

    async def _forget_tasks(self, pipeline: str) -> None:
        """A deleted pipeline's queued tasks and worker consumer go with it."""
        stream = tasks_stream_name(self.config)
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self.bus.js.purge_stream(stream, subject=tasks_subject(self.config, pipeline))
            await self.bus.js.delete_consumer(stream, worker_consumer_name(pipeline))

    # Driving jobs

    async def _drive(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), DRIVE_INTERVAL_S)
            self._wake.clear()
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

    async def _spec_of(self, job: JobInfo) -> PipelineSpec:
        async with acquire(self.pool) as conn:
            for version, spec, _ in await store.pipeline_versions(conn, job.pipeline):
                if version == job.pipeline_version:
                    return parse_pipeline_spec(spec)
        raise NotFound(f"spec version {job.pipeline_version} of {job.pipeline} is gone")

    async def progress(self, job: JobInfo) -> None:
        """Move one job as far as it can go now."""
        if job.state in (JOB_CREATED, JOB_STARTING):
            await self._start(job)
        elif job.state == JOB_RUNNING:
            async with acquire(self.pool) as conn:
                remaining = await store.job_remaining(conn, job.id)
            if remaining <= 0:
                await self._finish(job)
            else:
                await self._kill_if_overdue(job)
        elif job.state == JOB_FINISHING:
            await self._finish(job)

    async def _set_state(self, conn: Conn, job: JobInfo, state: str, **values: Any) -> None:
        reason = values.get("reason")
        await store.update_job(conn, job.id, state=state, **values)
        event = Event(
            JobStateChanged(
                pipeline=job.pipeline,
                job=job.id,
                state=state,
                reason=reason,
                output_commit=values.get("output_commit", job.output_commit),
            )
        )
        await enqueue(conn, event, event.subject(self.config.nats_prefix))

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
            pending = {
                r["datum_id"]
                for r in await store.job_datum_rows(conn, job.id)
                if r["state"] == "STARTING"
            }
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
        to_publish = [datum for datum, _digest in plan.to_run if datum.id in pending]
        # Publishes overlap (each still waits for JetStream's ack), so workers get tasks fast.
        for start in range(0, len(to_publish), PUBLISH_BATCH):
            await asyncio.gather(
                *(
                    self._publish_task(spec, job.id, output_commit, datum)
                    for datum in to_publish[start : start + PUBLISH_BATCH]
                )
            )
        if not pending:
            self.wake()

    async def _open_output_commit(self, spec: PipelineSpec, job: JobInfo) -> str:
        provenance = [CommitRef(c.repo, c.branch, c.id) for c in job.input_commits]
        try:
            commit = await self.pfs.start_commit(
                spec.name, spec.output_branch, description=f"job {job.id}", provenance=provenance
            )
        except FailedPrecondition:
            # A commit left open by a job that died with its scheduler: close it as failed.
            head = await self.pfs.inspect_commit(spec.name, spec.output_branch)
            await self.pfs.finish_commit(spec.name, head.id, error="abandoned by a stopped job")
            commit = await self.pfs.start_commit(
                spec.name, spec.output_branch, description=f"job {job.id}", provenance=provenance
            )
        return commit.id

    async def _plan(self, spec: PipelineSpec, job: JobInfo) -> JobPlan:
        roots = {
            c.name: (await self.pfs.inspect_commit(c.repo, c.id)).index_root
            for c in job.input_commits
        }
        async with acquire(self.pool) as conn:
            reprocess = await store.job_reprocess(conn, job.id)
            last = await store.last_job_with_state(conn, job.pipeline, JOB_SUCCESS)
            current_count = await store.count_current_datums(conn, job.pipeline)
        baseline = None
        if last is not None:
            base_roots = {
                c.name: (await self.pfs.inspect_commit(c.repo, c.id)).index_root
                for c in last.input_commits
            }
            baseline = Baseline(last.pipeline_version, base_roots, {}, current_count)
        # A restarted datum is not among the changed paths: compare every datum instead.
        restart = job.trigger.startswith("restart:")
        if (
            baseline is not None
            and not restart
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
        return await plan_full(
            self.index, spec, job.input_commits, roots, current, reprocess=reprocess
        )

    async def _publish_task(
        self, spec: PipelineSpec, job_id: str, output_commit: str, datum: Datum
    ) -> None:
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
        task = DatumTask(
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
        )
        payload = json.dumps(task_envelope(task, spec.datum_tries)).encode()
        if len(payload) > MAX_INLINE_TASK:
            key = f"tasks/{job_id}/{datum.id}.json"
            await self.objects.put(key, payload)
            payload = json.dumps(task_ref_envelope(task.ids, key)).encode()
        await self.bus.js.publish(
            tasks_subject(self.config, spec.name),
            payload,
            headers={"Nats-Msg-Id": f"{job_id}:{datum.id}"},
        )

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
            await conn.execute(
                "UPDATE pps_job_datums SET state = 'FAILED', error = $2, finished = now() "
                "WHERE job_id = $1 AND state = 'STARTING'",
                job.id,
                reason,
            )
            await self._set_state(conn, job, state, reason=reason)
        log.info("job %s of %s ended %s: %s", job.id, spec.name, state, reason)
        self.wake()

    def status(self) -> dict[str, Any]:
        return {"leader": self.leader, "workers": self.backend.status()}


__all__ = ["Engine", "PipelineInfo"]
