"""Builds the S3 gateway's ``web.Application`` from a ``Config``: the PFS client and the
object store open and close in a cleanup context; no module state."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from services.s3gateway.api import GATEWAY, UPLOADS, dispatch, guard, s3_errors
from services.s3gateway.gateway import Gateway
from services.s3gateway.references import references
from services.s3gateway.uploads import Uploads
from shared.api.pfs_client import PfsClient
from shared.platform.config import CLUSTER_HEADER, Config
from shared.platform.http import CONFIG
from shared.storage.objstore import open_object_store


def build_app(config: Config) -> web.Application:
    app = web.Application(middlewares=[s3_errors, guard(config)])
    app[CONFIG] = config

    async def resources(app: web.Application) -> AsyncIterator[None]:
        async with (
            PfsClient(config.pfs_url, cluster_id=config.cluster_id or None) as pfs,
            open_object_store(config) as store,
        ):
            app[GATEWAY] = Gateway(config, pfs, store)
            app[UPLOADS] = Uploads(store)
            yield

    app.cleanup_ctx.append(resources)
    if config.cluster_id:

        async def stamp(request: web.Request, response: web.StreamResponse) -> None:
            response.headers[CLUSTER_HEADER] = config.cluster_id

        app.on_response_prepare.append(stamp)
    # For PFS's garbage collector (not S3): added first so the catch-all does not take it.
    app.router.add_get("/v1/references", references)
    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app
