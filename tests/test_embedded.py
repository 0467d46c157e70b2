"""The embedded cluster (``tusk up/down/status``) with real PostgreSQL, NATS and the PFS service."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest

from shared.platform.config import CLUSTER_HEADER, load_config
from shared.platform.errors import FailedPrecondition, InvalidArgument
from tests.fixtures.servers import free_port, server_scratch_dir
from tusk.contexts import LOCAL, Context, load_contexts
from tusk.embedded import ClusterStatus, down, status, up
from tusk.embedded.components import SERVICES, component_ports, pick_port
from tusk.embedded.ports import parse_port_request, plan_ports

PFS_ONLY = [s for s in SERVICES if s.name == "pfs"]


async def tusk_in(home: Path, *args: str) -> tuple[int, str]:
    """Run the ``tusk`` console script with ``TUSK_HOME=home``: (exit code, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSK_")}
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "tusk"),
        *args,
        env={**env, "TUSK_HOME": str(home)},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, err.decode()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def processes_mentioning(home: Path) -> list[int]:
    """Pids whose command line names ``home`` (nats -sd, the supervisor) or that run in it
    (PostgreSQL, whose data directory is its working directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(home).encode() in (entry / "cmdline").read_bytes() or Path(
                    os.readlink(entry / "cwd")
                ).is_relative_to(home):
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


def test_ports_asked_for_win_any_ports_avoid_the_defaults_and_last_ports_are_kept() -> None:
    defaults = {"postgres": 7640, "nats": 7642, "pfs": 7651}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        asked, last = free_port(), free_port()
        plan = plan_ports(defaults, {"pfs": asked}, {"nats": last}, any_ports=True)
        assert plan["pfs"] == asked and plan["nats"] == last
        assert plan["postgres"] not in defaults.values() and len(set(plan.values())) == 3
        # A last port that is a default is not kept by --any-ports (it is left free).
        assert plan_ports(defaults, {}, {"nats": 7642}, any_ports=True)["nats"] != 7642
        # 0 asks for any free port for one component only.
        plan = plan_ports(defaults, {"postgres": 0}, {"pfs": last})
        assert plan["postgres"] not in defaults.values() and plan["pfs"] == last
        with pytest.raises(FailedPrecondition, match=f"port {taken} asked for pfs .* in use"):
            plan_ports(defaults, {"pfs": taken}, {})
    with pytest.raises(InvalidArgument, match="no component 'pgs'"):
        plan_ports(defaults, {"pgs": 7000}, {})
    with pytest.raises(InvalidArgument, match="one port for two components"):
        plan_ports(defaults, {"pfs": asked, "nats": asked}, {})
    with pytest.raises(InvalidArgument, match="NAME=PORT"):
        parse_port_request("pfs:7651")


async def test_tusk_up_refuses_a_busy_port_and_an_unknown_component_in_one_line(
    tmp_path: Path,
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        code, err = await tusk_in(tmp_path / "home", "up", "--detach", "--port", f"pfs={taken}")
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith(f"error: port {taken} asked for pfs (--port pfs={taken}) is in use")
    code, err = await tusk_in(tmp_path / "home", "up", "--port", "pgs=0")
    assert code == 1 and "no component 'pgs' (known: postgres, nats, pfs" in err, err
    code, err = await tusk_in(tmp_path / "home", "up", "--port", "pfs")
    assert code == 2 and "NAME=PORT" in err and "Traceback" not in err, err
    assert not (tmp_path / "home" / "run" / "state.json").exists()  # nothing started


@pytest.fixture
def home() -> Iterator[Path]:
    """$TUSK_HOME outside pytest's basetemp, which PostgreSQL's own user could lose access to."""
    scratch = server_scratch_dir("tusk-test-home-")
    yield scratch / "home"
    shutil.rmtree(scratch, ignore_errors=True)


async def test_up_restart_down_and_up_again_keeps_data(home: Path) -> None:
    lines: list[str] = []
    await asyncio.to_thread(up, home, detach=True, echo=lines.append, any_ports=True)
    try:
        assert any(line.startswith("pfs") and " up " in line for line in lines), lines
        # `tusk up` prints where the web console serves (docs/console.md).
        assert any(line.startswith("console") and " up " in line for line in lines), lines
        first = status(home)
        assert first.running and first.phase == "ready"
        assert {n: s for n, (s, _, _) in by_name(first).items()} == {
            "postgres": "up",
            "nats": "up",
            "pfs": "up",
            "pps": "up",
            "scheduler": "up",
            "s3gateway": "up",
            "console": "up",
        }
        pids = {c.name: c.pid for c in first.components}
        assert all(pid and alive(pid) for pid in pids.values())
        await sql(home, "CREATE TABLE kept AS SELECT 42 AS x")

        again: list[str] = []
        await asyncio.to_thread(up, home, detach=True, echo=again.append, any_ports=True)
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
    await asyncio.to_thread(up, home, detach=True, echo=lines.append, any_ports=True)
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
    from tusk.embedded.layout import Layout, read_state

    state = read_state(Layout(home))
    assert state is not None and state.supervisor_pid
    return state.supervisor_pid


def modes_under(root: Path) -> dict[str, int]:
    """Permission bits of ``root`` and everything under it, by path relative to ``root``."""
    modes = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        with contextlib.suppress(FileNotFoundError):  # a file replaced meanwhile
            modes[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return modes


async def test_up_keeps_home_private_and_postgres_behind_a_password(tmp_path: Path) -> None:
    # $TUSK_HOME inside directories other users may not enter (as /root is).
    scratch = server_scratch_dir("tusk-test-private-")
    closed = scratch / "closed"
    closed.mkdir(mode=0o700)
    home = closed / "inner" / "home"
    ancestors = [scratch, closed]
    before = {p: stat.S_IMODE(p.stat().st_mode) for p in ancestors}
    lines: list[str] = []
    pfs_port = free_port()
    try:
        await asyncio.to_thread(
            up, home, detach=True, echo=lines.append, ports={"pfs": pfs_port}, any_ports=True
        )
        try:
            assert status(home).phase == "ready", lines
            config = load_config(home / "config.toml", environ={})
            # `--port pfs=N` is honoured; `--any-ports` kept every other port off the defaults.
            assert config.pfs_url == f"http://127.0.0.1:{pfs_port}"
            others = {c.name: c.address for c in status(home).components if c.name != "pfs"}
            defaults = set(component_ports().values())
            assert (
                not {
                    int(str(address).rsplit(":", 1)[1].split("/")[0]) for address in others.values()
                }
                & defaults
            ), others
            password = (home / "secrets" / "postgres-password").read_text().strip()
            assert len(password) >= 32 and password in config.database_url
            port = urlsplit(config.database_url).port
            # Without the password, or with another, PostgreSQL says no; with it, yes.
            for url in (
                f"postgresql://postgres@127.0.0.1:{port}/tusk",
                f"postgresql://postgres:guess@127.0.0.1:{port}/tusk",
            ):
                with pytest.raises(asyncpg.InvalidPasswordError):
                    await asyncpg.connect(url)
            assert await sql(home, "SELECT current_user") == "postgres"
            # The cluster's services report its id, which config.toml gives the CLI.
            cluster_id = (home / "cluster-id").read_text().strip()
            assert config.cluster_id == cluster_id
            # tusk up names this cluster as the active ``local`` context.
            known = load_contexts(home)
            assert known.active == LOCAL
            assert known.contexts[LOCAL] == Context(
                LOCAL, config.pfs_url, config.pps_url, cluster_id
            )
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"{config.pfs_url}/healthz") as resp,
            ):
                assert resp.headers[CLUSTER_HEADER] == cluster_id
            modes = modes_under(home)
        finally:
            await asyncio.to_thread(down, home, echo=lines.append)
        # Nothing outside $TUSK_HOME was opened up; inside, only the owner may look.
        assert {p: stat.S_IMODE(p.stat().st_mode) for p in ancestors} == before
        loose = {path: oct(mode) for path, mode in modes.items() if mode & 0o077}
        assert loose == {}
        assert modes["."] == 0o700
        assert processes_mentioning(home) == []
        # The password is not written to the logs (single-user mode read it on stdin).
        for log in (home / "logs").iterdir():
            assert password not in log.read_text(errors="replace"), log
    finally:
        await asyncio.to_thread(down, home, echo=lines.append)
        shutil.rmtree(scratch, ignore_errors=True)


async def test_a_cli_whose_cluster_stopped_refuses_the_cluster_on_its_ports(
    tmp_path: Path,
) -> None:
    """Cluster A is down; cluster B took A's PFS port. A's CLI must not talk to B."""
    scratch = server_scratch_dir("tusk-test-two-clusters-")
    home_a, home_b = scratch / "a", scratch / "b"
    lines: list[str] = []
    try:
        await asyncio.to_thread(
            up, home_a, detach=True, echo=lines.append, services=PFS_ONLY, any_ports=True
        )
        pfs_a = load_config(home_a / "config.toml", environ={}).pfs_url
        await asyncio.to_thread(down, home_a, echo=lines.append)
        # B starts while A's ports are free again and takes them (as it would the defaults;
        # here B is told A's last ports, which other clusters on this machine leave free).
        (home_b / "run").mkdir(parents=True)
        shutil.copy(home_a / "run" / "state.json", home_b / "run" / "state.json")
        await asyncio.to_thread(
            up, home_b, detach=True, echo=lines.append, services=PFS_ONLY, any_ports=True
        )
        try:
            assert load_config(home_b / "config.toml", environ={}).pfs_url == pfs_a
            code, err = await tusk_in(home_a, "list", "repo")
            where = pfs_a.removeprefix("http://")
            assert code == 1
            [line] = err.splitlines()
            assert line.startswith("error: ")
            assert line.endswith(
                f"the service at {where} belongs to another Tusk cluster; run `tusk up`"
            )
            # B's own CLI is served.
            code, err = await tusk_in(home_b, "list", "repo")
            assert code == 0, err
        finally:
            await asyncio.to_thread(down, home_b, echo=lines.append)
    finally:
        await asyncio.to_thread(down, home_a, echo=lines.append)
        shutil.rmtree(scratch, ignore_errors=True)
