"""PFS HTTP API: routes and thin handlers over ``PfsService`` (documented at /openapi.json)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from services.pfs.collector import Collector
from services.pfs.fsck import check_storage
from services.pfs.merge import STRATEGIES, Strategy
from services.pfs.service import PfsService
from shared.api.events import CommitFinished, subject_filter
from shared.api.filestream import CONTENT_TYPE, FileStreamReader, encode_block, encode_header
from shared.api.pfs_models import COMMIT_ORIGINS, CommitInfo, CommitOrigin, CommitRef, Trigger
from shared.platform.bus import Bus
from shared.platform.errors import InvalidArgument
from shared.platform.http import (
    BOOLEAN,
    FILE_PATH,
    NAME,
    REF,
    SECONDS,
    STRING,
    TEXT,
    Body,
    Query,
    endpoint,
    field,
    flag,
    integer,
    json_body,
    query_bool,
    query_int,
    query_seconds,
    read_json,
    while_connected,
)
from shared.storage.chunking import FileEntry

SERVICE: web.AppKey[PfsService] = web.AppKey("pfs_service", PfsService)
BUS: web.AppKey[Bus] = web.AppKey("bus", Bus)
COLLECTOR: web.AppKey[Collector] = web.AppKey("collector", Collector)
# Set when the app shuts down, so long-lived streams end instead of holding shutdown up.
STOPPING: web.AppKey[asyncio.Event] = web.AppKey("stopping", asyncio.Event)
HEARTBEAT_S = 1.0
# put_entries carries a chunk list per file: a job's outputs go in batches (PfsClient).
ENTRIES_BODY_LIMIT = 64 << 20
routes = web.RouteTableDef()

# Request-body schemas of the declarations below.
_COMMIT_REF = {
    "type": "object",
    "properties": {"repo": NAME, "branch": NAME, "id": STRING},
    "required": ["repo", "id"],
}
# Who makes a commit; PFS checks only that it is one of these (docs/console.md).
_ORIGIN = {"type": "string", "enum": list(COMMIT_ORIGINS)}


def _origin(body: dict[str, Any]) -> CommitOrigin:
    origin = field(body, "origin", str, default="user")
    if origin not in COMMIT_ORIGINS:
        raise InvalidArgument(f"field origin: {origin!r} is not one of {', '.join(COMMIT_ORIGINS)}")
    return origin


_FILE_ENTRY = {
    "type": "object",
    "properties": {
        "size": {"type": "integer", "minimum": 0},
        "hash": STRING,
        "chunks": {
            "type": "array",
            # [chunk, offset, length]
            "items": {
                "type": "array",
                "items": {"oneOf": [STRING, {"type": "integer", "minimum": 0}]},
                "minItems": 3,
                "maxItems": 3,
            },
        },
    },
    "required": ["size", "hash", "chunks"],
}
_TRIGGER = {
    "type": "object",
    "properties": {
        "branch": NAME,
        "size": {"type": "integer", "minimum": 0},
        "commits": {"type": "integer", "minimum": 0},
        "cron": STRING,
        "all": BOOLEAN,
    },
    "required": ["branch"],
}


def _svc(request: web.Request) -> PfsService:
    return request.app[SERVICE]


def _path(request: web.Request) -> str:
    return "/" + request.match_info.get("path", "")


# Repos


@routes.post("/v1/repos")
@endpoint(body=json_body({"name": NAME, "description": TEXT}, required=["name"]), status=201)
async def create_repo(request: web.Request) -> web.Response:
    """Create a repo. Body: {name, description?}."""
    body = await read_json(request)
    info = await _svc(request).create_repo(
        field(body, "name", str), field(body, "description", str, default="")
    )
    return web.json_response(info.to_json(), status=201)


@routes.get("/v1/repos")
async def list_repos(request: web.Request) -> web.Response:
    """List repos, newest first."""
    return web.json_response({"repos": [r.to_json() for r in await _svc(request).list_repos()]})


@routes.get("/v1/repos/{repo}")
async def inspect_repo(request: web.Request) -> web.Response:
    """Inspect a repo (size is that of its master head)."""
    return web.json_response(
        (await _svc(request).inspect_repo(request.match_info["repo"])).to_json()
    )


@routes.delete("/v1/repos/{repo}")
@endpoint(query=[flag("force", "delete even if other branches have provenance on it")])
async def delete_repo(request: web.Request) -> web.Response:
    """Delete a repo; refused while other branches have provenance on it unless ?force=true."""
    await _svc(request).delete_repo(request.match_info["repo"], force=query_bool(request, "force"))
    return web.json_response({})


# Branches


@routes.post("/v1/repos/{repo}/branches")
@endpoint(
    body=json_body(
        {
            "name": NAME,
            "head": REF,
            "provenance": {"type": "array", "items": STRING},
            "trigger": _TRIGGER,
        },
        required=["name"],
    ),
    status=201,
)
async def create_branch(request: web.Request) -> web.Response:
    """Create (or move/re-provenance/re-trigger) a branch.

    Body: {name, head?, provenance?: ["repo@branch"], trigger?: {branch, size?, commits?,
    cron?, all?}}; a field left out (or null) leaves an existing branch's value as it is.
    """
    body = await read_json(request)
    provenance = field(body, "provenance", list, default=None)
    if provenance is not None and not all(isinstance(p, str) for p in provenance):
        raise InvalidArgument("field provenance: expected a list of 'repo@branch' strings")
    raw_trigger = field(body, "trigger", dict, default=None)
    info = await _svc(request).create_branch(
        request.match_info["repo"],
        field(body, "name", str),
        head=field(body, "head", str, default=None),
        provenance=provenance,
        trigger=_trigger(raw_trigger) if raw_trigger is not None else None,
    )
    return web.json_response(info.to_json(), status=201)


def _trigger(body: dict[str, Any]) -> Trigger:
    return Trigger(
        branch=field(body, "branch", str, path="trigger."),
        size=field(body, "size", int, default=None, path="trigger."),
        commits=field(body, "commits", int, default=None, path="trigger."),
        cron=field(body, "cron", str, default=None, path="trigger."),
        all=field(body, "all", bool, default=False, path="trigger."),
    )


@routes.get("/v1/repos/{repo}/branches")
async def list_branches(request: web.Request) -> web.Response:
    """List a repo's branches."""
    branches = await _svc(request).list_branches(request.match_info["repo"])
    return web.json_response({"branches": [b.to_json() for b in branches]})


