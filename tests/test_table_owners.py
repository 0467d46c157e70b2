"""Each table has one owner with its own migration history (docs/architecture.md, "Owners").

A database made by the retired shared ``pps`` history migrates to the two owners' histories
cleanly, data kept; a new database gets the same schema in either service's start order.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from services.pps.store import migrate_pps
from services.scheduler.store import migrate_scheduler
from shared.platform.config import Config
from shared.platform.db import Conn, close_pool, create_pool, migrate
from tests.fixtures.cluster import Cluster
from tests.fixtures.servers import DatabaseStock, PgServer
from tests.test_pipelines import WORD_COUNT, files, wait_for_jobs

RETIRED = Path(__file__).parent / "data" / "retired_pps_migrations"
SCHEDULER_TABLES = {
    "pps_jobs",
    "pps_job_datums",
    "pps_current_datums",
    "pps_output_paths",
    "pps_logs",
    "pps_datum_history",
}
PPS_TABLES = {"pps_pipelines", "pps_pipeline_versions", "pps_secrets"}


@pytest.fixture
async def second_database_url(
    pg_server: PgServer, database_stock: DatabaseStock
) -> AsyncIterator[str]:
    """Another fresh, empty database for this test, dropped afterwards."""
    name = await database_stock.take()
    yield pg_server.database_url(name)
    conn = await asyncpg.connect(pg_server.url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def schema(conn: Conn) -> dict[str, list[str]]:
    """Table → its columns, for the pps_ tables."""
    rows = await conn.fetch(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_name LIKE 'pps\\_%' ORDER BY table_name, column_name"
    )
    tables: dict[str, list[str]] = {}
    for row in rows:
        tables.setdefault(row["table_name"], []).append(row["column_name"])
    return tables


async def foreign_keys(conn: Conn) -> set[tuple[str, str]]:
    rows = await conn.fetch(
        "SELECT conrelid::regclass::text AS child, confrelid::regclass::text AS parent "
        "FROM pg_constraint WHERE contype = 'f'"
    )
    return {(r["child"], r["parent"]) for r in rows}


async def histories(conn: Conn) -> set[tuple[str, int]]:
    rows = await conn.fetch("SELECT service, version FROM schema_migrations")
    return {(r["service"], r["version"]) for r in rows}


async def test_a_database_of_the_retired_shared_history_migrates_to_its_owners(
    tusk_config: Config,
) -> None:
    pool = await create_pool(tusk_config)
    try:
        assert await migrate(pool, "pps", RETIRED) == [1, 2]
        async with pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO pps_pipelines (name, version, spec, state) "
                "VALUES ('p', 1, '{}', 'PIPELINE_RUNNING')"
            )
            for seq, (job, state) in enumerate(
                [("j1", "JOB_SUCCESS"), ("j2", "JOB_SUCCESS"), ("j3", "JOB_CREATED")]
            ):
                await conn.execute(
                    "INSERT INTO pps_jobs (id, pipeline, pipeline_version, trigger, state) "
                    "VALUES ($1, 'p', 1, $2, $3)",
                    job,
                    f"t{seq}",
                    state,
                )
            await conn.executemany(
                "INSERT INTO pps_current_datums (pipeline, datum_id, hash, job_id) "
                "VALUES ('p', $1, $2, 'j2')",
                [("d1", "h1"), ("d2", "h2"), ("d3", "restart")],
            )
        # Either owner may start first.
        assert await migrate_scheduler(pool) == [1, 2, 3, 4, 5, 6]
        assert await migrate_pps(pool) == [1]
        async with pool.acquire() as conn:
            tables = await schema(conn)
            assert set(tables) == SCHEDULER_TABLES | PPS_TABLES
            # No foreign key from the scheduler's tables into PPS's.
            crossing = {
                (child, parent)
                for child, parent in await foreign_keys(conn)
                if (child in SCHEDULER_TABLES) != (parent in SCHEDULER_TABLES)
            }
            assert crossing == set()
            rows = await conn.fetch("SELECT id, current_datums FROM pps_jobs")
            counts = {r["id"]: r["current_datums"] for r in rows}
            assert counts == {"j1": None, "j2": 3, "j3": None}
            reruns = await conn.fetchval("SELECT rerun_datums FROM pps_jobs WHERE id = 'j3'")
            assert json.loads(reruns) == ["d3"]
            assert await conn.fetchval("SELECT count(*) FROM pps_current_datums") == 3
            assert {("pps-pipelines", 1), ("scheduler", 1), ("scheduler", 2)} <= await histories(
                conn
            )
        # Running again changes nothing.
        assert await migrate_scheduler(pool) == []
        assert await migrate_pps(pool) == []
    finally:
        await close_pool(pool)


async def test_a_new_database_gets_one_schema_in_either_start_order(
    tusk_config: Config, second_database_url: str
) -> None:
    schemas = []
    for url, order in (
        (tusk_config.database_url, "pps first"),
        (second_database_url, "scheduler first"),
    ):
        pool = await create_pool(tusk_config.replace(database_url=url))
        try:
            steps = [migrate_pps, migrate_scheduler]
            for step in steps if order == "pps first" else reversed(steps):
                await step(pool)
            async with pool.acquire() as conn:
                schemas.append(await schema(conn))
                assert await histories(conn) >= {("pps-pipelines", 1), ("scheduler", 2)}
                assert ("pps", 1) not in await histories(conn)
        finally:
            await close_pool(pool)
    assert schemas[0] == schemas[1]
    assert set(schemas[0]) == SCHEDULER_TABLES | PPS_TABLES


async def current_counts(cluster: Cluster, pipeline: str) -> tuple[int, int]:
    """(the count kept on the last successful job, count(*) of the current datums)."""
    conn = await asyncpg.connect(cluster.config.database_url)
    try:
        kept = await conn.fetchval(
            "SELECT current_datums FROM pps_jobs WHERE pipeline = $1 AND state = 'JOB_SUCCESS' "
            "ORDER BY seq DESC LIMIT 1",
            pipeline,
        )
        counted = await conn.fetchval(
            "SELECT count(*) FROM pps_current_datums WHERE pipeline = $1", pipeline
        )
        return kept, counted
    finally:
        await conn.close()


async def test_the_kept_datum_count_follows_jobs_and_a_deleted_pipeline_leaves_no_job_rows(
    cluster: Cluster,
) -> None:
    await cluster.pfs.create_repo("words")
    await cluster.pfs.put_files("words", "master", files({"/a": b"one", "/b": b"two three"}))
    await cluster.pps.create_pipeline(WORD_COUNT)
    await wait_for_jobs(cluster, "count", 1)
    assert await current_counts(cluster, "count") == (2, 2)
    await cluster.pfs.put_files("words", "master", files({"/c": b"four"}))
    await wait_for_jobs(cluster, "count", 2)
    assert await current_counts(cluster, "count") == (3, 3)
    await cluster.pfs.delete_file("words", "master", "/a")
    await wait_for_jobs(cluster, "count", 3)
    assert await current_counts(cluster, "count") == (2, 2)

    # No foreign key ties the scheduler's rows to the pipeline: deleting it removes them.
    await cluster.pps.delete_pipeline("count")
    conn = await asyncpg.connect(cluster.config.database_url)
    try:
        for table in sorted(SCHEDULER_TABLES - {"pps_job_datums"}):
            left = await conn.fetchval(f"SELECT count(*) FROM {table} WHERE pipeline = 'count'")
            assert left == 0, table
        assert await conn.fetchval("SELECT count(*) FROM pps_job_datums") == 0
    finally:
        await conn.close()
