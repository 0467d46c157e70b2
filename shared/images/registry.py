"""A client of the OCI distribution API (pull side): manifests and blobs, anonymous
bearer tokens from a ``WWW-Authenticate`` challenge as public registries hand them out,
Basic or token auth with credentials, every blob checked against its digest.

Plain HTTP only to loopback registries, as Docker does; every other registry is spoken
to over HTTPS. Every request has a deadline: a registry that does not answer is an
``Unavailable`` within seconds, never a hang. aiohttp's errors stop here.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from shared.images.credentials import Credentials
from shared.images.manifests import ACCEPTED
from shared.images.reference import ImageReference, is_loopback
from shared.platform.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    TuskError,
    Unavailable,
)

CONNECT_TIMEOUT = 5.0
# Longest silence while reading a body (a blob may take long in total, never stall).
READ_TIMEOUT = 30.0
MAX_MANIFEST = 4 << 20
_CHUNK = 1 << 20
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


class RegistryClient:
    """Pulls from one registry for one repository (tokens are scoped to it)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        reference: ImageReference,
        credentials: Credentials | None = None,
    ) -> None:
        self._session = session
        self._reference = reference
        self._credentials = credentials
        scheme = "http" if is_loopback(reference.api_host) else "https"
        self._base = f"{scheme}://{reference.api_host}/v2/{reference.repository}"
        self._authorization: str | None = None

    async def manifest(self, version: str) -> tuple[bytes, str, str | None]:
        """(body, media type, the registry's Docker-Content-Digest) of a manifest."""
        async with self._get(f"/manifests/{version}", {"Accept": ", ".join(ACCEPTED)}) as reply:
            if reply.content_length is not None and reply.content_length > MAX_MANIFEST:
                raise InvalidArgument(f"manifest of {reply.content_length} bytes is too large")
            body = await reply.content.read(MAX_MANIFEST + 1)
            if len(body) > MAX_MANIFEST:
                raise InvalidArgument("manifest is too large")
            media_type = reply.headers.get("Content-Type", "").split(";")[0].strip()
            return body, media_type, reply.headers.get("Docker-Content-Digest")

    async def blob_bytes(self, digest: str, limit: int = MAX_MANIFEST) -> bytes:
        """A small blob (a config) in memory, checked against ``digest``."""
        async with self._get(f"/blobs/{digest}", {}) as reply:
            data = await reply.content.read(limit + 1)
        if len(data) > limit:
            raise InvalidArgument(f"blob {digest} is larger than {limit} bytes")
        verify(digest, hashlib.sha256(data).hexdigest())
        return data

    async def blob_to(self, digest: str, size: int, target: Path) -> None:
        """Stream blob ``digest`` of ``size`` bytes into ``target`` (created), checking
        both while writing; a mismatch removes the file."""
        hasher = hashlib.sha256()
        written = 0
        try:
            async with self._get(f"/blobs/{digest}", {}) as reply:
                with open(target, "xb") as out:  # noqa: ASYNC230 (local disk, 1 MiB writes)
                    async for piece in reply.content.iter_chunked(_CHUNK):
                        written += len(piece)
                        if written > size:
                            raise InvalidArgument(f"blob {digest} is larger than its {size} bytes")
                        hasher.update(piece)
                        out.write(piece)
            if written != size:
                raise InvalidArgument(f"blob {digest}: got {written} bytes, expected {size}")
            verify(digest, hasher.hexdigest())
        except BaseException:
            target.unlink(missing_ok=True)  # noqa: ASYNC240 (one unlink, local disk)
            raise

    def _get(self, path: str, headers: Mapping[str, str]) -> _Request:
        return _Request(self, self._base + path, dict(headers))

    async def _open(self, url: str, headers: dict[str, str]) -> aiohttp.ClientResponse:
        for attempt in range(2):
            sent = dict(headers)
            if self._authorization is not None:
                sent["Authorization"] = self._authorization
            reply = await self._session.get(url, headers=sent, timeout=_TIMEOUT)
            if reply.status == 401 and attempt == 0:
                challenge = reply.headers.get("WWW-Authenticate", "")
                reply.release()
                self._authorization = await self._authorize(challenge)
                continue
            if reply.status >= 400:
                text = await reply.text(errors="replace")
                reply.release()
                raise _status_error(reply.status, text)
            return reply
        raise AssertionError("unreachable")

    async def _authorize(self, challenge: str) -> str:
        """The Authorization header a 401's challenge asks for."""
        scheme, _, rest = challenge.partition(" ")
        if scheme.lower() == "basic":
            if self._credentials is None:
                raise PermissionDenied("the registry wants a login; none is configured for it")
            return self._credentials.basic()
        if scheme.lower() != "bearer":
            raise PermissionDenied(f"the registry asks for unsupported auth {challenge!r}")
        params = dict(_CHALLENGE.findall(rest))
        realm = params.pop("realm", None)
        if not realm:
            raise PermissionDenied("the registry's auth challenge has no realm")
        params.setdefault("scope", f"repository:{self._reference.repository}:pull")
        headers = {"Authorization": self._credentials.basic()} if self._credentials else {}
        async with self._session.get(
            realm, params=params, headers=headers, timeout=_TIMEOUT
        ) as reply:
            if reply.status >= 400:
                raise _status_error(reply.status, await reply.text(errors="replace"), "token: ")
            body: Any = await reply.json(content_type=None)
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise PermissionDenied("the registry's token endpoint gave no token")
        return f"Bearer {token}"


_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT)


class _Request:
    """``async with`` one GET: auth retried once, statuses and transport errors mapped."""

    def __init__(self, client: RegistryClient, url: str, headers: dict[str, str]) -> None:
        self._client, self._url, self._headers = client, url, headers
        self._reply: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        try:
            self._reply = await self._client._open(self._url, self._headers)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _transport_error(exc) from None
        return self._reply

    async def __aexit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if self._reply is not None:
            self._reply.release()
        if isinstance(exc, (aiohttp.ClientError, TimeoutError)) and not isinstance(exc, TuskError):
            raise _transport_error(exc) from None


def verify(digest: str, sha256_hex: str) -> None:
    if digest != f"sha256:{sha256_hex}":
        raise InvalidArgument(f"digest mismatch: expected {digest}, got sha256:{sha256_hex}")


def _transport_error(exc: BaseException) -> TuskError:
    if isinstance(exc, TimeoutError):
        return Unavailable("the registry did not answer in time")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return Unavailable(f"cannot reach the registry: {exc.os_error.strerror or exc}")
    return Unavailable(f"registry connection failed: {exc}".rstrip(": "))


def _status_error(status: int, text: str, prefix: str = "") -> TuskError:
    """The registry's own words (its ``errors`` list) in our error tree."""
    reason = _registry_reason(text) or f"HTTP {status}"
    message = prefix + reason
    if status == 404:
        return NotFound(message)
    if status in (401, 403):
        return PermissionDenied(message)
    if status in (400, 405, 406, 415):
        return FailedPrecondition(message)
    return Unavailable(message)


def _registry_reason(text: str) -> str | None:
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip().splitlines()[0][:200] if text.strip() else None
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0]
        code, message = first.get("code"), first.get("message")
        return f"{code}: {message}" if code and message else str(code or message)
    return None