@routes.get("/v1/repos/{repo}/branches/{branch}")
async def inspect_branch(request: web.Request) -> web.Response:
    """Inspect a branch: head, provenance, subvenance."""
    info = await _svc(request).inspect_branch(
        request.match_info["repo"], request.match_info["branch"]
    )
    return web.json_response(info.to_json())


@routes.delete("/v1/repos/{repo}/branches/{branch}")
@endpoint(query=[flag("force")])
async def delete_branch(request: web.Request) -> web.Response:
    """Delete a branch (its commits stay reachable by id)."""
    await _svc(request).delete_branch(
        request.match_info["repo"], request.match_info["branch"], force=query_bool(request, "force")
    )
    return web.json_response({})


# Commits


@routes.post("/v1/repos/{repo}/commits")
@endpoint(
    body=json_body(
        {
            "branch": NAME,
            "description": TEXT,
            "provenance": {"type": "array", "items": _COMMIT_REF},
            "id": STRING,
            "origin": _ORIGIN,
        }
    ),
    status=201,
)
async def start_commit(request: web.Request) -> web.Response:
    """Start a commit on a branch. Body: {branch, description?, provenance?: [{repo, branch,
    id}], id?: the commit set to join (a pipeline's output takes its input commit's id),
    origin?: who makes it (user, job, s3, cron; default user)}."""
    body = await read_json(request)
    raw_prov = field(body, "provenance", list, default=None)
    provenance = None
    if raw_prov is not None:
        try:
            provenance = [
                CommitRef(str(p["repo"]), p.get("branch"), str(p["id"])) for p in raw_prov
            ]
        except (TypeError, KeyError):
            raise InvalidArgument("field provenance: expected [{repo, branch, id}]") from None
    info = await _svc(request).start_commit(
        request.match_info["repo"],
        field(body, "branch", str, default="master"),
        description=field(body, "description", str, default=""),
        provenance=provenance,
        commit_id=field(body, "id", str, default=None),
        origin=_origin(body),
    )
    return web.json_response(info.to_json(), status=201)


