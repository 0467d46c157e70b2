"""Importing a ``docker save`` archive or an OCI image layout tar into the cache, for
machines without registry access (``tusk image load FILE.tar``).

``docker save`` writes ``manifest.json`` (config and layer paths per image, with its
tags) and uncompressed layer tars; an OCI layout has ``index.json`` and
``blobs/sha256/``. Either way every blob is copied into the cache under its digest,
computed while copying; a ``docker save`` image gets a Docker v2 manifest made here, so
both kinds are the same to the rest of the cache.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any

from shared.images.manifests import (
    DOCKER_MANIFEST,
    Index,
    Manifest,
    parse_manifest,
    select_platform,
    this_platform,
)
from shared.images.reference import parse_reference
from shared.images.store import Image, ImageStore
from shared.platform.errors import InvalidArgument, NotFound

_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
_CONFIG = "application/vnd.docker.container.image.v1+json"
_REF_ANNOTATIONS = ("io.containerd.image.name", "org.opencontainers.image.ref.name")
_CHUNK = 1 << 20


def load_archive(store: ImageStore, path: Path) -> list[Image]:
    """Every image in the archive at ``path``, now in ``store``."""
    try:
        with tarfile.open(path, "r:*") as archive:
            names = {_clean(m.name): m for m in archive.getmembers() if m.isfile()}
            if "index.json" in names:
                return _load_oci(store, archive, names)
            if "manifest.json" in names:
                return _load_docker(store, archive, names)
    except tarfile.TarError:
        raise InvalidArgument(f"{path}: not a tar archive") from None
    except OSError as exc:
        raise InvalidArgument(f"{path}: cannot read it: {exc.strerror or exc}") from None
    raise InvalidArgument(f"{path}: neither a docker save archive nor an OCI image layout")


def _load_docker(
    store: ImageStore, archive: tarfile.TarFile, names: dict[str, tarfile.TarInfo]
) -> list[Image]:
    entries = _json(_read(archive, names, "manifest.json"), "manifest.json")
    if not isinstance(entries, list):
        raise InvalidArgument("manifest.json is not a list of images")
    images = []
    for entry in entries:
        config = _read(archive, names, str(entry.get("Config", "")))
        config_digest = store.put_blob_bytes(config)
        layers = []
        for layer in entry.get("Layers") or []:
            digest, size = _copy_blob(store, archive, names, str(layer))
            layers.append({"mediaType": _LAYER_TAR, "digest": digest, "size": size})
        manifest = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": _CONFIG, "digest": config_digest, "size": len(config)},
            "layers": layers,
        }
        digest = store.put_blob_bytes(json.dumps(manifest, separators=(",", ":")).encode())
        references = [str(parse_reference(tag)) for tag in entry.get("RepoTags") or []]
        images.append(store.add_image(digest, references))
    return images


def _load_oci(
    store: ImageStore, archive: tarfile.TarFile, names: dict[str, tarfile.TarInfo]
) -> list[Image]:
    index = _json(_read(archive, names, "index.json"), "index.json")
    images = []
    for entry in index.get("manifests") or []:
        annotations = entry.get("annotations") or {}
        references = [
            str(parse_reference(annotations[key]))
            for key in _REF_ANNOTATIONS
            if key in annotations and ("/" in annotations[key] or ":" in annotations[key])
        ][:1]
        digest = str(entry.get("digest", ""))
        document = parse_manifest(_blob(store, archive, names, digest), entry.get("mediaType"))
        if isinstance(document, Index):
            digest = select_platform(document, this_platform()).digest
            document = parse_manifest(_blob(store, archive, names, digest), None)
        assert isinstance(document, Manifest)
        for descriptor in (document.config, *document.layers):
            _copy_blob(store, archive, names, _blob_name(descriptor.digest), descriptor.digest)
        images.append(store.add_image(digest, references))
    return images


def _blob(
    store: ImageStore, archive: tarfile.TarFile, names: dict[str, tarfile.TarInfo], digest: str
) -> bytes:
    data = _read(archive, names, _blob_name(digest))
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise InvalidArgument(f"blob {digest} in the archive does not match its digest")
    store.put_blob_bytes(data)
    return data


def _copy_blob(
    store: ImageStore,
    archive: tarfile.TarFile,
    names: dict[str, tarfile.TarInfo],
    name: str,
    expected: str | None = None,
) -> tuple[str, int]:
    """Copy member ``name`` into the cache; its digest, checked against ``expected``."""
    member = names.get(_clean(name))
    source = archive.extractfile(member) if member is not None else None
    if source is None:
        raise NotFound(f"the archive has no {name}")
    scratch = store.scratch_file()
    hasher = hashlib.sha256()
    size = 0
    try:
        with open(scratch, "xb") as out:
            while piece := source.read(_CHUNK):
                hasher.update(piece)
                out.write(piece)
                size += len(piece)
        digest = "sha256:" + hasher.hexdigest()
        if expected is not None and digest != expected:
            raise InvalidArgument(f"blob {expected} in the archive does not match its digest")
        store.put_blob_file(scratch, digest)
    finally:
        scratch.unlink(missing_ok=True)
    return digest, size


def _read(archive: tarfile.TarFile, names: dict[str, tarfile.TarInfo], name: str) -> bytes:
    member = names.get(_clean(name))
    source = archive.extractfile(member) if member is not None else None
    if source is None:
        raise NotFound(f"the archive has no {name!r}")
    return source.read()


def _blob_name(digest: str) -> str:
    algorithm, _, value = digest.partition(":")
    return f"blobs/{algorithm}/{value}"


def _clean(name: str) -> str:
    return str(PurePosixPath(*[p for p in name.split("/") if p not in ("", ".")]))


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise InvalidArgument(f"{what} in the archive is not JSON") from None
