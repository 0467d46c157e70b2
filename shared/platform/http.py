"""HTTP plumbing every service shares: the one error→status table, what a request may be,
JSON bodies, the OpenAPI document and health routes.

A handler raises ``TuskError``; ``error_middleware`` turns it into
``{"error": {"code", "message"}}`` with the status from ``STATUS_BY_ERROR``.
Anything else is logged with its traceback and answered as ``internal`` with a
one-line message — a traceback never reaches a client.

Every app is built by ``service_application``, whose ``request_guard`` refuses before
any handler runs: a Host the service does not answer to (DNS rebinding, 421), a
state-changing request from a foreign web page's Origin (403), a body of a Content-Type
the endpoint does not declare (415) or larger than its limit (413), a path or query with
text no database column can hold (400). An endpoint declares
its body and query parameters with ``@endpoint``; the same declaration feeds the
guard, ``read_json`` and ``/openapi.json``, so the document cannot drift from the checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware
from yarl import URL

from shared.platform.config import CLUSTER_HEADER, Config
from shared.platform.errors import (
    AlreadyExists,
    Conflict,
    DataLoss,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    MisdirectedRequest,
    NotFound,
    PermissionDenied,
    TooLarge,
    TuskError,
    Unavailable,
    UnsupportedMediaType,
)
from shared.platform.name_rules import ANCESTRY_RE, MAX_TEXT_CHARS, NAME_RE

log = logging.getLogger("tusk.http")

STATUS_BY_ERROR: dict[type[TuskError], int] = {
    InvalidArgument: 400,
    UnsupportedMediaType: 415,
    PermissionDenied: 403,
    MisdirectedRequest: 421,
    NotFound: 404,
    AlreadyExists: 409,
    Conflict: 409,
    FailedPrecondition: 412,
    TooLarge: 413,
    Unavailable: 503,
    Internal: 500,
    DataLoss: 500,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Handler)
T = TypeVar("T")

KIB = 1 << 10
MIB = 1 << 20
JSON = "application/json"
YAML = ("application/yaml", "application/x-yaml")
# A JSON request body is read whole into memory: this bounds it unless an endpoint says more.
JSON_BODY_LIMIT = 1 * MIB
# Deeper JSON is refused before anything walks it (Python's parser would overflow its stack).
MAX_JSON_DEPTH = 64
# Longest free-text field (a description, a commit's error) a JSON body may carry.
TEXT_FIELD_LIMIT = MAX_TEXT_CHARS
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Status of the response nobody reads because the client went away (nginx's convention).
CLIENT_CLOSED_REQUEST = 499
CONFIG: web.AppKey[Config] = web.AppKey("tusk_config", Config)


# ------------------------------------------------------------------ endpoint declarations


@dataclass(frozen=True)
class Body:
    """What an endpoint takes as its request body: a schema per content type, a size limit.

    ``max_bytes`` None means the handler streams the body and bounds it itself.
    """

    content: Mapping[str, dict[str, Any]]
    max_bytes: int | None = JSON_BODY_LIMIT
    required: bool = False

    @property
    def content_types(self) -> tuple[str, ...]:
        return tuple(self.content)


@dataclass(frozen=True)
class Query:
    """One query parameter of an endpoint (documentation; the handler parses it)."""

    name: str
    schema: dict[str, Any]
    description: str = ""
    required: bool = False


@dataclass(frozen=True)
class Endpoint:
    """An endpoint's declaration: its body (None: takes none), query parameters, status."""

    body: Body | None
    query: tuple[Query, ...] = ()
    status: int = 200


_ENDPOINT_ATTR = "__tusk_endpoint__"
# Endpoints that declare nothing: a POST/PUT/PATCH takes a JSON object, others no body.
_DEFAULT_JSON = Body({JSON: {"type": "object"}})


def json_body(
    properties: Mapping[str, dict[str, Any]],
    *,
    required: Sequence[str] = (),
    max_bytes: int = JSON_BODY_LIMIT,
    also: Mapping[str, dict[str, Any]] | None = None,
) -> Body:
    """A JSON object body with these properties (``also``: further content types' schemas)."""
    schema: dict[str, Any] = {"type": "object", "properties": dict(properties)}
    if required:
        schema["required"] = list(required)
    return Body({JSON: schema, **(also or {})}, max_bytes, required=bool(required))


def endpoint(
    *,
    body: Body | None = None,
    query: Sequence[Query] = (),
    status: int = 200,
) -> Callable[[H], H]:
    """Declare what a handler takes; put it under the ``@routes.<method>(...)`` line."""

    def mark(handler: H) -> H:
        setattr(handler, _ENDPOINT_ATTR, Endpoint(body, tuple(query), status))
        return handler

    return mark


