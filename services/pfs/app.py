"""Builds the PFS ``web.Application`` from a ``Config``: resources open and close in cleanup contexts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from importlib.resources import files

from aiohttp import web

from services.pfs.api import BUS, COLLECTOR, SERVICE, STOPPING, routes
from services.pfs.collector import Collector
from services.pfs.committed import CommittedFiles
from services.pfs.service import PfsService
from services.pfs.store_guard import GuardedStore
from shared.platform.config import Config
from shared.platform.db import Pool, migrate
from shared.platform.http import add_health_routes, service_application
from shared.platform.service_resources import core_resources
from shared.storage.file_index import FileIndex
from shared.storage.objstore import open_object_store

log = logging.getLogger("tusk.pfs")
VERSION = "0.1.0"


status_routes = web.RouteTableDef()


@status_routes.get("/v1/status")
async def pfs_status(request: web.Request) -> web.Response:
    """Work counters: the file index's node reads, writes and visits, its cache's fill."""
    return web.json_response({"file_index": request.app[SERVICE].files.index.counters()})


async def migrate_pfs(pool: Pool) -> list[int]:
    return await migrate(pool, "pfs", files("services.pfs.migrations"))


def build_app(config: Config) -> web.Application:
    app = service_application(config)
    app.add_routes(routes)
    app.add_routes(status_routes)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        async with (
            core_resources(config, name="tusk-pfs", migrations=[migrate_pfs]) as (pool, bus),
            open_object_store(config) as store,
        ):
            # Every write goes through the guard, so a collection never deletes what a
            # write in flight is about to reference (services/pfs/store_guard.py).
            guarded = GuardedStore(store)
            index = FileIndex(guarded, on_reuse=guarded.touch_reused)
            service = PfsService(config, pool, guarded, CommittedFiles(index))
            # A key being deleted must not be taken as stored because a cache holds it.
            guarded.on_doom(index.forget)
            guarded.on_doom(service.chunk_cache.forget)
            await service.recover_finishing()
            app[SERVICE] = service
            app[BUS] = bus
            collector = Collector(config, pool, guarded, service.files.index)
            app[COLLECTOR] = collector
            tasks = [asyncio.create_task(service.run_cron_triggers(), name="pfs-cron-triggers")]
            if config.gc_interval_s > 0:
                tasks.append(
                    asyncio.create_task(collector.run_every(config.gc_interval_s), name="pfs-gc")
                )
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    app.cleanup_ctx.append(resources)
    app[STOPPING] = asyncio.Event()

    async def stopping(app: web.Application) -> None:
        app[STOPPING].set()

    app.on_shutdown.append(stopping)

    async def ready() -> bool:
        return SERVICE in app and app[BUS].connected and await app[SERVICE].ready()

    add_health_routes(app, ready, "Tusk PFS", VERSION)
    return app