@routes.get("/v1/repos/{repo}/commits")
@endpoint(
    query=[
        Query("branch", NAME),
        Query("limit", integer(1, 10000)),
        Query("before", STRING, "the cursor a previous page returned"),
    ]
)
async def list_commits(request: web.Request) -> web.Response:
    """List commits newest first, one page (?branch=&limit=&before=<cursor>)."""
    commits, cursor = await _svc(request).list_commits(
        request.match_info["repo"],
        request.query.get("branch") or None,
        query_int(request, "limit", 100, low=1, high=10000),
        request.query.get("before") or None,
    )
    return web.json_response({"commits": [c.to_json() for c in commits], "next": cursor})


@routes.get("/v1/repos/{repo}/commits/{ref}")
async def inspect_commit(request: web.Request) -> web.Response:
    """Inspect a commit named by a ref (branch, id, master^, master~2)."""
    info = await _svc(request).inspect_commit(request.match_info["repo"], request.match_info["ref"])
    return web.json_response(info.to_json())


@routes.get("/v1/repos/{repo}/commits/{ref}/subvenance")
async def commit_subvenance(request: web.Request) -> web.Response:
    """Commits whose provenance includes this commit."""
    infos = await _svc(request).commits_from(request.match_info["repo"], request.match_info["ref"])
    return web.json_response({"commits": [c.to_json() for c in infos]})


@routes.get("/v1/repos/{repo}/commits/{ref}/lineage")
async def commit_lineage(request: web.Request) -> web.Response:
    """Direct provenance, full provenance (every upstream commit) and full subvenance."""
    found = await _svc(request).commit_lineage(
        request.match_info["repo"], request.match_info["ref"]
    )
    return web.json_response({k: [c.to_json() for c in v] for k, v in found.items()})


@routes.post("/v1/repos/{repo}/commits/{ref}/finish")
@endpoint(body=json_body({"description": TEXT, "error": TEXT}))
async def finish_commit(request: web.Request) -> web.Response:
    """Finish an open commit. Body: {description?, error?}."""
    body = await read_json(request)
    info = await _svc(request).finish_commit(
        request.match_info["repo"],
        request.match_info["ref"],
        description=field(body, "description", str, default=None),
        error=field(body, "error", str, default=None),
    )
    return web.json_response(info.to_json())


@routes.get("/v1/repos/{repo}/commits/{ref}/wait")
@endpoint(query=[Query("timeout", SECONDS)])
async def wait_commit(request: web.Request) -> web.Response:
    """Block until the commit is finished (?timeout=seconds)."""
    timeout = query_seconds(request, "timeout")
    info = await while_connected(
        request,
        _svc(request).wait_commit(
            request.match_info["repo"], request.match_info["ref"], timeout, request.app[BUS]
        ),
    )
    return web.json_response(info.to_json())


@routes.delete("/v1/repos/{repo}/commits/{ref}")
async def delete_commit(request: web.Request) -> web.Response:
    """Delete an open commit (the branch head goes back to its parent)."""
    await _svc(request).delete_commit(request.match_info["repo"], request.match_info["ref"])
    return web.json_response({})


@routes.post("/v1/repos/{repo}/commits/{ref}/squash")
@endpoint()
async def squash_commit(request: web.Request) -> web.Response:
    """Remove a finished commit from history; its children keep their content."""
    await _svc(request).squash_commit(request.match_info["repo"], request.match_info["ref"])
    return web.json_response({})


