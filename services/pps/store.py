"""PPS's records in PostgreSQL: pipelines, their spec versions (and, in secrets.py, secrets).

PPS owns these tables and nothing else: the scheduler learns pipelines over PPS's HTTP
API, and PPS asks the scheduler about jobs (docs/architecture.md, "Owners"). Functions
take a connection so callers own their transactions.
"""

from __future__ import annotations

import json
from datetime import datetime
from importlib.resources import files
from typing import Any

from shared.api.pps_models import (
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
    )


_PIPELINE_SELECT = "SELECT p.* FROM pps_pipelines p"


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
    """Delete a pipeline with its spec versions (the scheduler forgets its jobs when told)."""
    await conn.execute("DELETE FROM pps_pipelines WHERE name = $1", name)
