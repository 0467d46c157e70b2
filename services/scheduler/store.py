"""The scheduler's records in PostgreSQL: jobs, their datums, each pipeline's current
datums and output path owners, datum logs.

The scheduler owns these tables (they keep their ``pps_`` names) and its view of PPS's
pipelines (``scheduler_pipelines``, ``scheduler_pipeline_specs``), written only from PPS's
answers (docs/architecture.md, "Owners"). This module is the scheduler's one adapter to
PostgreSQL: no other query of the scheduler exists. Functions take a connection so
callers own their transactions; bulk rows go in with unnest arrays, never one INSERT per
datum.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib.resources import files
from typing import Any

from shared.api.pps_models import (
    DATUM_STARTING,
    JOB_ACTIVE,
    JOB_CREATED,
    JOB_SUCCESS,
    PIPELINE_ACTIVE,
    DatumInfo,
    InputCommit,
    JobInfo,
    LogLine,
    PipelineInfo,
)
from shared.platform.db import Conn, Pool, Row, migrate
from shared.platform.errors import FailedPrecondition, NotFound


async def migrate_scheduler(pool: Pool) -> list[int]:
    """Apply the scheduler's schema (its own history, apart from PPS's)."""
    return await migrate(pool, "scheduler", files("services.scheduler.migrations"))


def _t(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


# The scheduler's view of PPS's pipelines (``scheduler_pipelines``): written only from
# PPS's answers (services/scheduler/pipelines.py), read by every part of the scheduler.


def _pipeline(rec: Row) -> PipelineInfo:
    return PipelineInfo(
        name=rec["name"],
        version=rec["version"],
        state=rec["state"],
        spec=_json(rec["spec"]),
        created=_t(rec["created"]) or "",
        updated=_t(rec["updated"]) or "",
        reason=rec["reason"],
        last_job_state=rec["last_job_state"],
    )


_PIPELINE_SELECT = """
    SELECT p.*, (SELECT j.state FROM pps_jobs j WHERE j.pipeline = p.name
                 ORDER BY j.seq DESC LIMIT 1) AS last_job_state
    FROM scheduler_pipelines p
"""


async def get_pipeline(conn: Conn, name: str, *, lock: bool = False) -> PipelineInfo:
    """The pipeline as last learnt from PPS; ``lock`` holds its row until the transaction
    ends, so jobs of one pipeline are recorded one at a time."""
    if lock:
        await conn.execute("SELECT 1 FROM scheduler_pipelines WHERE name = $1 FOR UPDATE", name)
    rec = await conn.fetchrow(_PIPELINE_SELECT + " WHERE p.name = $1", name)
    if rec is None:
        raise NotFound(f"pipeline {name} not found (tusk list pipeline shows them)")
    return _pipeline(rec)


async def list_pipelines(conn: Conn) -> list[PipelineInfo]:
    return [
        _pipeline(r) for r in await conn.fetch(_PIPELINE_SELECT + " ORDER BY p.created, p.name")
    ]


async def pipeline_spec_version(conn: Conn, name: str, version: int) -> dict[str, Any] | None:
    """The spec of one version of a pipeline (None if this view never saw it)."""
    spec = await conn.fetchval(
        "SELECT spec FROM scheduler_pipeline_specs WHERE name = $1 AND version = $2",
        name,
        version,
    )
    return None if spec is None else dict(_json(spec))


async def save_pipeline(conn: Conn, info: PipelineInfo) -> bool:
    """Record PPS's answer about a pipeline; an answer older than the stored one (by PPS's
    ``created``, then ``updated``) changes nothing. True if recorded."""
    recorded = await conn.fetchval(
        """
        INSERT INTO scheduler_pipelines AS p (name, version, state, reason, spec, created, updated)
        VALUES ($1, $2, $3, $4, $5::jsonb, $6::timestamptz, $7::timestamptz)
        ON CONFLICT (name) DO UPDATE SET
            version = excluded.version, state = excluded.state, reason = excluded.reason,
            spec = excluded.spec, created = excluded.created, updated = excluded.updated,
            seen = clock_timestamp()
        WHERE (excluded.created, excluded.updated) >= (p.created, p.updated)
        RETURNING 1
        """,
        info.name,
        info.version,
        info.state,
        info.reason,
        json.dumps(info.spec),
        datetime.fromisoformat(info.created),
        datetime.fromisoformat(info.updated),
    )
    if recorded:
        await save_spec_version(conn, info.name, info.version, info.spec)
    return bool(recorded)


async def save_spec_version(conn: Conn, name: str, version: int, spec: dict[str, Any]) -> None:
    """Keep a spec version (the latest word wins: a pipeline made again starts at 1)."""
    await conn.execute(
        "INSERT INTO scheduler_pipeline_specs (name, version, spec) VALUES ($1, $2, $3::jsonb) "
        "ON CONFLICT (name, version) DO UPDATE SET spec = excluded.spec",
        name,
        version,
        json.dumps(spec),
    )


async def clock(conn: Conn) -> datetime:
    """The database's clock, against which ``scheduler_pipelines.seen`` is written."""
    value: datetime = await conn.fetchval("SELECT clock_timestamp()")
    return value