# Commit sets: one id across repos (Pachyderm 2's global IDs)


@routes.get("/v1/commitsets/{commit_set}")
async def inspect_commit_set(request: web.Request) -> web.Response:
    """A commit set: its commits in every repo, the branches it will still reach, its state."""
    info = await _svc(request).inspect_commit_set(request.match_info["commit_set"])
    return web.json_response(info.to_json())


@routes.get("/v1/commitsets/{commit_set}/wait")
@endpoint(query=[Query("timeout", SECONDS)])
async def wait_commit_set(request: web.Request) -> web.Response:
    """Block until every commit of the set is finished, those of downstream pipelines it
    will trigger included, or one failed (?timeout=seconds)."""
    timeout = query_seconds(request, "timeout")
    info = await while_connected(
        request,
        _svc(request).wait_commit_set(request.match_info["commit_set"], timeout, request.app[BUS]),
    )
    return web.json_response(info.to_json())


@routes.delete("/v1/commitsets/{commit_set}")
async def delete_commit_set(request: web.Request) -> web.Response:
    """Delete every commit of an open set (all or none)."""
    deleted = await _svc(request).delete_commit_set(request.match_info["commit_set"])
    return web.json_response({"commits": [c.to_json() for c in deleted]})


@routes.post("/v1/commitsets/{commit_set}/squash")
@endpoint()
async def squash_commit_set(request: web.Request) -> web.Response:
    """Squash every commit of a finished set (all or none)."""
    squashed = await _svc(request).squash_commit_set(request.match_info["commit_set"])
    return web.json_response({"commits": [c.to_json() for c in squashed]})


@routes.get("/v1/repos/{repo}/branches/{branch}/subscribe")
@endpoint(query=[flag("all", "existing finished commits first")])
async def subscribe_commits(request: web.Request) -> web.StreamResponse:
    """Stream finished commits of a branch as NDJSON, as they happen (?all=true: existing first)."""
    svc = _svc(request)
    repo, branch = request.match_info["repo"], request.match_info["branch"]
    await svc.inspect_branch(repo, branch)
    bus = request.app[BUS]
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    seen: set[str] = set()

    async def send(info: CommitInfo) -> None:
        if info.id not in seen and info.state == "finished":
            seen.add(info.id)
            await response.write(json.dumps(info.to_json()).encode() + b"\n")

    async with bus.subscribe_events(
        subject_filter(svc.config.nats_prefix, "commit.finished", repo), deliver="new"
    ) as events:
        if query_bool(request, "all"):
            commits: list[CommitInfo] = []
            cursor = None
            while True:
                page, cursor = await svc.list_commits(repo, branch, 1000, cursor)
                commits.extend(page)
                if cursor is None:
                    break
            for info in reversed(commits):
                await send(info)
        stream = aiter(events)
        while not request.app[STOPPING].is_set():
            try:
                event = await asyncio.wait_for(anext(stream), HEARTBEAT_S)
            except TimeoutError:
                # A blank line keeps proxies from timing out and notices a reader that left.
                if request.transport is None or request.transport.is_closing():
                    break
                await response.write(b"\n")
                continue
            payload = event.payload
            if isinstance(payload, CommitFinished) and payload.branch == branch:
                await send(await svc.inspect_commit(repo, payload.commit))
    return response


# Files


@routes.post("/v1/repos/{repo}/branches/{branch}/files")
@endpoint(
    body=Body({CONTENT_TYPE: {"type": "string", "format": "binary"}}, max_bytes=None),
    query=[flag("append"), Query("description", TEXT)],
    status=201,
)
async def put_files(request: web.Request) -> web.Response:
    """Upload files (body: application/x-tusk-files stream) into one commit on the branch."""
    result = await _svc(request).put_files(
        request.match_info["repo"],
        request.match_info["branch"],
        FileStreamReader(request.content),
        append=query_bool(request, "append"),
        description=request.query.get("description", ""),
    )
    return web.json_response(result.to_json(), status=201)


