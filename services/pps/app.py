"""Builds the PPS ``web.Application`` from a ``Config``."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from services.pps.api import BUS, SERVICE, routes
from services.pps.service import PpsService
from services.pps.store import migrate_pps
from shared.api.pfs_client import PfsClient
from shared.api.scheduler_client import SchedulerClient
from shared.platform.config import Config
from shared.platform.http import add_health_routes, service_application
from shared.platform.service_resources import core_resources

VERSION = "0.1.0"


def build_app(config: Config) -> web.Application:
    app = service_application(config)
    app.add_routes(routes)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        async with (
            core_resources(config, name="tusk-pps", migrations=[migrate_pps]) as (pool, bus),
            PfsClient(config.pfs_url, cluster_id=config.cluster_id) as pfs,
            SchedulerClient(config.scheduler_url, cluster_id=config.cluster_id) as scheduler,
        ):
            app[SERVICE] = PpsService(config, pool, pfs, scheduler)
            app[BUS] = bus
            yield

    app.cleanup_ctx.append(resources)

    async def ready() -> bool:
        # Not ready while NATS is away either: pipeline events wait in the outbox then.
        return SERVICE in app and BUS in app and app[BUS].connected and await app[SERVICE].ready()

    add_health_routes(app, ready, "Tusk PPS", VERSION)
    return app