async def pipelines_seen_before(conn: Conn, moment: datetime) -> list[str]:
    rows = await conn.fetch("SELECT name FROM scheduler_pipelines WHERE seen < $1", moment)
    return [r["name"] for r in rows]


async def forget_pipeline(conn: Conn, name: str, *, seen_before: datetime | None = None) -> bool:
    """Forget a deleted pipeline: its view row, spec versions, jobs with their datums,
    current datums, output owners and logs. With ``seen_before``, only if the view row was
    not written since (a pipeline made again meanwhile stays). True if forgotten."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT seen FROM scheduler_pipelines WHERE name = $1 FOR UPDATE", name
        )
        if row is not None and seen_before is not None and row["seen"] >= seen_before:
            return False
        await conn.execute("DELETE FROM pps_logs WHERE pipeline = $1", name)
        await conn.execute("DELETE FROM pps_output_paths WHERE pipeline = $1", name)
        await conn.execute("DELETE FROM pps_current_datums WHERE pipeline = $1", name)
        await conn.execute("DELETE FROM pps_datum_history WHERE pipeline = $1", name)
        await conn.execute("DELETE FROM pps_jobs WHERE pipeline = $1", name)
        await conn.execute("DELETE FROM scheduler_pipeline_specs WHERE name = $1", name)
        await conn.execute("DELETE FROM scheduler_pipelines WHERE name = $1", name)
        return True


async def last_job_states(conn: Conn, pipeline: str | None = None) -> dict[str, str]:
    """Each pipeline's newest job's state (PPS shows it as ``last_job_state``)."""
    rows = await conn.fetch(
        "SELECT DISTINCT ON (pipeline) pipeline, state FROM pps_jobs "
        "WHERE $1::text IS NULL OR pipeline = $1 ORDER BY pipeline, seq DESC",
        pipeline,
    )
    return {r["pipeline"]: r["state"] for r in rows}


# Jobs


def new_job_id() -> str:
    return uuid.uuid4().hex


def _job(rec: Row) -> JobInfo:
    return JobInfo(
        id=rec["id"],
        pipeline=rec["pipeline"],
        pipeline_version=rec["pipeline_version"],
        state=rec["state"],
        created=_t(rec["created"]) or "",
        trigger=rec["trigger"],
        reason=rec["reason"],
        input_commits=[InputCommit.from_json(c) for c in _json(rec["input_commits"])],
        output_commit=rec["output_commit"],
        data_total=rec["data_total"],
        data_processed=rec["data_processed"],
        data_skipped=rec["data_skipped"],
        data_failed=rec["data_failed"],
        data_recovered=rec["data_recovered"],
        started=_t(rec["started"]),
        finished=_t(rec["finished"]),
    )


async def create_job(
    conn: Conn,
    pipeline: str,
    version: int,
    trigger: str,
    inputs: Sequence[InputCommit],
    *,
    reprocess: bool = False,
    rerun: Sequence[str] = (),
) -> JobInfo | None:
    """A new JOB_CREATED job, or None if this trigger already made one (redelivered events).

    ``rerun``: datum ids the job runs even if unchanged (``tusk restart datum``).
    """
    rec = await conn.fetchrow(
        """
        INSERT INTO pps_jobs (id, pipeline, pipeline_version, trigger, state, input_commits,
                              reprocess, rerun_datums)
        VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8::jsonb)
        ON CONFLICT (pipeline, trigger) DO NOTHING
        RETURNING *
        """,
        new_job_id(),
        pipeline,
        version,
        trigger,
        JOB_CREATED,
        json.dumps([c.__dict__ for c in inputs]),
        reprocess,
        json.dumps(list(rerun)),
    )
    return _job(rec) if rec else None


async def job_by_trigger(conn: Conn, pipeline: str, trigger: str) -> JobInfo | None:
    """The job ``trigger`` made (one per trigger), if any."""
    rec = await conn.fetchrow(
        "SELECT * FROM pps_jobs WHERE pipeline = $1 AND trigger = $2", pipeline, trigger
    )
    return _job(rec) if rec else None


async def find_job(conn: Conn, pipeline: str, job_id: str) -> JobInfo:
    """A job of ``pipeline`` by its id or a prefix of it."""
    rec = await conn.fetchrow(
        "SELECT * FROM pps_jobs WHERE pipeline = $1 AND (id = $2 OR id LIKE $2 || '%') LIMIT 1",
        pipeline,
        job_id,
    )
    if rec is None:
        raise NotFound(f"job {pipeline}@{job_id} not found (tusk list job -p {pipeline})")
    return _job(rec)


async def list_jobs(conn: Conn, pipeline: str | None, limit: int) -> list[JobInfo]:
    rows = await conn.fetch(
        "SELECT * FROM pps_jobs WHERE ($1::text IS NULL OR pipeline = $1) ORDER BY seq DESC LIMIT $2",
        pipeline,
        limit,
    )
    return [_job(r) for r in rows]


async def job_reads(
    conn: Conn, pipeline: str, repo: str, branch: str, commit: str, *, newest_only: bool
) -> bool:
    """Whether a job of ``pipeline`` (only its newest, with ``newest_only``) reads ``commit``
    of ``repo@branch``."""
    reading = json.dumps([{"repo": repo, "branch": branch, "id": commit}])
    if newest_only:
        newest = await conn.fetchval(
            "SELECT input_commits @> $2::jsonb FROM pps_jobs WHERE pipeline = $1 "
            "ORDER BY seq DESC LIMIT 1",
            pipeline,
            reading,
        )
        return bool(newest)
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pps_jobs WHERE pipeline = $1 "
            "AND input_commits @> $2::jsonb)",
            pipeline,
            reading,
        )
    )


async def newest_read(conn: Conn, pipeline: str, repo: str, branch: str) -> str | None:
    """The commit of ``repo@branch`` that the pipeline's newest job over that branch reads."""
    reading = json.dumps([{"repo": repo, "branch": branch}])
    commits = await conn.fetchval(
        "SELECT input_commits FROM pps_jobs WHERE pipeline = $1 AND input_commits @> $2::jsonb "
        "ORDER BY seq DESC LIMIT 1",
        pipeline,
        reading,
    )
    for commit in _json(commits) or []:
        if commit.get("repo") == repo and commit.get("branch") == branch:
            return str(commit["id"])
    return None