@routes.post("/v1/repos/{repo}/branches/{branch}/entries")
@endpoint(
    body=json_body(
        {
            "commit": STRING,
            "origin": _ORIGIN,
            "changes": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"path": FILE_PATH, "entry": {**_FILE_ENTRY, "nullable": True}},
                    "required": ["path"],
                },
            },
        },
        required=["changes"],
        max_bytes=ENTRIES_BODY_LIMIT,
    ),
    status=201,
)
async def put_entries(request: web.Request) -> web.Response:
    """Land already-stored files by reference. Body: {commit?, origin?, changes: [{path,
    entry|null}]}."""
    body = await read_json(request)
    raw = field(body, "changes", list)
    try:
        changes = [
            (
                str(c["path"]),
                FileEntry.from_json(c["entry"]) if c.get("entry") is not None else None,
            )
            for c in raw
        ]
    except (TypeError, KeyError):
        raise InvalidArgument("field changes: expected [{path, entry}]") from None
    result = await _svc(request).put_entries(
        request.match_info["repo"],
        request.match_info["branch"],
        changes,
        commit=field(body, "commit", str, default=None),
        origin=_origin(body),
    )
    return web.json_response(result.to_json(), status=201)


@routes.delete("/v1/repos/{repo}/branches/{branch}/files/{path:.*}")
async def delete_file(request: web.Request) -> web.Response:
    """Delete a file or a directory (recursively) from the branch."""
    result = await _svc(request).delete_file(
        request.match_info["repo"], request.match_info["branch"], _path(request)
    )
    return web.json_response(result.to_json())


@routes.post("/v1/repos/{repo}/branches/{branch}/copy")
@endpoint(
    body=json_body(
        {
            "src_repo": NAME,
            "src_ref": REF,
            "src_path": FILE_PATH,
            "path": FILE_PATH,
            "append": BOOLEAN,
        },
        required=["src_repo", "src_ref", "src_path", "path"],
    ),
    status=201,
)
async def copy_file(request: web.Request) -> web.Response:
    """Copy files between commits without copying bytes. Body: {src_repo, src_ref, src_path, path, append?}."""
    body = await read_json(request)
    result = await _svc(request).copy_file(
        field(body, "src_repo", str),
        field(body, "src_ref", str),
        field(body, "src_path", str),
        request.match_info["repo"],
        request.match_info["branch"],
        field(body, "path", str),
        append=field(body, "append", bool, default=False),
    )
    return web.json_response(result.to_json(), status=201)


@routes.get("/v1/repos/{repo}/commits/{ref}/files/{path:.*}")
@endpoint(
    query=[
        flag("recursive", "the tree under the path, as application/x-tusk-files"),
        Query("offset", integer(0, 1 << 62)),
        Query("length", integer(0, 1 << 62)),
    ]
)
async def get_file(request: web.Request) -> web.StreamResponse:
    """Read a file (raw bytes; ?offset=&length=) or, with ?recursive=true, a tree as x-tusk-files."""
    svc = _svc(request)
    repo, ref, path = request.match_info["repo"], request.match_info["ref"], _path(request)
    if query_bool(request, "recursive"):
        return await _get_tree(request, svc, repo, ref, path)
    offset = query_int(request, "offset", 0, low=0, high=1 << 62)
    length_raw = request.query.get("length")
    length = query_int(request, "length", 0, low=0, high=1 << 62) if length_raw else None
    size, reader = await svc.open_file(repo, ref, path, offset, length)
    blocks = reader()
    # The first chunk is read before the status line goes out, so a file whose bytes are
    # lost from the start is a clean 500, not a 200. A chunk lost further on can only
    # break the connection off (error_middleware), short of the Content-Length.
    first = await anext(blocks, b"")
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = size
    await response.prepare(request)
    await response.write(first)
    async for data in blocks:
        await response.write(data)
    await response.write_eof()
    return response


