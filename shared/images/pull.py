"""Getting an image into the cache: from the cache itself when it is there, else from its
registry (manifest → this platform's manifest → config → layers, each digest checked),
then its root built once. Errors name the registry's reason, in our error tree."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping

import aiohttp

from shared.images.credentials import Credentials, lookup
from shared.images.manifests import (
    Index,
    Manifest,
    Platform,
    parse_config,
    parse_manifest,
    select_platform,
    this_platform,
)
from shared.images.reference import DEFAULT_TAG, ImageReference, parse_reference
from shared.images.registry import RegistryClient, verify
from shared.images.store import Image, ImageStore
from shared.platform.errors import FailedPrecondition, InvalidArgument, TuskError, Unavailable

log = logging.getLogger("tusk.images")

# Layers downloaded at once.
PARALLEL_BLOBS = 3


async def obtain_image(
    store: ImageStore,
    text: str,
    session: aiohttp.ClientSession,
    credentials: Mapping[str, Credentials] | None = None,
    *,
    platform: Platform | None = None,
) -> Image:
    """The image ``text`` names, pulled if needed. As Kubernetes' default pull policy:
    a digest or a tag other than ``latest`` already cached is used as it is; ``latest``
    is asked of the registry again (the cached copy serves when the registry is away)."""
    reference = parse_reference(text)
    cached = _cached(store, reference)
    if cached is not None and reference.tag != DEFAULT_TAG:
        store.touch(cached)
        return store.image(cached)
    try:
        return await pull(store, reference, session, credentials, platform=platform)
    except Unavailable as exc:
        if cached is None:
            raise
        log.warning("%s: %s; using the cached copy", reference, exc.message)
        store.touch(cached)
        return store.image(cached)


async def pull(
    store: ImageStore,
    reference: ImageReference,
    session: aiohttp.ClientSession,
    credentials: Mapping[str, Credentials] | None = None,
    *,
    platform: Platform | None = None,
) -> Image:
    wanted = platform or this_platform()
    client = RegistryClient(session, reference, lookup(credentials or {}, reference.api_host))
    body, media_type, _ = await client.manifest(reference.version)
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    if reference.digest is not None:
        verify(reference.digest, digest.removeprefix("sha256:"))
    document = parse_manifest(body, media_type)
    if isinstance(document, Index):
        chosen = select_platform(document, wanted)
        body, media_type, _ = await client.manifest(chosen.digest)
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        verify(chosen.digest, digest.removeprefix("sha256:"))
        document = parse_manifest(body, media_type)
        if not isinstance(document, Manifest):
            raise InvalidArgument("a manifest list names another manifest list")
    manifest = document
    config_bytes = await client.blob_bytes(manifest.config.digest)
    config = parse_config(config_bytes)
    if config.platform is not None and (
        config.platform.os != wanted.os or config.platform.architecture != wanted.architecture
    ):
        raise FailedPrecondition(f"the image is for {config.platform}, this machine is {wanted}")
    store.put_blob_bytes(config_bytes)
    limit = asyncio.Semaphore(PARALLEL_BLOBS)

    async def fetch(layer_digest: str, size: int) -> None:
        async with limit:
            if not store.has_blob(layer_digest):
                scratch = store.scratch_file()
                await client.blob_to(layer_digest, size, scratch)
                store.put_blob_file(scratch, layer_digest)
            # Unpacked at once, beside the other downloads (zlib and sha256 leave the GIL).
            await asyncio.to_thread(store.unpacked, layer_digest)

    try:
        async with asyncio.TaskGroup() as group:
            for layer in manifest.layers:
                group.create_task(fetch(layer.digest, layer.size))
    except* TuskError as failures:
        # One reason is enough for the user: the first layer that could not be had.
        raise failures.exceptions[0] from None
    store.put_blob_bytes(body)
    names = [str(reference)]
    if reference.digest is None:
        names.append(f"{reference.registry}/{reference.repository}@{digest}")
    return await asyncio.to_thread(store.add_image, digest, names)


def _cached(store: ImageStore, reference: ImageReference) -> str | None:
    if reference.digest is not None:
        for record in store.records():
            if record.digest == reference.digest or str(reference) in record.references:
                return record.digest
        return None
    found = store.find(str(reference))
    return found.digest if found is not None else None
