"""PostgreSQL access: the connection pool, databases, and numbered SQL migrations.

Each service keeps its schema as numbered files ``NNNN_name.sql`` in a migrations
package and calls ``migrate(pool, "<service>", files("services.<name>.migrations"))``
at start. Applied versions are recorded per service in ``schema_migrations``; the
whole run holds a PostgreSQL advisory lock so replicas starting together apply each
file exactly once. asyncpg's errors are translated here into ``shared.platform.errors``:
``acquire(pool)`` gives a connection on which a lost or refused connection (a restarting
server) raises ``Unavailable``, which long-running loops catch and retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass
from importlib.abc import Traversable
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from asyncpg.pool import PoolAcquireContext, PoolConnectionProxy

from shared.platform.config import Config
from shared.platform.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    TuskError,
    Unavailable,
)

log = logging.getLogger(__name__)

# A connection as handlers hold it: a plain one or a pool's proxy (same methods).
Conn: TypeAlias = (
    "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"
)

# What services name in their signatures, so that none imports asyncpg itself.
Pool: TypeAlias = asyncpg.Pool
Row: TypeAlias = asyncpg.Record


@contextlib.contextmanager
def duplicate_is(error: TuskError) -> Generator[None, None, None]:
    """Raise ``error`` (``AlreadyExists``, say) where the block breaks a unique constraint."""
    try:
        yield
    except asyncpg.UniqueViolationError:
        raise error from None


MIGRATION_FILE_RE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")
_DATABASE_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# Arbitrary constant shared by every Tusk process: the key of the migration advisory lock.
MIGRATION_LOCK_KEY = 0x7475_736B_6D69_67  # "tuskmig"

_SCHEMA_MIGRATIONS_DDL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    service    text        NOT NULL,
    version    integer     NOT NULL,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (service, version)
)
"""


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``, fit for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = (parts.username or "") + ":***"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{netloc[-1]}"))


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at database ``name`` (query such as ``?host=`` is kept)."""
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


async def create_pool(
    config: Config, *, min_size: int = 1, max_size: int = 10, connect_timeout: float = 10.0
) -> asyncpg.Pool:
    """Open a pool to ``config.database_url``; raise ``Unavailable`` if it cannot be reached.

    On the pool's connections, PostgreSQL going away later raises ``Unavailable`` too
    (``TuskPool``), so a request meeting a restarting server is answered 503, not 500.
    """
    pool = TuskPool(
        config.database_url,
        min_size=min_size,
        max_size=max_size,
        max_queries=50000,
        max_inactive_connection_lifetime=300.0,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        timeout=connect_timeout,
    )
    try:
        await pool
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise Unavailable(
            f"cannot connect to PostgreSQL at {redact_url(config.database_url)}: {_reason(exc)}"
        ) from exc
    return pool


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


async def ensure_database(admin_url: str, name: str) -> None:
    """Create database ``name`` on the server of ``admin_url`` unless it exists."""
    if not _DATABASE_NAME_RE.match(name):
        raise InvalidArgument(f"invalid database name {name!r}: use a-z, 0-9 and _")
    try:
        conn = await asyncpg.connect(admin_url, timeout=10)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise Unavailable(
            f"cannot connect to PostgreSQL at {redact_url(admin_url)}: {_reason(exc)}"
        ) from exc
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            # A concurrent caller may create it first: that is what we wanted anyway.
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                # The name is checked by the regex above; identifiers cannot be bind parameters.
                await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


@dataclass(frozen=True)
class Migration:
    """One numbered SQL file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(migrations: Traversable | Path) -> list[Migration]:
    """Read the ``NNNN_name.sql`` files of a directory or package, in version order."""
    if not migrations.is_dir():
        raise Internal(f"migrations directory {migrations} does not exist")
    found: dict[int, Migration] = {}
    for entry in migrations.iterdir():
        match = MIGRATION_FILE_RE.match(entry.name)
        if not match:
            continue
        version = int(match.group("version"))
        if version in found:
            raise Internal(f"two migrations with version {version:04d} in {migrations}")
        found[version] = Migration(version, match.group("name"), entry.read_text())
    return [found[v] for v in sorted(found)]