async def job_reruns(conn: Conn, job_id: str) -> list[str]:
    """Datum ids the job runs even if unchanged (``tusk restart datum``)."""
    return list(
        _json(await conn.fetchval("SELECT rerun_datums FROM pps_jobs WHERE id = $1", job_id)) or []
    )


async def job_reprocess(conn: Conn, job_id: str) -> bool:
    return bool(await conn.fetchval("SELECT reprocess FROM pps_jobs WHERE id = $1", job_id))


async def jobs_to_drive(conn: Conn) -> list[JobInfo]:
    """Per pipeline, its oldest unfinished job (jobs of one pipeline run one at a time)."""
    rows = await conn.fetch(
        """
        SELECT DISTINCT ON (j.pipeline) j.* FROM pps_jobs j
        JOIN scheduler_pipelines p ON p.name = j.pipeline
        WHERE j.state = ANY($1::text[]) AND p.state = ANY($2::text[])
        ORDER BY j.pipeline, j.seq
        """,
        list(JOB_ACTIVE),
        list(PIPELINE_ACTIVE),
    )
    return [_job(r) for r in rows]


async def request_stop(conn: Conn, job_id: str, reason: str) -> bool:
    """Ask the driver to end an unfinished job JOB_KILLED (``tusk stop job``); False if done.

    The owner's API for stopping: the caller records the wish, the driver acts on it on
    its next pass (so a stop never races a step the driver is taking on the same job).
    """
    status = await conn.execute(
        "UPDATE pps_jobs SET stop_reason = $2 WHERE id = $1 AND state = ANY($3::text[])",
        job_id,
        reason,
        list(JOB_ACTIVE),
    )
    return status != "UPDATE 0"