async def _get_tree(
    request: web.Request, svc: PfsService, repo: str, ref: str, path: str
) -> web.StreamResponse:
    files = svc.walk_files(repo, ref, path)
    first = await anext(files, None)  # errors (not found, open commit) before the 200
    response = web.StreamResponse(headers={"Content-Type": CONTENT_TYPE})
    await response.prepare(request)

    async def send(key: str, entry: Any) -> None:
        await response.write(encode_header({"path": key, "size": entry.size}))
        async for data in svc.read_entry(entry, f"{repo}@{ref}:{key}"):
            await response.write(encode_block(data))
        await response.write(encode_block(b""))

    if first is not None:
        await send(*first)
        async for key, entry in files:
            await send(key, entry)
    await response.write(encode_header({"end": True}))
    await response.write_eof()
    return response


@routes.get("/v1/repos/{repo}/commits/{ref}/entry/{path:.*}")
async def file_entry(request: web.Request) -> web.Response:
    """A file's chunk list (FileEntry), for data-plane readers of the object store."""
    commit, entry = await _svc(request).file_entry(
        request.match_info["repo"], request.match_info["ref"], _path(request)
    )
    return web.json_response({"path": _path(request), "commit": commit, "entry": entry.to_json()})


@routes.get("/v1/repos/{repo}/commits/{ref}/inspect/{path:.*}")
async def inspect_file(request: web.Request) -> web.Response:
    """Inspect a file or directory."""
    info = await _svc(request).inspect_file(
        request.match_info["repo"], request.match_info["ref"], _path(request)
    )
    return web.json_response(info.to_json())


@routes.get("/v1/repos/{repo}/commits/{ref}/list/{path:.*}")
@endpoint(
    query=[
        Query("after", STRING, "the cursor a previous page returned"),
        Query("limit", integer(1, 100000)),
    ]
)
async def list_files(request: web.Request) -> web.Response:
    """List a directory's children, one page (?limit=&after=<name>)."""
    files, cursor = await _svc(request).list_files(
        request.match_info["repo"],
        request.match_info["ref"],
        _path(request),
        after=request.query.get("after") or None,
        limit=query_int(request, "limit", 1000, low=1, high=100000),
    )
    return web.json_response({"files": [f.to_json() for f in files], "next": cursor})


@routes.get("/v1/repos/{repo}/commits/{ref}/paths")
@endpoint(
    query=[
        Query("prefix", FILE_PATH, "a string prefix of paths, starting with '/'", required=True),
        Query("after", FILE_PATH, "list paths after this one (exclusive)"),
        Query("delimiter", STRING, "roll paths up at the first delimiter past the prefix"),
        Query("limit", integer(1, 10000)),
    ]
)
async def list_paths(request: web.Request) -> web.Response:
    """Paths starting with a string prefix, one page, rolled up at a delimiter (S3's listing).

    The page's last item (a path or a prefix) is the next page's ``after`` when ``truncated``.
    """
    info, files, prefixes, truncated = await _svc(request).list_paths(
        request.match_info["repo"],
        request.match_info["ref"],
        request.query.get("prefix", "/"),
        after=request.query.get("after") or None,
        delimiter=request.query.get("delimiter") or None,
        limit=query_int(request, "limit", 1000, low=1, high=10000),
    )
    return web.json_response(
        {
            "commit": info.to_json(),
            "files": [f.to_json() for f in files],
            "prefixes": prefixes,
            "truncated": truncated,
        }
    )


@routes.get("/v1/repos/{repo}/commits/{ref}/glob")
@endpoint(query=[Query("pattern", STRING, "a Pachyderm glob", required=True)])
async def glob_files(request: web.Request) -> web.Response:
    """Files and directories matching a Pachyderm glob (?pattern=)."""
    pattern = request.query.get("pattern")
    if not pattern:
        raise InvalidArgument("query parameter pattern is required")
    files = await _svc(request).glob_files(
        request.match_info["repo"], request.match_info["ref"], pattern
    )
    return web.json_response({"files": [f.to_json() for f in files]})


