"""Builds the PPS ``web.Application`` from a ``Config``."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from services.pps.api import SERVICE, routes
from services.pps.service import PpsService
from shared import bus as bus_module
from shared.config import Config
from shared.db import close_pool, create_pool, migrate_shared
from shared.http import add_health_routes, error_middleware
from shared.outbox import OutboxRelay
from shared.pfs_client import PfsClient
from shared.pps.store import migrate_pps

VERSION = "0.1.0"


def build_app(config: Config) -> web.Application:
    app = web.Application(middlewares=[error_middleware])
    app.add_routes(routes)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        pool = await create_pool(config)
        try:
            await migrate_shared(pool)
            await migrate_pps(pool)
            bus = await bus_module.connect(config, name="tusk-pps")
            try:
                await bus.ensure_streams()
                async with PfsClient(config.pfs_url) as pfs, OutboxRelay(pool, bus):
                    app[SERVICE] = PpsService(config, pool, pfs)
                    yield
            finally:
                await bus.close()
        finally:
            await close_pool(pool)

    app.cleanup_ctx.append(resources)

    async def ready() -> bool:
        return SERVICE in app and await app[SERVICE].ready()

    add_health_routes(app, ready, "Tusk PPS", VERSION)
    return app