async def migrate(pool: asyncpg.Pool, service: str, migrations: Traversable | Path) -> list[int]:
    """Apply the not-yet-applied migrations of ``service``; return the versions applied.

    Each file runs in its own transaction together with its ``schema_migrations`` row.
    A file already applied with different content is refused: migrations are append-only.
    """
    wanted = load_migrations(migrations)
    applied_now: list[int] = []
    try:
        async with pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
            try:
                await conn.execute(_SCHEMA_MIGRATIONS_DDL)
                rows = await conn.fetch(
                    "SELECT version, checksum FROM schema_migrations WHERE service = $1", service
                )
                done = {row["version"]: row["checksum"] for row in rows}
                for migration in wanted:
                    if migration.version in done:
                        if done[migration.version] != migration.checksum:
                            raise FailedPrecondition(
                                f"migration {service}/{migration.version:04d}_{migration.name}.sql"
                                " changed after it was applied; add a new migration instead"
                            )
                        continue
                    async with conn.transaction():
                        await conn.execute(migration.sql)
                        await conn.execute(
                            "INSERT INTO schema_migrations (service, version, name, checksum)"
                            " VALUES ($1, $2, $3, $4)",
                            service,
                            migration.version,
                            migration.name,
                            migration.checksum,
                        )
                    applied_now.append(migration.version)
                    log.info(
                        "applied migration %s/%04d_%s", service, migration.version, migration.name
                    )
            finally:
                # A dead connection has released its session lock already.
                if not conn.is_closed():
                    with contextlib.suppress(
                        asyncpg.PostgresError, asyncpg.InterfaceError, OSError
                    ):
                        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    except asyncpg.PostgresError as exc:
        raise Internal(f"migrating {service} failed: {_reason(exc)}") from exc
    except (OSError, asyncpg.InterfaceError) as exc:
        raise Unavailable(f"migrating {service}: database connection lost: {_reason(exc)}") from exc
    return applied_now


async def migrate_shared(pool: asyncpg.Pool) -> list[int]:
    """Apply the schema every service shares (the event outbox)."""
    return await migrate(pool, "shared", files("shared.platform.migrations"))


async def close_pool(pool: asyncpg.Pool, timeout: float = 10.0) -> None:
    """Close ``pool``, terminating it if a connection is still held after ``timeout`` s.

    Shutdown must end: a connection stuck in a cancelled query would otherwise keep
    ``Pool.close()`` waiting forever.
    """
    try:
        await asyncio.wait_for(pool.close(), timeout)
    except TimeoutError:
        log.warning("closing the PostgreSQL pool took over %.0f s; terminating it", timeout)
        pool.terminate()


# What a lost, refused or restarting PostgreSQL raises: the socket closing under a query,
# the server shutting down or still recovering, a pool that cannot connect in time.
CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)
# The same, plus what a refused connection (nothing listens yet) or a pool timeout raises.
CONNECT_ERRORS: tuple[type[Exception], ...] = (*CONNECTION_ERRORS, OSError)
# The same, plus using a connection that was already closed.
CLOSED_ERRORS: tuple[type[Exception], ...] = (*CONNECT_ERRORS, asyncpg.InterfaceError)
# The same, plus a protocol left waiting for a message a server that died mid-session never
# sent: the connection is as good as gone (``check_alive``).
BROKEN_ERRORS: tuple[type[Exception], ...] = (
    *CLOSED_ERRORS,
    asyncpg.exceptions.InternalClientError,
)


def unavailable(exc: BaseException) -> Unavailable:
    """The ``Unavailable`` a lost PostgreSQL connection becomes (callers retry it)."""
    return Unavailable(f"PostgreSQL is unreachable: {_reason(exc)}")


