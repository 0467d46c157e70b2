"""The embedded cluster (``tusk up/down/status``) with real PostgreSQL, NATS and the PFS service."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from shared.config import load_config
from shared.embedded import ClusterStatus, down, status, up
from shared.embedded.components import pick_port
from tests.fixtures.servers import server_scratch_dir


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def processes_mentioning(home: Path) -> list[int]:
    """Pids whose command line names ``home`` (postgres -D, nats -sd, the supervisor)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(home).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


async def wait_for(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not true after {within} s: {what}")
        await asyncio.sleep(0.05)


async def sql(home: Path, query: str) -> object:
    conn = await asyncpg.connect(load_config(home / "config.toml", environ={}).database_url)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


def by_name(st: ClusterStatus) -> dict[str, tuple[str, int | None, int]]:
    return {c.name: (c.state, c.pid, c.restarts) for c in st.components}


def test_pick_port_avoids_a_busy_default() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        chosen = pick_port(taken, set())
        assert chosen != taken
        assert pick_port(chosen, set()) == chosen
        assert pick_port(chosen, {chosen}) != chosen


@pytest.fixture
def home() -> Iterator[Path]:
    """$TUSK_HOME outside pytest's basetemp, which PostgreSQL's own user could lose access to."""
    scratch = server_scratch_dir("tusk-test-home-")
    yield scratch / "home"
    shutil.rmtree(scratch, ignore_errors=True)


async def test_up_restart_down_and_up_again_keeps_data(home: Path) -> None:
    lines: list[str] = []
    await asyncio.to_thread(up, home, detach=True, echo=lines.append)
    try:
        assert any(line.startswith("pfs") and " up " in line for line in lines), lines
        first = status(home)
        assert first.running and first.phase == "ready"
        assert {n: s for n, (s, _, _) in by_name(first).items()} == {
            "postgres": "up",
            "nats": "up",
            "pfs": "up",
            "pps": "up",
            "scheduler": "up",
        }
        pids = {c.name: c.pid for c in first.components}
        assert all(pid and alive(pid) for pid in pids.values())
        await sql(home, "CREATE TABLE kept AS SELECT 42 AS x")

        again: list[str] = []
        await asyncio.to_thread(up, home, detach=True, echo=again.append)
        assert len(again) == 1 and "already running" in again[0]

        pfs_pid = pids["pfs"]
        assert pfs_pid is not None
        os.kill(pfs_pid, signal.SIGKILL)

        def restarted() -> bool:
            state, pid, restarts = by_name(status(home))["pfs"]
            return state == "up" and pid != pfs_pid and restarts == 1

        await wait_for(restarted, 15, "pfs restarted after SIGKILL")
        supervisor_pid = _supervisor_pid(home)
    finally:
        await asyncio.to_thread(down, home, echo=lines.append)

    after = status(home)
    assert not after.running and all(c.state == "down" for c in after.components)
    assert not alive(supervisor_pid)
    assert not any(alive(pid) for pid in pids.values() if pid)
    assert processes_mentioning(home) == []
    assert (home / "postgres" / "PG_VERSION").exists()

    # Up again: same data directory, same addresses.
    await asyncio.to_thread(up, home, detach=True, echo=lines.append)
    try:
        assert await sql(home, "SELECT x FROM kept") == 42
        second = status(home)
        assert [c.address for c in second.components] == [c.address for c in first.components]
        # A supervisor killed outright takes its children with it (parent-death signal)...
        os.kill(_supervisor_pid(home), signal.SIGKILL)
        children = [c.pid for c in second.components if c.pid]
        await wait_for(lambda: not any(alive(pid) for pid in children), 20, "children exit")
    finally:
        # ...and down still cleans up whatever might be left.
        await asyncio.to_thread(down, home, echo=lines.append)
    assert processes_mentioning(home) == []
    assert not status(home).running


def _supervisor_pid(home: Path) -> int:
    from shared.embedded.layout import Layout, read_state

    state = read_state(Layout(home))
    assert state is not None and state.supervisor_pid
    return state.supervisor_pid
