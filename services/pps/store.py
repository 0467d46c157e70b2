"""PPS's records in PostgreSQL: pipelines, their spec versions (and, in secrets.py, secrets).

PPS owns these tables; the scheduler reads pipelines and their specs. Functions take a
connection so callers own their transactions. The last section holds what PPS still
reads and writes of the scheduler's tables; docs/architecture.md ("Crossings left")
says how each goes away.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from importlib.resources import files
from typing import Any

from shared.api.pps_models import (
    JOB_CREATED,
    DatumInfo,
    InputCommit,
    JobInfo,
    LogLine,
    PipelineInfo,
)
from shared.platform.db import Conn, Pool, Row, duplicate_is, migrate
from shared.platform.errors import AlreadyExists, NotFound


async def migrate_pps(pool: Pool) -> list[int]:
    """Apply PPS's schema (its own history, apart from the scheduler's)."""
    return await migrate(pool, "pps-pipelines", files("services.pps.migrations"))


def _t(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


# Pipelines


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
    FROM pps_pipelines p
"""


async def insert_pipeline(conn: Conn, name: str, spec: dict[str, Any], state: str) -> PipelineInfo:
    with duplicate_is(
        AlreadyExists(f"pipeline {name} already exists (tusk update pipeline changes it)")
    ):
        await conn.execute(
            "INSERT INTO pps_pipelines (name, version, spec, state) VALUES ($1, 1, $2::jsonb, $3)",
            name,
            json.dumps(spec),
            state,
        )
    await conn.execute(
        "INSERT INTO pps_pipeline_versions (name, version, spec) VALUES ($1, 1, $2::jsonb)",
        name,
        json.dumps(spec),
    )
    return await get_pipeline(conn, name)


async def update_pipeline_spec(conn: Conn, name: str, spec: dict[str, Any]) -> PipelineInfo:
    version = await conn.fetchval(
        "UPDATE pps_pipelines SET version = version + 1, spec = $2::jsonb, updated = now() "
        "WHERE name = $1 RETURNING version",
        name,
        json.dumps(spec),
    )
    if version is None:
        raise NotFound(f"pipeline {name} not found")
    await conn.execute(
        "INSERT INTO pps_pipeline_versions (name, version, spec) VALUES ($1, $2, $3::jsonb)",
        name,
        version,
        json.dumps(spec),
    )
    return await get_pipeline(conn, name)


async def get_pipeline(conn: Conn, name: str, *, lock: bool = False) -> PipelineInfo:
    if lock:
        await conn.execute("SELECT 1 FROM pps_pipelines WHERE name = $1 FOR UPDATE", name)
    rec = await conn.fetchrow(_PIPELINE_SELECT + " WHERE p.name = $1", name)
    if rec is None:
        raise NotFound(f"pipeline {name} not found (tusk list pipeline shows them)")
    return _pipeline(rec)


async def list_pipelines(conn: Conn) -> list[PipelineInfo]:
    return [
        _pipeline(r) for r in await conn.fetch(_PIPELINE_SELECT + " ORDER BY p.created, p.name")
    ]


async def pipeline_versions(conn: Conn, name: str) -> list[tuple[int, dict[str, Any], str]]:
    rows = await conn.fetch(
        "SELECT version, spec, created FROM pps_pipeline_versions WHERE name = $1 ORDER BY version",
        name,
    )
    return [(r["version"], _json(r["spec"]), _t(r["created"]) or "") for r in rows]


async def set_pipeline_state(conn: Conn, name: str, state: str, reason: str | None = None) -> None:
    done = await conn.execute(
        "UPDATE pps_pipelines SET state = $2, reason = $3, updated = now() WHERE name = $1",
        name,
        state,
        reason,
    )
    if done.endswith(" 0"):
        raise NotFound(f"pipeline {name} not found")


async def delete_pipeline(conn: Conn, name: str) -> None:
    """Delete a pipeline and, until the scheduler forgets it on its own, its jobs' rows
    (no foreign key crosses the owners' boundary)."""
    await conn.execute("DELETE FROM pps_logs WHERE pipeline = $1", name)
    await conn.execute("DELETE FROM pps_output_paths WHERE pipeline = $1", name)
    await conn.execute("DELETE FROM pps_current_datums WHERE pipeline = $1", name)
    await conn.execute("DELETE FROM pps_jobs WHERE pipeline = $1", name)
    await conn.execute("DELETE FROM pps_pipelines WHERE name = $1", name)


# The scheduler's tables: what PPS still reads (job, datum and log listings) and the jobs
# it records when a pipeline is created, updated, started or a datum restarted.


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
    """A new JOB_CREATED job, or None if this trigger already made one (redelivered events)."""
    rec = await conn.fetchrow(
        """
        INSERT INTO pps_jobs (id, pipeline, pipeline_version, trigger, state, input_commits, reprocess,
                              rerun_datums)
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


def _datum(rec: Row) -> DatumInfo:
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


async def list_job_datums(conn: Conn, job_id: str, limit: int = 100000) -> list[DatumInfo]:
    rows = await conn.fetch(
        "SELECT * FROM pps_job_datums WHERE job_id = $1 ORDER BY datum_id LIMIT $2", job_id, limit
    )
    return [_datum(r) for r in rows]


async def get_job_datum(conn: Conn, job_id: str, datum_id: str) -> DatumInfo:
    rec = await conn.fetchrow(
        "SELECT * FROM pps_job_datums WHERE job_id = $1 AND (datum_id = $2 OR datum_id LIKE $2 || '%') "
        "ORDER BY datum_id LIMIT 1",
        job_id,
        datum_id,
    )
    if rec is None:
        raise NotFound(f"datum {datum_id} not found in job {job_id}")
    return _datum(rec)


async def read_logs(
    conn: Conn,
    pipeline: str,
    job_id: str | None,
    datum_id: str | None,
    after: int,
    limit: int,
) -> list[LogLine]:
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
