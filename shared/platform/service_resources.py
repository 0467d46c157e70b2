"""What every Tusk service opens at start: PostgreSQL (migrated), NATS, and the outbox relay."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

import asyncpg

from shared.platform import bus as bus_module
from shared.platform.bus import Bus
from shared.platform.config import Config
from shared.platform.db import close_pool, create_pool, migrate_shared
from shared.platform.outbox import OutboxRelay

Migration = Callable[[asyncpg.Pool], Awaitable[object]]


@asynccontextmanager
async def core_resources(
    config: Config, *, name: str, migrations: Sequence[Migration] = ()
) -> AsyncIterator[tuple[asyncpg.Pool, Bus]]:
    """The pool (shared schema and ``migrations`` applied), the bus (streams ensured) and a
    running outbox relay; all closed in reverse order on exit."""
    pool = await create_pool(config)
    try:
        await migrate_shared(pool)
        for migration in migrations:
            await migration(pool)
        bus = await bus_module.connect(config, name=name)
        try:
            await bus.ensure_streams()
            async with OutboxRelay(pool, bus):
                yield pool, bus
        finally:
            await bus.close()
    finally:
        await close_pool(pool)