async def jobs_to_stop(conn: Conn) -> list[tuple[JobInfo, str]]:
    """Unfinished jobs someone asked to stop, with the reason, oldest first."""
    rows = await conn.fetch(
        "SELECT * FROM pps_jobs WHERE stop_reason IS NOT NULL AND state = ANY($1::text[]) "
        "ORDER BY seq",
        list(JOB_ACTIVE),
    )
    return [(_job(r), r["stop_reason"]) for r in rows]


async def delete_finished_job(conn: Conn, job_id: str) -> None:
    """Remove a finished job with its datum records and logs (``tusk delete job``).

    Refused while the job runs (stop it first) and for the pipeline's newest successful
    job: the next job plans against it. Current datums keep their own output roots, so
    nothing the output branch holds is lost.
    """
    async with conn.transaction():
        rec = await conn.fetchrow(
            "SELECT pipeline, state FROM pps_jobs WHERE id = $1 FOR UPDATE", job_id
        )
        if rec is None:
            raise NotFound(f"job {job_id} not found")
        name = f"{rec['pipeline']}@{job_id}"
        if rec["state"] in JOB_ACTIVE:
            raise FailedPrecondition(f"job {name} is {rec['state']}: stop it first (tusk stop job)")
        newest = await last_job_with_state(conn, rec["pipeline"], JOB_SUCCESS)
        if newest is not None and newest.id == job_id:
            raise FailedPrecondition(
                f"job {name} is the pipeline's newest successful job: the next job plans against it"
            )
        await conn.execute(
            "DELETE FROM pps_logs WHERE pipeline = $1 AND job_id = $2", rec["pipeline"], job_id
        )
        # Its datum records go with it (ON DELETE CASCADE).
        await conn.execute("DELETE FROM pps_jobs WHERE id = $1", job_id)


