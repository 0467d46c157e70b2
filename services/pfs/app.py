"""Builds the PFS ``web.Application`` from a ``Config``: resources open and close in cleanup contexts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from importlib.resources import files

from aiohttp import web

from services.pfs.api import BUS, SERVICE, STOPPING, routes
from services.pfs.committed import CommittedFiles
from services.pfs.service import PfsService
from shared.platform.config import Config
from shared.platform.db import Pool, migrate
from shared.platform.http import add_health_routes, service_application
from shared.platform.service_resources import core_resources
from shared.storage.file_index import FileIndex
from shared.storage.objstore import open_object_store

log = logging.getLogger("tusk.pfs")
VERSION = "0.1.0"


async def migrate_pfs(pool: Pool) -> list[int]:
    return await migrate(pool, "pfs", files("services.pfs.migrations"))


def build_app(config: Config) -> web.Application:
    app = service_application(config)
    app.add_routes(routes)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        async with (
            core_resources(config, name="tusk-pfs", migrations=[migrate_pfs]) as (pool, bus),
            open_object_store(config) as store,
        ):
            service = PfsService(config, pool, store, CommittedFiles(FileIndex(store)))
            await service.recover_finishing()
            app[SERVICE] = service
            app[BUS] = bus
            crons = asyncio.create_task(service.run_cron_triggers(), name="pfs-cron-triggers")
            try:
                yield
            finally:
                crons.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await crons

    app.cleanup_ctx.append(resources)
    app[STOPPING] = asyncio.Event()

    async def stopping(app: web.Application) -> None:
        app[STOPPING].set()

    app.on_shutdown.append(stopping)

    async def ready() -> bool:
        return SERVICE in app and app[BUS].connected and await app[SERVICE].ready()

    add_health_routes(app, ready, "Tusk PFS", VERSION)
    return app
