"""The Postgres pool, databases and numbered migrations, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from shared.platform.config import Config
from shared.platform.db import create_pool, ensure_database, migrate, migrate_shared, redact_url
from shared.platform.errors import FailedPrecondition, Internal, Unavailable
from tests.fixtures.servers import PgServer, free_port


def write(directory: Path, name: str, sql: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(sql)


async def test_create_pool_to_unreachable_server_is_unavailable_without_password() -> None:
    url = f"postgresql://tusk:s3cret@127.0.0.1:{free_port()}/tusk"
    with pytest.raises(Unavailable) as caught:
        await create_pool(Config(database_url=url), connect_timeout=2)
    assert "127.0.0.1" in caught.value.message
    assert "s3cret" not in caught.value.message


def test_redact_url_hides_only_the_password() -> None:
    assert redact_url("postgresql://u:pw@h:5/db") == "postgresql://u:***@h:5/db"
    assert redact_url("postgresql://u@h/db") == "postgresql://u@h/db"


async def test_ensure_database_is_idempotent(pg_server: PgServer) -> None:
    await ensure_database(pg_server.url, "t_ensure_twice")
    await ensure_database(pg_server.url, "t_ensure_twice")
    conn = await asyncpg.connect(pg_server.database_url("t_ensure_twice"))
    try:
        assert await conn.fetchval("SELECT current_database()") == "t_ensure_twice"
    finally:
        await conn.close()
        admin = await asyncpg.connect(pg_server.url)
        await admin.execute('DROP DATABASE "t_ensure_twice" WITH (FORCE)')
        await admin.close()


async def test_migrate_applies_new_files_in_order_once(database_url: str, tmp_path: Path) -> None:
    write(tmp_path, "0001_create.sql", "CREATE TABLE t (x int);")
    write(tmp_path, "0002_fill.sql", "INSERT INTO t VALUES (1);")
    write(tmp_path, "README.txt", "not a migration")
    pool = await create_pool(Config(database_url=database_url))
    try:
        assert await migrate(pool, "svc", tmp_path) == [1, 2]
        assert await migrate(pool, "svc", tmp_path) == []
        write(tmp_path, "0003_more.sql", "INSERT INTO t VALUES (3);")
        assert await migrate(pool, "svc", tmp_path) == [3]
        assert [r["x"] for r in await pool.fetch("SELECT x FROM t ORDER BY x")] == [1, 3]
        # Versions are per service: another service's 0001 is independent.
        write(tmp_path / "other", "0001_create.sql", "CREATE TABLE u (y int);")
        assert await migrate(pool, "other", tmp_path / "other") == [1]
        with pytest.raises(Internal, match="does not exist"):
            await migrate(pool, "svc", tmp_path / "missing")
    finally:
        await pool.close()


async def test_failed_migration_rolls_back_and_is_retried(
    database_url: str, tmp_path: Path
) -> None:
    write(tmp_path, "0001_broken.sql", "CREATE TABLE a (x int); SELECT no_such_function();")
    pool = await create_pool(Config(database_url=database_url))
    try:
        with pytest.raises(Internal):
            await migrate(pool, "svc", tmp_path)
        assert await pool.fetchval("SELECT to_regclass('a')") is None
        write(tmp_path, "0001_broken.sql", "CREATE TABLE a (x int);")
        assert await migrate(pool, "svc", tmp_path) == [1]
    finally:
        await pool.close()


async def test_edited_applied_migration_is_refused(database_url: str, tmp_path: Path) -> None:
    write(tmp_path, "0001_create.sql", "CREATE TABLE t (x int);")
    pool = await create_pool(Config(database_url=database_url))
    try:
        await migrate(pool, "svc", tmp_path)
        write(tmp_path, "0001_create.sql", "CREATE TABLE t (x bigint);")
        with pytest.raises(FailedPrecondition, match="0001_create"):
            await migrate(pool, "svc", tmp_path)
    finally:
        await pool.close()


async def test_concurrent_migrations_apply_each_file_once(
    database_url: str, tmp_path: Path
) -> None:
    # Without the advisory lock, both would run 0001 and one would fail on "t already exists".
    write(tmp_path, "0001_create.sql", "CREATE TABLE t (x int); SELECT pg_sleep(0.2);")
    write(tmp_path, "0002_fill.sql", "INSERT INTO t VALUES (1);")
    pools = [await create_pool(Config(database_url=database_url)) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(p, "svc", tmp_path) for p in pools))
        assert sorted(results) == [[], [], [1, 2]]
        assert await pools[0].fetchval("SELECT count(*) FROM t") == 1
    finally:
        for p in pools:
            await p.close()


async def test_migrate_shared_creates_the_outbox(database_url: str) -> None:
    pool = await create_pool(Config(database_url=database_url))
    try:
        assert await migrate_shared(pool) == [1]
        assert await pool.fetchval("SELECT to_regclass('outbox')") == "outbox"
    finally:
        await pool.close()