async def datums_page(
    conn: Conn,
    pipeline: str,
    job_id: str,
    *,
    skipped: bool,
    after: str,
    limit: int,
    only_state: str | None = None,
) -> list[DatumInfo]:
    """One page of a job's datums by id (``tusk list datum --all``), so 100,000 stream;
    ``only_state``: those in that state only (the console's filter, failed ones first).

    With ``skipped``, the datums the job skipped come too, as SKIPPED, for any job: those
    current when it started (``pps_datum_history``, migration 0006) that it neither ran
    nor removed. Both sides are read in datum-id order from their keys and merged, so a
    page costs the page, however many datums the job has.
    """
    rows = await conn.fetch(
        """
        SELECT datum_id, job_id, state, hash, inputs, output_files, output_bytes, attempts,
               error, seconds, started, finished
        FROM pps_job_datums
        WHERE job_id = $2 AND datum_id > $3 AND ($6::text IS NULL OR state = $6)
        UNION ALL
        SELECT datum_id, $2, 'SKIPPED', hash, '[]'::jsonb, 0, 0, 0, NULL, NULL, NULL, NULL
        FROM pps_datum_history h
        WHERE $5 AND h.pipeline = $1 AND h.datum_id > $3
          AND h.valid_from < (SELECT seq FROM pps_jobs WHERE id = $2)
          AND coalesce(h.valid_to >= (SELECT seq FROM pps_jobs WHERE id = $2), true)
          AND NOT (SELECT removed_datums FROM pps_jobs WHERE id = $2) ? h.datum_id
          AND NOT EXISTS (
              SELECT 1 FROM pps_job_datums d WHERE d.job_id = $2 AND d.datum_id = h.datum_id
          )
          AND ($6::text IS NULL OR $6 = 'SKIPPED')
        ORDER BY datum_id LIMIT $4
        """,
        pipeline,
        job_id,
        after,
        limit,
        skipped,
        only_state,
    )
    return [_datum_info(r) for r in rows]


async def list_job_datums(conn: Conn, job_id: str, limit: int = 100000) -> list[DatumInfo]:
    rows = await conn.fetch(
        "SELECT * FROM pps_job_datums WHERE job_id = $1 ORDER BY datum_id LIMIT $2", job_id, limit
    )
    return [_datum_info(r) for r in rows]


async def get_job_datum(conn: Conn, job_id: str, datum_id: str) -> DatumInfo:
    """A datum of a job by its id or a prefix of it."""
    rec = await conn.fetchrow(
        "SELECT * FROM pps_job_datums WHERE job_id = $1 AND (datum_id = $2 OR datum_id LIKE $2 || '%') "
        "ORDER BY datum_id LIMIT 1",
        job_id,
        datum_id,
    )
    if rec is None:
        raise NotFound(f"datum {datum_id} not found in job {job_id}")
    return _datum_info(rec)


def _datum_info(rec: Row) -> DatumInfo:
    return DatumInfo(
        id=rec["datum_id"],
        job_id=rec["job_id"],
        state=rec["state"],
        hash=rec["hash"],
        inputs=_json(rec["inputs"]),
        output_files=rec["output_files"],
        output_bytes=rec["output_bytes"],
        attempts=rec["attempts"],
        error=rec["error"],
        seconds=rec["seconds"],
        started=_t(rec["started"]),
        finished=_t(rec["finished"]),
    )


async def last_job_with_state(conn: Conn, pipeline: str, state: str) -> JobInfo | None:
    rec = await conn.fetchrow(
        "SELECT * FROM pps_jobs WHERE pipeline = $1 AND state = $2 ORDER BY seq DESC LIMIT 1",
        pipeline,
        state,
    )
    return _job(rec) if rec else None


async def update_job(conn: Conn, job_id: str, **values: Any) -> None:
    """Set job columns; ``state`` moving to done also stamps ``finished``."""
    allowed = {
        "state", "reason", "output_commit", "data_total", "data_processed", "data_skipped",
        "data_failed", "data_recovered", "remaining", "removed_datums",
    }  # fmt: skip
    if "removed_datums" in values:
        values["removed_datums"] = json.dumps(list(values["removed_datums"]))
    assert set(values) <= allowed, set(values) - allowed
    sets = [f"{k} = ${i + 2}" for i, k in enumerate(values)]
    if values.get("state") in ("JOB_STARTING",):
        sets.append("started = coalesce(started, now())")
    if values.get("state") in ("JOB_SUCCESS", "JOB_FAILURE", "JOB_KILLED", "JOB_UNRUNNABLE"):
        sets.append("finished = now()")
    await conn.execute(
        f"UPDATE pps_jobs SET {', '.join(sets)} WHERE id = $1", job_id, *values.values()
    )