def endpoint_of(handler: Any, method: str) -> Endpoint:
    """The handler's declaration, or the default for its method."""
    declared = getattr(handler, _ENDPOINT_ATTR, None)
    if isinstance(declared, Endpoint):
        return declared
    return Endpoint(_DEFAULT_JSON if method in ("POST", "PUT", "PATCH") else None)


# Schemas shared by the services' declarations.
STRING: dict[str, Any] = {"type": "string"}
TEXT: dict[str, Any] = {"type": "string", "maxLength": TEXT_FIELD_LIMIT}
BOOLEAN: dict[str, Any] = {"type": "boolean"}
SECONDS: dict[str, Any] = {"type": "number", "minimum": 0}
NAME: dict[str, Any] = {"type": "string", "pattern": NAME_RE.pattern}
REF: dict[str, Any] = {"type": "string", "pattern": ANCESTRY_RE.pattern}
FILE_PATH: dict[str, Any] = {"type": "string", "maxLength": 4096}
# Path parameters are named alike in every service; their schema follows the name.
PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "repo": NAME,
    "branch": NAME,
    "name": NAME,
    "ref": REF,
    "path": FILE_PATH,
    "job": {"type": "string", "pattern": "^[0-9A-Za-z_-]{1,64}$"},
    "datum": {"type": "string", "pattern": "^[0-9A-Za-z_-]{1,64}$"},
    # A commit set's id is the id of the commit that started it.
    "commit_set": {"type": "string", "pattern": "^[0-9A-Za-z_-]{1,64}$"},
    # A DNS subdomain, as Kubernetes names secrets (shared.api.secrets.check_secret_name).
    "secret": {
        "type": "string",
        "pattern": "^[a-z0-9](?:[-a-z0-9.]*[a-z0-9])?$",
        "maxLength": 253,
    },
}