@routes.get("/v1/repos/{repo}/commits/{ref}/diff")
@endpoint(
    query=[
        Query("path", FILE_PATH),
        Query("old_repo", NAME),
        Query("old_ref", REF),
        Query("old_path", FILE_PATH),
    ]
)
async def diff_files(request: web.Request) -> web.Response:
    """Changes from old (default: the parent) to this commit (?path=&old_repo=&old_ref=&old_path=)."""
    changes = await _svc(request).diff_files(
        request.match_info["repo"],
        request.match_info["ref"],
        request.query.get("path", "/"),
        request.query.get("old_repo") or None,
        request.query.get("old_ref") or None,
        request.query.get("old_path") or None,
    )
    return web.json_response({"changes": [c.to_json() for c in changes]})


# Merge and revert


@routes.post("/v1/repos/{repo}/branches/{branch}/merge")
@endpoint(
    body=json_body(
        {"source": NAME, "strategy": {"enum": list(STRATEGIES)}, "message": TEXT},
        required=["source"],
    )
)
async def merge_branch(request: web.Request) -> web.Response:
    """Merge branch ``source`` into this branch. Body: {source, strategy?: source|dest, message?}.

    Answers {result: fast-forward|merge|up-to-date, commit}; conflicts are a 409 listing paths.
    """
    body = await read_json(request)
    strategy = field(body, "strategy", str, default=None)
    if strategy is not None and strategy not in STRATEGIES:
        raise InvalidArgument(f"field strategy: expected one of {', '.join(STRATEGIES)}")
    chosen: Strategy | None = (
        None if strategy is None else ("source" if strategy == "source" else "dest")
    )
    result, info = await _svc(request).merge_branch(
        request.match_info["repo"],
        field(body, "source", str),
        request.match_info["branch"],
        strategy=chosen,
        message=field(body, "message", str, default=""),
    )
    return web.json_response({"result": result, "commit": info.to_json()})


@routes.post("/v1/repos/{repo}/commits/{ref}/revert")
@endpoint(body=json_body({"branch": NAME, "message": TEXT}))
async def revert_commit(request: web.Request) -> web.Response:
    """A new commit undoing this commit's changes. Body: {branch?, message?}."""
    body = await read_json(request)
    info = await _svc(request).revert_commit(
        request.match_info["repo"],
        request.match_info["ref"],
        field(body, "branch", str, default=None),
        field(body, "message", str, default=""),
    )
    return web.json_response(info.to_json())


# Storage checks


@routes.get("/v1/fsck")
@endpoint(query=[Query("repo", NAME, "check only this repo")])
async def fsck(request: web.Request) -> web.Response:
    """Verify every finished commit's index nodes and chunks, branch heads and provenance."""
    svc = _svc(request)
    report = await check_storage(svc.pool, svc.store, request.query.get("repo") or None)
    return web.json_response(report.to_json())


@routes.post("/v1/gc")
@endpoint(
    body=json_body(
        {"dry_run": BOOLEAN, "grace_s": {"type": "number", "minimum": 0}},
    )
)
async def garbage_collect(request: web.Request) -> web.Response:
    """Collect unreachable objects now. Body: {dry_run?, grace_s?} (default: configured grace)."""
    body = await read_json(request)
    grace = body.get("grace_s")
    if grace is not None and (isinstance(grace, bool) or not isinstance(grace, int | float)):
        raise InvalidArgument("field grace_s: expected a number of seconds")
    if grace is not None and grace < 0:
        raise InvalidArgument("field grace_s: must be 0 or more seconds")
    report = await request.app[COLLECTOR].collect(
        grace_s=None if grace is None else float(grace),
        dry_run=field(body, "dry_run", bool, default=False),
    )
    return web.json_response(report.to_json())