async def set_running_jobs_reason(conn: Conn, pipeline: str, reason: str) -> None:
    """Show a worker problem on the pipeline's starting or running job."""
    await conn.execute(
        "UPDATE pps_jobs SET reason = $2 WHERE pipeline = $1 AND state = ANY($3::text[])",
        pipeline,
        reason,
        ["JOB_STARTING", "JOB_RUNNING"],
    )


async def job_removed_datums(conn: Conn, job_id: str) -> list[str]:
    return list(
        _json(await conn.fetchval("SELECT removed_datums FROM pps_jobs WHERE id = $1", job_id))
    )


async def job_remaining(conn: Conn, job_id: str) -> int:
    return int(await conn.fetchval("SELECT remaining FROM pps_jobs WHERE id = $1", job_id) or 0)


async def job_tasks_published(conn: Conn, job_id: str) -> bool:
    """Whether every task of the job reached JetStream (see migration 0005)."""
    return bool(await conn.fetchval("SELECT tasks_published FROM pps_jobs WHERE id = $1", job_id))


async def mark_tasks_published(conn: Conn, job_id: str) -> None:
    await conn.execute("UPDATE pps_jobs SET tasks_published = true WHERE id = $1", job_id)


# Datums


@dataclass(frozen=True)
class PlannedDatum:
    """A datum a job will run: its id, hash and a summary of its inputs for listings."""

    id: str
    hash: str
    inputs: list[dict[str, Any]]


async def insert_job_datums(conn: Conn, job_id: str, datums: Sequence[PlannedDatum]) -> None:
    if not datums:
        return
    await conn.execute(
        """
        INSERT INTO pps_job_datums (job_id, datum_id, hash, state, inputs)
        SELECT $1, d, h, $5, i::jsonb FROM unnest($2::text[], $3::text[], $4::text[]) AS t(d, h, i)
        ON CONFLICT DO NOTHING
        """,
        job_id,
        [d.id for d in datums],
        [d.hash for d in datums],
        [json.dumps(d.inputs) for d in datums],
        DATUM_STARTING,
    )


@dataclass(frozen=True)
class ResultRow:
    """One datum's result as ``record_datum_results`` stores it."""

    job_id: str
    datum_id: str
    state: str
    output_root: str | None
    output_files: int
    output_bytes: int
    attempts: int
    error: str | None
    seconds: float | None


async def record_datum_results(conn: Conn, rows: Sequence[ResultRow]) -> set[tuple[str, str]]:
    """Store many datums' results in two statements (one UPDATE of the datums, one of each
    job's counters); return the (job, datum) pairs recorded now. A result for a datum no
    longer STARTING (a duplicate, a redelivery, a late result of a failed job) changes
    nothing, and a pair given twice is recorded once."""
    if not rows:
        return set()
    applied = await conn.fetch(
        """
        UPDATE pps_job_datums d
           SET state = r.state, output_root = r.output_root, output_files = r.output_files,
               output_bytes = r.output_bytes, attempts = r.attempts, error = r.error,
               seconds = r.seconds, finished = now()
          FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::bigint[],
                      $7::int[], $8::text[], $9::float8[])
               AS r(job_id, datum_id, state, output_root, output_files, output_bytes,
                    attempts, error, seconds)
         WHERE d.job_id = r.job_id AND d.datum_id = r.datum_id AND d.state = 'STARTING'
        RETURNING d.job_id, d.datum_id, d.state
        """,
        [r.job_id for r in rows],
        [r.datum_id for r in rows],
        [r.state for r in rows],
        [r.output_root for r in rows],
        [r.output_files for r in rows],
        [r.output_bytes for r in rows],
        [r.attempts for r in rows],
        [r.error for r in rows],
        [r.seconds for r in rows],
    )
    counts: dict[str, dict[str, int]] = {}
    for row in applied:
        per_job = counts.setdefault(row["job_id"], {"SUCCESS": 0, "FAILED": 0, "RECOVERED": 0})
        per_job[row["state"]] += 1
    for job_id, per_job in sorted(counts.items()):
        await conn.execute(
            "UPDATE pps_jobs SET data_processed = data_processed + $2, "
            "data_failed = data_failed + $3, data_recovered = data_recovered + $4, "
            "remaining = remaining - $5 WHERE id = $1",
            job_id,
            per_job["SUCCESS"],
            per_job["FAILED"],
            per_job["RECOVERED"],
            sum(per_job.values()),
        )
    return {(row["job_id"], row["datum_id"]) for row in applied}


