"""Builds the scheduler's ``web.Application``: the engine runs inside its cleanup context;
the job, datum and log endpoints PPS asks are ``services.scheduler.api``'s."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from services.scheduler.api import ENGINE
from services.scheduler.api import routes as job_routes
from services.scheduler.backends import WorkerBackend
from services.scheduler.engine import Engine
from services.scheduler.references import references_page
from services.scheduler.store import migrate_scheduler
from shared.api.pfs_client import PfsClient
from shared.api.pps_client import PpsClient
from shared.platform.config import Config, tusk_home
from shared.platform.db import db_ready
from shared.platform.errors import InvalidArgument
from shared.platform.http import (
    STRING,
    Query,
    add_health_routes,
    endpoint,
    integer,
    query_int,
    service_application,
)
from shared.platform.service_main import FAILURE, Failure
from shared.platform.service_resources import core_resources
from shared.storage.objstore import open_object_store

log = logging.getLogger("tusk.scheduler")
VERSION = "0.1.0"
ENGINE_TASK: web.AppKey[asyncio.Task[None]] = web.AppKey("engine_task", asyncio.Task)
routes = web.RouteTableDef()


@routes.get("/v1/status")
async def scheduler_status(request: web.Request) -> web.Response:
    """Whether this scheduler leads, the workers of each pipeline, and how often specs
    were parsed (each version once while it stays cached)."""
    return web.json_response(request.app[ENGINE].status())


@routes.get("/v1/references")
@endpoint(
    query=[
        Query("after", STRING, "the cursor a previous page returned"),
        Query("limit", integer(1, 10000)),
    ]
)
async def scheduler_references(request: web.Request) -> web.Response:
    """Datum output trees the garbage collector must keep (?after=&limit=), paged."""
    limit = query_int(request, "limit", 1000, low=1, high=10000)
    page = await references_page(request.app[ENGINE].pool, request.query.get("after", ""), limit)
    return web.json_response(page)


def make_backend(config: Config) -> WorkerBackend:
    """The worker backend the config names."""
    if config.worker_backend == "local":
        from services.scheduler.backends.image_provider import image_settings
        from services.scheduler.backends.local import LocalBackend

        config_path = os.environ.get("TUSK_CONFIG")
        return LocalBackend(
            Path(config_path) if config_path else None,
            tusk_home() / "logs",
            env={k: v for k, v in os.environ.items() if k.startswith("TUSK_")},
            images=image_settings(config),
        )
    if config.worker_backend == "kubernetes":
        from services.scheduler.backends.kubernetes import KubernetesBackend

        return KubernetesBackend.from_env()
    raise InvalidArgument(
        f"worker_backend {config.worker_backend!r} is not known: use 'local' or 'kubernetes'"
    )


def _engine_ended(failure: Failure, task: asyncio.Task[None]) -> None:
    """The engine runs until shutdown; if it ends before, the process must not live on
    answering HTTP while no job runs: it stops, exiting non-zero (``serve``)."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("the scheduler engine died", exc_info=exc)
    failure.fail(f"the scheduler engine stopped: {exc!r}")


def build_app(config: Config, backend: WorkerBackend | None = None) -> web.Application:
    app = service_application(config)
    app.add_routes(routes)
    app.add_routes(job_routes)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        workers = backend or make_backend(config)
        try:
            async with (
                core_resources(config, name="tusk-scheduler", migrations=[migrate_scheduler]) as (
                    pool,
                    bus,
                ),
                PfsClient(config.pfs_url, cluster_id=config.cluster_id) as pfs,
                PpsClient(config.pps_url, cluster_id=config.cluster_id) as pps,
                open_object_store(config) as objects,
            ):
                engine = Engine(config, pool, bus, pfs, pps, objects, workers)
                app[ENGINE] = engine
                task = asyncio.create_task(engine.run(), name="scheduler-engine")
                task.add_done_callback(lambda done: _engine_ended(app[FAILURE], done))
                app[ENGINE_TASK] = task
                try:
                    yield
                finally:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        finally:
            await workers.close()

    app.cleanup_ctx.append(resources)
    app[FAILURE] = Failure()

    async def ready() -> bool:
        # Not ready once the engine stopped (it only stops on shutdown or a fatal error), nor
        # while PostgreSQL or NATS is away (the engine waits for them then).
        if ENGINE not in app or ENGINE_TASK not in app or app[ENGINE_TASK].done():
            return False
        return app[ENGINE].bus.connected and await db_ready(app[ENGINE].pool)

    add_health_routes(app, ready, "Tusk scheduler", VERSION)
    return app