def integer(low: int, high: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": low, "maximum": high}


def flag(name: str, description: str = "") -> Query:
    """A ``?name=true|false`` parameter."""
    return Query(name, BOOLEAN, description)


# ------------------------------------------------------------------------- the middleware


def status_for(error: TuskError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500


def error_response(error: TuskError) -> web.Response:
    return web.json_response({"error": error.to_json()}, status=status_for(error))


class ClientDisconnected(ConnectionResetError):
    """The client went away while its request was being served (see ``while_connected``)."""


def _response_started(request: web.Request) -> bool:
    """Whether the status line is out (``StreamResponse.prepare`` sends it at once)."""
    return request.writer.output_size > 0


def _break_off(request: web.Request, error: BaseException) -> web.StreamResponse:
    """End a response that failed after its status line went out.

    An error body written now would be read as the rest of the content: a client would
    get a 200 with wrong bytes (curl exits 0). Closing the connection instead leaves the
    body short of its Content-Length (or without its last chunk), which every client
    reports as a failed transfer.
    """
    message = error.message if isinstance(error, TuskError) else repr(error)
    log.error(
        "%s %s failed after the response started; connection closed: %s",
        request.method,
        request.path,
        message,
        exc_info=not isinstance(error, TuskError),
    )
    if request.transport is not None:
        request.transport.close()
    # Never sent (the transport is closing); returning it keeps aiohttp from trying to
    # send an error response of its own.
    return web.Response(status=500)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except TuskError as exc:
        if _response_started(request):
            return _break_off(request, exc)
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status >= 400:
            if exc.status == 413:
                return error_response(TooLarge(exc.reason))
            return error_response(
                NotFound(f"no such endpoint: {request.method} {request.path}")
                if exc.status in (404, 405)
                else InvalidArgument(exc.reason)
            )
        raise
    except RecursionError:
        # A parser (YAML, JSON) walked input nested deeper than the interpreter's stack.
        log.warning("%s %s: request nested too deeply to parse", request.method, request.path)
        return error_response(InvalidArgument("the request is nested too deeply to read"))
    except ClientDisconnected:
        # Nobody reads this; a response (not an exception) keeps aiohttp from logging one.
        return web.Response(status=CLIENT_CLOSED_REQUEST)
    except (ConnectionResetError, TimeoutError):
        raise
    except Exception as exc:
        if _response_started(request):
            return _break_off(request, exc)
        log.exception("unexpected error in %s %s", request.method, request.path)
        return error_response(
            Internal(f"internal error while serving {request.method} {request.path}; see logs")
        )


def request_guard(config: Config) -> Middleware:
    """The checks every request passes before its handler: Host, Origin, body type and size."""
    allowed_origins = frozenset(_origin_key(o) for o in config.allowed_origins)

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        _check_host(request, config.allowed_hosts)
        check_text(request.path, "request path")
        for name, value in request.query.items():
            check_text(name + value, f"query parameter {name!r}")
        if request.method in STATE_CHANGING:
            _check_origin(request, allowed_origins)
        if request.match_info.http_exception is None:
            _check_body(request, endpoint_of(request.match_info.handler, request.method))
        return await handler(request)

    return guard


def service_application(config: Config) -> web.Application:
    """A service's ``web.Application``: the error table, the request guard, the cluster header."""
    app = web.Application(middlewares=[error_middleware, request_guard(config)])
    app[CONFIG] = config
    if config.cluster_id:

        async def stamp(request: web.Request, response: web.StreamResponse) -> None:
            response.headers[CLUSTER_HEADER] = config.cluster_id

        app.on_response_prepare.append(stamp)
    return app


def host_allowed(host: str, allowed_hosts: Sequence[str]) -> bool:
    """Whether a Host header's name is an IP literal, ``localhost``, or matches ``allowed_hosts``.

    An entry matches exactly; ``.example.com`` matches it and its subdomains; ``*`` anything.
    """
    try:
        name = (URL.build(scheme="http", authority=host).host or "").lower().rstrip(".")
    except (ValueError, TypeError):
        return False
    if not name:
        return False
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(name.split("%", 1)[0])
        return True
    if name == "localhost":
        return True
    for entry in allowed_hosts:
        entry = entry.lower().rstrip(".")
        if entry == "*" or entry == name:
            return True
        if entry.startswith(".") and (name == entry[1:] or name.endswith(entry)):
            return True
    return False


def _check_host(request: web.Request, allowed_hosts: Sequence[str]) -> None:
    host = request.headers.get(hdrs.HOST)
    if host is not None and not host_allowed(host, allowed_hosts):
        raise MisdirectedRequest(
            f"this service does not answer to the host name {host!r}; "
            "add it to allowed_hosts in the configuration if it is yours"
        )


def _origin_key(origin: str) -> tuple[str, str, int | None] | None:
    try:
        url = URL(origin.strip())
    except (ValueError, TypeError):
        return None
    if not url.scheme or not url.host:
        return None
    return url.scheme.lower(), url.host.lower(), url.port


def _check_origin(
    request: web.Request, allowed: frozenset[tuple[str, str, int | None] | None]
) -> None:
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None:
        # Browsers send Origin on cross-site writes; this catches one that did not.
        if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
            raise PermissionDenied(f"{request.method} from another site is refused")
        return
    key = _origin_key(origin)
    own = _origin_key(f"{request.scheme}://{request.headers.get(hdrs.HOST, request.host)}")
    if key is not None and (key == own or key in allowed):
        return
    raise PermissionDenied(
        f"{request.method} {request.path} from the web page at {origin!r} is refused; "
        "add that origin to allowed_origins in the configuration if it is yours"
    )


def _check_body(request: web.Request, declared: Endpoint) -> None:
    if not request.body_exists:
        return
    where = f"{request.method} {request.match_info.route.resource.canonical if request.match_info.route.resource else request.path}"
    body = declared.body
    if body is None:
        raise UnsupportedMediaType(f"{where} takes no request body")
    sent = request.headers.get(hdrs.CONTENT_TYPE)
    if sent is None or request.content_type not in body.content_types:
        wanted = " or ".join(body.content_types)
        got = f"Content-Type {request.content_type}" if sent is not None else "no Content-Type"
        raise UnsupportedMediaType(f"{where} takes {wanted}, not {got}")
    length = request.content_length
    if body.max_bytes is not None and length is not None and length > body.max_bytes:
        raise TooLarge(_too_large(where, body.max_bytes))


def _too_large(where: str, limit: int) -> str:
    return f"{where}: the request body is larger than the {_size(limit)} this endpoint accepts"


def _size(n: int) -> str:
    return (
        f"{n // MIB} MiB" if n % MIB == 0 else f"{n // KIB} KiB" if n % KIB == 0 else f"{n} bytes"
    )


# -------------------------------------------------------------------------- request bodies


async def read_body(request: web.Request) -> bytes:
    """The whole request body, refused past the endpoint's declared limit."""
    declared = endpoint_of(request.match_info.handler, request.method).body
    limit = declared.max_bytes if declared is not None else 0
    data = bytearray()
    while chunk := await request.content.readany():
        data += chunk
        if limit is not None and len(data) > limit:
            raise TooLarge(_too_large(f"{request.method} {request.path}", limit))
    return bytes(data)


async def read_text(request: web.Request) -> str:
    """The request body as text (its charset, else UTF-8)."""
    raw = await read_body(request)
    try:
        return raw.decode(request.charset or "utf-8")
    except (UnicodeDecodeError, LookupError):
        raise InvalidArgument(
            f"request body is not valid {request.charset or 'UTF-8'} text"
        ) from None


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body; refuses malformed, too deep or non-object bodies."""
    raw = await read_body(request)
    if not raw:
        return {}
    return parse_json_object(raw)


def parse_json_object(raw: bytes | str) -> dict[str, Any]:
    """Parse a JSON object no deeper than ``MAX_JSON_DEPTH``."""
    try:
        body = json.loads(raw)
    except RecursionError:
        raise InvalidArgument(
            f"request body is nested deeper than {MAX_JSON_DEPTH} levels"
        ) from None
    except ValueError:
        raise InvalidArgument("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidArgument("request body must be a JSON object")
    check_structure(body)
    return body


def check_structure(value: Any) -> None:
    """Refuse a parsed document (JSON, YAML) nested past ``MAX_JSON_DEPTH`` or holding
    strings no text column can hold."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise InvalidArgument(f"request body is nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(item, str):
            check_text(item, "request body")
        elif isinstance(item, dict):
            for key, child in item.items():
                check_text(key, "request body")
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


# NUL (no PostgreSQL text can hold it) and halves of surrogate pairs (a JSON "\ud800"
# escape alone is no character): refused wherever a request carries text.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def check_text(value: str, where: str) -> None:
    """Refuse text with a NUL character or a lone surrogate, naming where it was."""
    if _UNSTORABLE.search(value):
        raise InvalidArgument(f"{where}: text may not contain NUL or unpaired surrogates")


def field(
    body: dict[str, Any],
    name: str,
    kind: type,
    *,
    default: Any = ...,
    path: str = "",
    max_chars: int = TEXT_FIELD_LIMIT,
) -> Any:
    """Take ``body[name]`` checking its type (and a string's length); the error names the field."""
    if name not in body or body[name] is None:
        if default is ...:
            raise InvalidArgument(f"missing field {path}{name}")
        return default
    value = body[name]
    if kind is int and isinstance(value, bool):
        raise InvalidArgument(f"field {path}{name}: expected an integer")
    if not isinstance(value, kind):
        raise InvalidArgument(f"field {path}{name}: expected {kind.__name__}")
    if isinstance(value, str) and len(value) > max_chars:
        raise InvalidArgument(
            f"field {path}{name}: {len(value)} characters is more than the {max_chars} allowed"
        )
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
    if not math.isfinite(value):
        raise InvalidArgument(f"query parameter {name}: expected a finite number of seconds")
    if value < 0:
        raise InvalidArgument(f"query parameter {name}: must not be negative")
    return value


# How often a long request checks that its client is still there.
DISCONNECT_POLL_S = 0.25


def client_gone(request: web.Request) -> bool:
    """Whether the client closed the connection this request came on."""
    transport = request.transport
    return transport is None or transport.is_closing()


async def while_connected(request: web.Request, work: Awaitable[T]) -> T:
    """Await ``work`` for as long as the client stays; cancel it once the client leaves.

    aiohttp lets a handler run on after its client disconnected; a long poll (wait for a
    commit, for a job) would otherwise keep querying the database for nobody.
    """
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if client_gone(request):
                raise ClientDisconnected(f"client left {request.method} {request.path}")
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# ------------------------------------------------------------------------------- OpenAPI


def openapi_document(app: web.Application, title: str, version: str) -> dict[str, Any]:
    """An OpenAPI 3 document built from the app's routes, their ``@endpoint`` declarations
    and their handlers' docstrings."""
    paths: dict[str, dict[str, Any]] = {}
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("formatter") or info.get("path")
        if not path or route.method == "HEAD":
            continue
        declared = endpoint_of(route.handler, route.method)
        doc = (route.handler.__doc__ or "").strip()
        summary, _, description = doc.partition("\n")
        params: list[dict[str, Any]] = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": PATH_PARAMETERS.get(name, STRING),
            }
            for name in _path_params(path)
        ]
        for q in declared.query:
            param: dict[str, Any] = {
                "name": q.name,
                "in": "query",
                "required": q.required,
                "schema": q.schema,
            }
            if q.description:
                param["description"] = q.description
            params.append(param)
        operation: dict[str, Any] = {
            "summary": summary,
            "operationId": getattr(route.handler, "__name__", path),
            "responses": {
                str(declared.status): {"description": "success"},
                "default": {
                    "description": "error",
                    "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}},
                },
            },
        }
        if description.strip():
            operation["description"] = description.strip()
        if params:
            operation["parameters"] = params
        if declared.body is not None:
            operation["requestBody"] = {
                "required": declared.body.required,
                "content": {ct: {"schema": sc} for ct, sc in declared.body.content.items()},
            }
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
    """/healthz (process alive, and its cluster), /readyz (dependencies reachable), /openapi.json."""

    async def healthz(request: web.Request) -> web.Response:
        """Liveness: the process serves HTTP; ``cluster`` names the cluster it belongs to."""
        config = request.app.get(CONFIG)
        return web.json_response(
            {"status": "ok", "cluster": config.cluster_id if config is not None else ""}
        )

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