async def starting_datum_ids(conn: Conn, job_id: str) -> set[str]:
    """The job's datums still waiting for their result."""
    rows = await conn.fetch(
        "SELECT datum_id FROM pps_job_datums WHERE job_id = $1 AND state = $2",
        job_id,
        DATUM_STARTING,
    )
    return {r["datum_id"] for r in rows}


async def fail_starting_datums(conn: Conn, job_id: str, reason: str) -> None:
    """Mark the job's datums still running as failed, so their late results change nothing."""
    await conn.execute(
        "UPDATE pps_job_datums SET state = 'FAILED', error = $2, finished = now() "
        "WHERE job_id = $1 AND state = $3",
        job_id,
        reason,
        DATUM_STARTING,
    )


async def job_datum_rows(conn: Conn, job_id: str) -> list[Row]:
    return list(
        await conn.fetch(
            "SELECT datum_id, hash, state, output_root, error FROM pps_job_datums WHERE job_id = $1",
            job_id,
        )
    )


async def current_datums(
    conn: Conn, pipeline: str, ids: Sequence[str] | None = None
) -> dict[str, tuple[str, str | None]]:
    """datum id → (hash, output root) as of the last successful job (all, or only ``ids``)."""
    if ids is None:
        rows = await conn.fetch(
            "SELECT datum_id, hash, output_root FROM pps_current_datums WHERE pipeline = $1",
            pipeline,
        )
    else:
        rows = await conn.fetch(
            "SELECT datum_id, hash, output_root FROM pps_current_datums "
            "WHERE pipeline = $1 AND datum_id = ANY($2::text[])",
            pipeline,
            list(ids),
        )
    return {r["datum_id"]: (r["hash"], r["output_root"]) for r in rows}


async def current_datum_count(conn: Conn, job_id: str) -> int:
    """How many current datums the pipeline had once job ``job_id`` succeeded."""
    return int(
        await conn.fetchval("SELECT current_datums FROM pps_jobs WHERE id = $1", job_id) or 0
    )


async def _current_count_before(conn: Conn, pipeline: str) -> int:
    """The current-datum count as of the pipeline's last successful job; counted once
    only if that job predates the column (kept in step ever since)."""
    row = await conn.fetchrow(
        "SELECT current_datums FROM pps_jobs WHERE pipeline = $1 AND state = 'JOB_SUCCESS' "
        "ORDER BY seq DESC LIMIT 1",
        pipeline,
    )
    if row is None:
        return 0
    if row["current_datums"] is not None:
        return int(row["current_datums"])
    return int(
        await conn.fetchval("SELECT count(*) FROM pps_current_datums WHERE pipeline = $1", pipeline)
    )


async def output_owners(conn: Conn, pipeline: str, paths: Sequence[str]) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT path, datum_id FROM pps_output_paths WHERE pipeline = $1 AND path = ANY($2::text[])",
        pipeline,
        list(paths),
    )
    return {r["path"]: r["datum_id"] for r in rows}


