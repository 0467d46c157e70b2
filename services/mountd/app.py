"""mountd's HTTP API: mount, list, commit, refresh and unmount named mounts (see /openapi.json).

Like Pachyderm's mount-server: one FUSE tree at the mount root, each mount a
directory ``<root>/<name>`` added and removed over HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from services.mountd.mounts import MountManager
from services.mountd.runtime import MountSettings, mount_tree
from shared.api.mount_client import MountSpec
from shared.platform.config import Config
from shared.platform.http import (
    NAME,
    REF,
    add_health_routes,
    endpoint,
    field,
    flag,
    json_body,
    query_bool,
    read_json,
    service_application,
)

VERSION = "0.1.0"
MANAGER: web.AppKey[MountManager] = web.AppKey("mount_manager", MountManager)
# The kernel session's request loop; done once the tree was unmounted from outside.
SERVING: web.AppKey[asyncio.Task[None]] = web.AppKey("fuse_serving", asyncio.Task)
routes = web.RouteTableDef()


def _manager(request: web.Request) -> MountManager:
    return request.app[MANAGER]


@routes.post("/mounts")
@endpoint(
    body=json_body(
        {"repo": NAME, "ref": REF, "name": NAME, "mode": {"type": "string", "enum": ["ro", "rw"]}},
        required=["repo"],
    ),
    status=201,
)
async def create_mount(request: web.Request) -> web.Response:
    """Mount a repo. Body: {repo, ref? (branch or commit, default master), name? (default repo), mode?: "ro"|"rw"}."""
    body = await read_json(request)
    spec = MountSpec(
        repo=field(body, "repo", str),
        ref=field(body, "ref", str, default="master"),
        name=field(body, "name", str, default=""),
        mode=field(body, "mode", str, default="ro"),
    )
    mount = await _manager(request).mount(spec)
    return web.json_response(mount.info().to_json(), status=201)


@routes.get("/mounts")
async def list_mounts(request: web.Request) -> web.Response:
    """List mounts by name."""
    manager = _manager(request)
    infos = [manager.mounts[name].info().to_json() for name in sorted(manager.mounts)]
    return web.json_response({"mounts": infos})


@routes.get("/mounts/{name}")
async def inspect_mount(request: web.Request) -> web.Response:
    """Inspect one mount."""
    return web.json_response(_manager(request).get(request.match_info["name"]).info().to_json())


@routes.delete("/mounts/{name}")
@endpoint(query=[flag("force", "drop files still open for writing")])
async def delete_mount(request: web.Request) -> web.Response:
    """Unmount; a rw mount's open commit is finished first. ?force=true drops files still open for writing."""
    commit = await _manager(request).unmount(
        request.match_info["name"], force=query_bool(request, "force")
    )
    return web.json_response({"commit": commit.to_json() if commit else None})


@routes.post("/mounts/{name}/commit")
@endpoint()
async def commit_mount(request: web.Request) -> web.Response:
    """Finish a rw mount's open commit now; the next write starts a new one."""
    commit = await _manager(request).commit(request.match_info["name"])
    return web.json_response({"commit": commit.to_json() if commit else None})


@routes.post("/mounts/{name}/refresh")
@endpoint()
async def refresh_mount(request: web.Request) -> web.Response:
    """Show the branch's newest finished commit now."""
    mount = await _manager(request).refresh(request.match_info["name"])
    return web.json_response(mount.info().to_json())


@routes.get("/status")
async def mountd_status(request: web.Request) -> web.Response:
    """Work counters: ranged reads sent for mounted files, the block cache's hits and misses."""
    source = _manager(request).source
    cache = source.cache
    return web.json_response(
        {
            "block_reads": source.requests,
            "block_cache": {
                "hits": cache.hits,
                "misses": cache.misses,
                "bytes": cache.size,
                "limit_bytes": cache.max_bytes,
            },
        }
    )


def build_app(config: Config, settings: MountSettings | None = None) -> web.Application:
    """The mountd application: the FUSE tree lives as long as the app."""
    settings = settings or MountSettings.from_config(config)
    app = service_application(config)
    app.add_routes(routes)

    async def tree(app: web.Application) -> AsyncIterator[None]:
        async with mount_tree(config, settings) as (manager, serving):
            app[MANAGER] = manager
            app[SERVING] = serving
            yield

    app.cleanup_ctx.append(tree)

    async def ready() -> bool:
        return MANAGER in app and not app[SERVING].done()

    add_health_routes(app, ready, "Tusk mountd", VERSION)
    return app
