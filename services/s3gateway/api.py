"""The S3 API: one catch-all route, dispatched on method, bucket, key and subresource the
way S3 does; errors rendered as S3 XML."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from services.s3gateway import listing, multipart, objects
from services.s3gateway.auth import AcceptAll, parse_signature
from services.s3gateway.buckets import Bucket, parse_bucket
from services.s3gateway.errors import S3Error, s3_status_and_code
from services.s3gateway.gateway import Gateway
from services.s3gateway.routing import Target, target_of, virtual_bucket
from services.s3gateway.uploads import Uploads
from services.s3gateway.xmlio import XML_TYPE, error_xml, location_xml, versioning_xml
from shared.platform.config import Config
from shared.platform.errors import (
    AlreadyExists,
    MisdirectedRequest,
    NotFound,
    PermissionDenied,
    TuskError,
)
from shared.platform.http import CLIENT_CLOSED_REQUEST, host_allowed

log = logging.getLogger("tusk.s3gateway")

GATEWAY: web.AppKey[Gateway] = web.AppKey("s3_gateway", Gateway)
UPLOADS: web.AppKey[Uploads] = web.AppKey("s3_uploads", Uploads)
REQUEST_ID = "x-amz-request-id"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Bucket subresources Tusk does not keep (ACLs, policies, tagging, …): S3's NotImplemented.
UNSUPPORTED_SUBRESOURCES = frozenset(
    {
        "acl",
        "policy",
        "tagging",
        "lifecycle",
        "cors",
        "website",
        "replication",
        "encryption",
        "object-lock",
        "notification",
        "logging",
        "accelerate",
        "requestPayment",
        "analytics",
        "inventory",
        "metrics",
        "intelligent-tiering",
        "ownershipControls",
        "publicAccessBlock",
        "retention",
        "legal-hold",
        "torrent",
        "restore",
        "select",
        "attributes",
        "versions",
    }
)


def domains(config: Config) -> tuple[str, ...]:
    return ("localhost", *config.s3gateway_domains)


def _started(request: web.Request) -> bool:
    return request.writer is not None and request.writer.output_size > 0


@web.middleware
async def s3_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every refusal as S3's ``<Error>``; a failure after the status went out breaks the
    connection off (an error body would be taken for the rest of the object)."""
    request_id = uuid.uuid4().hex[:16].upper()
    try:
        response = await handler(request)
    except TuskError as exc:
        if _started(request):
            log.error("%s %s broke off: %s", request.method, request.path, exc.message)
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=500)
        status, code = s3_status_and_code(exc)
        if status >= 500:
            log.error("%s %s: %s", request.method, request.path, exc.message)
        body = error_xml(code, exc.message, request.path, request_id, **exc.details)
        response = web.Response(status=status, body=body, content_type=XML_TYPE)
    except (ConnectionResetError, TimeoutError):
        raise
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = "EntityTooLarge" if exc.status == 413 else "InvalidRequest"
        body = error_xml(code, exc.reason, request.path, request_id)
        response = web.Response(status=exc.status, body=body, content_type=XML_TYPE)
    except Exception:
        if _started(request):
            log.exception("%s %s broke off", request.method, request.path)
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=500)
        log.exception("unexpected error in %s %s", request.method, request.path)
        body = error_xml(
            "InternalError",
            "We encountered an internal error. Please try again.",
            request.path,
            request_id,
        )
        response = web.Response(status=500, body=body, content_type=XML_TYPE)
    if not response.prepared:
        response.headers[REQUEST_ID] = request_id
    return response


