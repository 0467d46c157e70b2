"""Builds the console's ``web.Application``: PFS and PPS clients and the NATS follower open
and close in a cleanup context; errors become HTML pages (404 for an unknown name)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from services.console.layout import page
from services.console.live import CHANGES, Changes, event_stream, following
from services.console.markup import Markup, e, link
from services.console.pages import CLIENTS, Clients, not_found_page, routes
from shared.api.pfs_client import PfsClient
from shared.api.pps_client import PpsClient
from shared.platform.config import CLUSTER_HEADER, Config
from shared.platform.errors import NotFound, TuskError
from shared.platform.http import CONFIG, STATUS_BY_ERROR, Handler, add_health_routes, request_guard

log = logging.getLogger("tusk.console")
VERSION = "0.1.0"
STATIC = Path(__file__).parent / "static"


@web.middleware
async def html_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A ``TuskError`` (from the guard, a handler or a service the console asked) as a page
    with one clear line and the status of the shared table."""
    try:
        return await handler(request)
    except NotFound as exc:
        return not_found_page(exc.message)
    except TuskError as exc:
        status = STATUS_BY_ERROR.get(type(exc), 500)
        body = Markup(
            f'<h1>Error</h1><p class="error-line">{e(exc.message)}</p><p>{link("/", "Back to the overview")}</p>'
        )
        return page("Error", body, status=status)
    except web.HTTPNotFound:
        return not_found_page(f"no page at {request.path}")
    except web.HTTPException:
        raise
    except Exception:
        # A bug: logged with its traceback, the browser gets one line.
        log.exception("unexpected error in %s %s", request.method, request.path)
        body = Markup(
            '<h1>Error</h1><p class="error-line">internal error in the console; see its log</p>'
        )
        return page("Error", body, status=500)


def build_app(config: Config) -> web.Application:
    app = web.Application(middlewares=[html_errors, request_guard(config)])
    app[CONFIG] = config
    app[CHANGES] = Changes()
    if config.cluster_id:

        async def stamp(request: web.Request, response: web.StreamResponse) -> None:
            response.headers[CLUSTER_HEADER] = config.cluster_id

        app.on_response_prepare.append(stamp)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        cluster = config.cluster_id or None
        async with (
            PfsClient(config.pfs_url, cluster_id=cluster) as pfs,
            PpsClient(config.pps_url, cluster_id=cluster) as pps,
            following(config, app[CHANGES]),
        ):
            app[CLIENTS] = Clients(pfs, pps)
            yield

    app.cleanup_ctx.append(resources)

    async def stopping(app: web.Application) -> None:
        # Open event streams end, so shutdown does not wait for browsers to hang up.
        await app[CHANGES].stop()

    app.on_shutdown.append(stopping)

    async def events(request: web.Request) -> web.StreamResponse:
        return await event_stream(request, request.app[CHANGES])

    async def ready() -> bool:
        try:
            await app[CLIENTS].pfs.request("GET", "/healthz")
            await app[CLIENTS].pps.request("GET", "/healthz")
        except (TuskError, KeyError):
            return False
        return True

    add_health_routes(app, ready, "Tusk console", VERSION)
    app.router.add_get("/events", events)
    app.router.add_static("/static", STATIC, append_version=False)
    app.add_routes(routes)
    return app