@contextlib.asynccontextmanager
async def acquire(pool: asyncpg.Pool) -> AsyncIterator[Conn]:
    """A connection of ``pool`` on which a lost or refused connection raises ``Unavailable``.

    An ``OSError`` inside the block counts as a lost connection only when the connection
    is in fact closed: the block may do other I/O (object store, HTTP) whose errors are
    not the database's.
    """
    try:
        conn = await pool.acquire()
    except CONNECT_ERRORS as exc:
        raise unavailable(exc) from exc
    try:
        yield conn
    except CONNECTION_ERRORS as exc:
        raise unavailable(exc) from exc
    except OSError as exc:
        if not conn.is_closed():
            raise
        raise unavailable(exc) from exc
    finally:
        # Releasing a broken connection may fail; the pool replaces it on the next acquire.
        with contextlib.suppress(*CLOSED_ERRORS):
            await pool.release(conn)


async def check_alive(conn: Conn) -> None:
    """Raise ``Unavailable`` if ``conn`` no longer reaches PostgreSQL (its session, and any
    session-level lock it held, are gone)."""
    try:
        await conn.fetchval("SELECT 1")
    except BROKEN_ERRORS as exc:
        raise unavailable(exc) from exc


async def db_ready(pool: asyncpg.Pool) -> bool:
    """Whether PostgreSQL answers (readiness probes answer "no" rather than raise)."""
    try:
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
        return True
    except Exception:
        return False


# --- pools whose connections speak Tusk's errors ----------------------------------------------


def _lost(exc: BaseException, conn: Conn | None) -> bool:
    """Whether ``exc``, raised while ``conn`` was held, means PostgreSQL went away.

    It does if a connection error is the exception or what led to it (asyncpg may report
    the next query's failure on a dying connection as an internal client error), or if
    an ``OSError`` or ``InterfaceError`` met a connection that is in fact closed: the
    block may do other I/O (object store, HTTP), and misuse is a bug, not an outage.
    """
    if not isinstance(exc, Exception) or isinstance(exc, TuskError):
        return False  # cancellation, or already ours
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, CONNECTION_ERRORS):
            return True
        seen = seen.__cause__ or seen.__context__
    if isinstance(exc, OSError | asyncpg.InterfaceError):
        try:
            return conn is None or conn.is_closed()
        except asyncpg.InterfaceError:  # already released to the pool
            return False
    return False


# asyncpg's classes are generic only in their stubs.
if TYPE_CHECKING:
    _AcquireBase = PoolAcquireContext[asyncpg.Record]
    _PoolBase = asyncpg.Pool[asyncpg.Record]
else:
    _AcquireBase = PoolAcquireContext
    _PoolBase = asyncpg.Pool


class _Acquire(_AcquireBase):
    """``TuskPool.acquire()``: as asyncpg's, with a lost PostgreSQL raising ``Unavailable``."""

    __slots__ = ()

    async def __aenter__(self) -> PoolConnectionProxy[asyncpg.Record]:
        try:
            return await super().__aenter__()
        except CONNECT_ERRORS as exc:
            raise unavailable(exc) from exc

    def __await__(self) -> Generator[Any, None, PoolConnectionProxy[asyncpg.Record]]:
        try:
            return (yield from super().__await__())
        except CONNECT_ERRORS as exc:
            raise unavailable(exc) from exc

    async def __aexit__(self, *exc_info: object) -> None:
        error = exc_info[1] if len(exc_info) > 1 else None
        lost = isinstance(error, BaseException) and _lost(error, self.connection)
        # Releasing a broken connection fails; the pool replaces it on the next acquire, and
        # the block's own outcome (done, or its error) is what the caller must see.
        with contextlib.suppress(*BROKEN_ERRORS):
            await super().__aexit__(*exc_info)
        if lost:
            assert isinstance(error, BaseException)
            raise unavailable(error) from error


class TuskPool(_PoolBase):
    """An asyncpg pool on whose connections a lost, refused or restarting PostgreSQL raises
    ``Unavailable`` (inside ``async with pool.acquire() as conn:`` and on ``pool.fetch…``).

    The one place asyncpg's connection errors become ours: every service's handlers and
    loops meet ``Unavailable`` (HTTP 503) without wrapping each query.
    """

    __slots__ = ()

    def acquire(self, *, timeout: float | None = None) -> _Acquire:
        return _Acquire(self, timeout)