def guard(config: Config) -> Middleware:
    """Host and Origin, as every Tusk service checks them (DNS rebinding, foreign pages);
    a virtual-hosted ``BUCKET.<domain>`` counts as its domain."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host")
        if (
            host is not None
            and not host_allowed(host, config.allowed_hosts)
            and virtual_bucket(host, domains(config)) is None
        ):
            raise MisdirectedRequest(
                f"this gateway does not answer to the host name {host!r}; add it to "
                "allowed_hosts (or its domain to s3gateway_domains) if it is yours"
            )
        origin = request.headers.get("Origin")
        if request.method not in ("GET", "HEAD") and origin is not None:
            allowed = {o.rstrip("/") for o in config.allowed_origins}
            own = f"{request.scheme}://{host}"
            if origin.rstrip("/") not in allowed and origin.rstrip("/") != own:
                raise PermissionDenied(
                    f"{request.method} from the web page at {origin!r} is refused"
                )
        return await handler(request)

    return check


async def dispatch(request: web.Request) -> web.StreamResponse:
    config = request.app[GATEWAY].config
    target = target_of(request.headers.get("Host"), request.raw_path, domains(config))
    if target.bucket in ("healthz", "readyz") and target.key is None:
        return await health(request, target.bucket)
    signature = parse_signature(request.headers, request.query)
    if not AcceptAll().allow(signature, request.method, target.bucket):
        raise S3Error(403, "AccessDenied", "Access Denied")
    gw, uploads = request.app[GATEWAY], request.app[UPLOADS]
    if target.bucket is None:
        if request.method in ("GET", "HEAD"):
            return await listing.list_buckets(gw)
        raise S3Error(
            405, "MethodNotAllowed", "The specified method is not allowed against this resource."
        )
    bucket = parse_bucket(target.bucket)
    if target.key is None:
        return await bucket_operation(gw, uploads, request, bucket)
    return await object_operation(gw, uploads, request, bucket, target.key)


def _unsupported(request: web.Request) -> None:
    for name in request.query:
        if name in UNSUPPORTED_SUBRESOURCES:
            raise S3Error(501, "NotImplemented", f"Tusk does not keep the {name} subresource")


async def bucket_operation(
    gw: Gateway, uploads: Uploads, request: web.Request, bucket: Bucket
) -> web.StreamResponse:
    query, method = request.query, request.method
    _unsupported(request)
    if method == "GET":
        if "location" in query:
            await gw.require_bucket(bucket)
            return web.Response(body=location_xml(), content_type=XML_TYPE)
        if "versioning" in query:
            await gw.require_bucket(bucket)
            return web.Response(body=versioning_xml(), content_type=XML_TYPE)
        if "uploads" in query:
            return await multipart.list_uploads(gw, uploads, request, bucket)
        if query.get("list-type") == "2":
            return await listing.list_objects_v2(gw, request, bucket)
        return await listing.list_objects_v1(gw, request, bucket)
    if method == "HEAD":
        await gw.require_bucket(bucket)
        return web.Response(headers={"x-amz-bucket-region": "us-east-1"})
    if method == "POST" and "delete" in query:
        return await objects.delete_objects(gw, request, bucket)
    if method == "PUT":
        return await create_bucket(gw, bucket)
    if method == "DELETE":
        return await delete_bucket(gw, bucket)
    raise S3Error(
        405, "MethodNotAllowed", "The specified method is not allowed against this resource."
    )


async def create_bucket(gw: Gateway, bucket: Bucket) -> web.Response:
    """Make the branch (and its repo if needed), as Pachyderm's gateway does."""
    gw.require_writable(bucket)
    with contextlib.suppress(AlreadyExists):
        await gw.pfs.create_repo(bucket.repo)
    try:
        await gw.pfs.inspect_branch(bucket.repo, bucket.branch)
    except NotFound:
        await gw.pfs.create_branch(bucket.repo, bucket.branch)
    else:
        raise S3Error(
            409,
            "BucketAlreadyOwnedByYou",
            "Your previous request to create the named bucket succeeded and you already own it.",
            BucketName=bucket.name,
        )
    return web.Response(headers={"Location": f"/{bucket.name}"})


async def delete_bucket(gw: Gateway, bucket: Bucket) -> web.Response:
    """Delete the branch (its commits stay, reachable by id); the repo stays."""
    gw.require_writable(bucket)
    await gw.require_bucket(bucket)
    await gw.pfs.delete_branch(bucket.repo, bucket.branch)
    return web.Response(status=204)


async def object_operation(
    gw: Gateway, uploads: Uploads, request: web.Request, bucket: Bucket, key: str
) -> web.StreamResponse:
    query, method = request.query, request.method
    _unsupported(request)
    if method == "GET":
        if "uploadId" in query:
            return await multipart.list_parts(gw, uploads, request, bucket, key)
        return await objects.get_object(gw, request, bucket, key, head=False)
    if method == "HEAD":
        return await objects.get_object(gw, request, bucket, key, head=True)
    if method == "PUT":
        if "uploadId" in query:
            return await multipart.upload_part(gw, uploads, request, bucket, key)
        return await objects.put_object(gw, request, bucket, key)
    if method == "POST":
        if "uploads" in query:
            return await multipart.create_upload(gw, uploads, bucket, key)
        if "uploadId" in query:
            return await multipart.complete_upload(gw, uploads, request, bucket, key)
    if method == "DELETE":
        if "uploadId" in query:
            return await multipart.abort_upload(gw, uploads, request, bucket, key)
        return await objects.delete_object(gw, bucket, key)
    raise S3Error(
        405, "MethodNotAllowed", "The specified method is not allowed against this resource."
    )


async def health(request: web.Request, which: str) -> web.Response:
    """/healthz: the process serves; /readyz: PFS answers too."""
    config = request.app[GATEWAY].config
    if which == "healthz":
        return web.json_response({"status": "ok", "cluster": config.cluster_id})
    ready = True
    try:
        await request.app[GATEWAY].pfs.request("GET", "/readyz")
    except TuskError:
        ready = False
    return web.json_response(
        {"status": "ready" if ready else "not ready"}, status=200 if ready else 503
    )


__all__ = [
    "CLIENT_CLOSED_REQUEST",
    "GATEWAY",
    "UPLOADS",
    "Target",
    "dispatch",
    "guard",
    "s3_errors",
]
