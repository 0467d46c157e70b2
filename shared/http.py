"""HTTP plumbing every service shares: the one error→status table, JSON bodies, health routes.

A handler raises ``TuskError``; ``error_middleware`` turns it into
``{"error": {"code", "message"}}`` with the status from ``STATUS_BY_ERROR``.
Anything else is logged with its traceback and answered as ``internal`` with a
one-line message — a traceback never reaches a client.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from shared.errors import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    TooLarge,
    TuskError,
    Unavailable,
)

log = logging.getLogger("tusk.http")

STATUS_BY_ERROR: dict[type[TuskError], int] = {
    InvalidArgument: 400,
    NotFound: 404,
    AlreadyExists: 409,
    Conflict: 409,
    FailedPrecondition: 412,
    TooLarge: 413,
    Unavailable: 503,
    Internal: 500,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def status_for(error: TuskError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500


def error_response(error: TuskError) -> web.Response:
    return web.json_response({"error": error.to_json()}, status=status_for(error))


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except TuskError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status >= 400:
            return error_response(
                NotFound(f"no such endpoint: {request.method} {request.path}")
                if exc.status in (404, 405)
                else InvalidArgument(exc.reason)
            )
        raise
    except (ConnectionResetError, TimeoutError):
        raise
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return error_response(
            Internal(f"internal error while serving {request.method} {request.path}; see logs")
        )


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body; refuses malformed or non-object bodies."""
    raw = await request.read()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise InvalidArgument("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidArgument("request body must be a JSON object")
    return body


def field(
    body: dict[str, Any], name: str, kind: type, *, default: Any = ..., path: str = ""
) -> Any:
    """Take ``body[name]`` checking its type; the error names the field."""
    if name not in body or body[name] is None:
        if default is ...:
            raise InvalidArgument(f"missing field {path}{name}")
        return default
    value = body[name]
    if kind is int and isinstance(value, bool):
        raise InvalidArgument(f"field {path}{name}: expected an integer")
    if not isinstance(value, kind):
        raise InvalidArgument(f"field {path}{name}: expected {kind.__name__}")
    return value


def query_bool(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false").lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no", ""):
        return False
    raise InvalidArgument(f"query parameter {name}: expected true or false")


def query_int(request: web.Request, name: str, default: int, *, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidArgument(f"query parameter {name}: expected an integer") from None
    if not low <= value <= high:
        raise InvalidArgument(f"query parameter {name}: must be between {low} and {high}")
    return value


def query_seconds(request: web.Request, name: str) -> float | None:
    """An optional duration in seconds (e.g. ``?timeout=2.5``); refuses anything else."""
    raw = request.query.get(name)
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise InvalidArgument(f"query parameter {name}: expected seconds") from None
    if value < 0:
        raise InvalidArgument(f"query parameter {name}: must not be negative")
    return value


def openapi_document(app: web.Application, title: str, version: str) -> dict[str, Any]:
    """An OpenAPI 3 document built from the app's routes and their handlers' docstrings."""
    paths: dict[str, dict[str, Any]] = {}
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("formatter") or info.get("path")
        if not path or route.method == "HEAD":
            continue
        doc = (route.handler.__doc__ or "").strip()
        summary, _, description = doc.partition("\n")
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _path_params(path)
        ]
        operation: dict[str, Any] = {
            "summary": summary,
            "operationId": getattr(route.handler, "__name__", path),
            "responses": {
                "200": {"description": "success"},
                "default": {
                    "description": "error",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                },
            },
        }
        if description.strip():
            operation["description"] = description.strip()
        if params:
            operation["parameters"] = params
        paths.setdefault(path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.0.3",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {
                            "type": "object",
                            "properties": {
                                "code": {
                                    "type": "string",
                                    "enum": [c.code for c in STATUS_BY_ERROR],
                                },
                                "message": {"type": "string"},
                            },
                            "required": ["code", "message"],
                        }
                    },
                }
            }
        },
    }


def _path_params(path: str) -> list[str]:
    names = []
    for part in path.split("/"):
        if part.startswith("{") and part.endswith("}"):
            names.append(part[1:-1].split(":")[0])
    return names


def add_health_routes(
    app: web.Application, ready: Callable[[], Awaitable[bool]], title: str, version: str
) -> None:
    """/healthz (process alive), /readyz (dependencies reachable), /openapi.json."""

    async def healthz(request: web.Request) -> web.Response:
        """Liveness: the process serves HTTP."""
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        """Readiness: the service's dependencies answer."""
        ok = await ready()
        return web.json_response(
            {"status": "ready" if ok else "not ready"}, status=200 if ok else 503
        )

    async def openapi(request: web.Request) -> web.Response:
        """This document."""
        return web.json_response(openapi_document(request.app, title, version))

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/openapi.json", openapi)