async def commit_datum_outputs(
    conn: Conn,
    pipeline: str,
    job_id: str,
    *,
    replaced: Sequence[str],
    succeeded: Sequence[tuple[str, str, str | None]],
    new_paths: Sequence[tuple[str, str]],
) -> None:
    """After a successful job: its datums become the pipeline's current ones, and the job
    records how many there are now (read back by ``current_datum_count``).

    ``replaced``: datum ids whose old rows and output paths go; ``succeeded``: (id, hash,
    output root); ``new_paths``: (path, datum id) of the outputs they wrote.
    """
    await conn.execute(
        "DELETE FROM pps_output_paths WHERE pipeline = $1 AND datum_id = ANY($2::text[])",
        pipeline,
        list(replaced),
    )
    before = await _current_count_before(conn, pipeline)
    deleted = await conn.execute(
        "DELETE FROM pps_current_datums WHERE pipeline = $1 AND datum_id = ANY($2::text[])",
        pipeline,
        list(replaced),
    )
    after = before - int(deleted.split()[-1]) + len(succeeded)
    await conn.execute("UPDATE pps_jobs SET current_datums = $2 WHERE id = $1", job_id, after)
    await _record_history(conn, pipeline, job_id, replaced, succeeded)
    if succeeded:
        await conn.execute(
            """
            INSERT INTO pps_current_datums (pipeline, datum_id, hash, output_root, job_id)
            SELECT $1, d, h, r, $5 FROM unnest($2::text[], $3::text[], $4::text[]) AS t(d, h, r)
            """,
            pipeline,
            [s[0] for s in succeeded],
            [s[1] for s in succeeded],
            [s[2] for s in succeeded],
            job_id,
        )
    if new_paths:
        await conn.execute(
            """
            INSERT INTO pps_output_paths (pipeline, path, datum_id)
            SELECT $1, p, d FROM unnest($2::text[], $3::text[]) AS t(p, d)
            """,
            pipeline,
            [p for p, _ in new_paths],
            [d for _, d in new_paths],
        )


async def _record_history(
    conn: Conn,
    pipeline: str,
    job_id: str,
    replaced: Sequence[str],
    succeeded: Sequence[tuple[str, str, str | None]],
) -> None:
    """Keep which datums are current from which job on (``pps_datum_history``): the rows
    replaced end at this job, its succeeded datums start at it."""
    seq = await conn.fetchval("SELECT seq FROM pps_jobs WHERE id = $1", job_id)
    await conn.execute(
        "UPDATE pps_datum_history SET valid_to = $3 "
        "WHERE pipeline = $1 AND datum_id = ANY($2::text[]) AND valid_to IS NULL",
        pipeline,
        list(replaced),
        seq,
    )
    if succeeded:
        await conn.execute(
            """
            INSERT INTO pps_datum_history (pipeline, datum_id, hash, job_id, valid_from)
            SELECT $1, d, h, $4, $5 FROM unnest($2::text[], $3::text[]) AS t(d, h)
            ON CONFLICT DO NOTHING
            """,
            pipeline,
            [s[0] for s in succeeded],
            [s[1] for s in succeeded],
            job_id,
            seq,
        )


# Logs


async def insert_logs(
    conn: Conn, pipeline: str, job_id: str, datum_id: str | None, lines: Sequence[str]
) -> None:
    if not lines:
        return
    await conn.execute(
        """
        INSERT INTO pps_logs (pipeline, job_id, datum_id, message)
        SELECT $1, $2, $3, m FROM unnest($4::text[]) AS t(m)
        """,
        pipeline,
        job_id,
        datum_id,
        list(lines),
    )


async def read_logs(
    conn: Conn,
    pipeline: str,
    job_id: str | None,
    datum_id: str | None,
    after: int,
    limit: int,
) -> list[LogLine]:
    """Log lines of a pipeline's datums after line ``after`` (a datum id prefix is enough)."""
    rows = await conn.fetch(
        """
        SELECT * FROM pps_logs WHERE pipeline = $1 AND ($2::text IS NULL OR job_id = $2)
          AND ($3::text IS NULL OR datum_id LIKE $3 || '%') AND id > $4
        ORDER BY id LIMIT $5
        """,
        pipeline,
        job_id,
        datum_id,
        after,
        limit,
    )
    return [
        LogLine(r["pipeline"], r["job_id"], r["datum_id"], _t(r["ts"]) or "", r["message"], r["id"])
        for r in rows
    ]
