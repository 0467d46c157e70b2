"""Manifests, manifest lists and image configs (OCI image spec and Docker v2 schema 2):
which of them a registry sent, which entry of a list fits this machine, and what a
config says about running the image. Pure: bytes in, records out."""

from __future__ import annotations

import json
import platform
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.platform.errors import FailedPrecondition, InvalidArgument

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
# What a pull accepts, in the Accept header.
ACCEPTED = (*INDEX_TYPES, *MANIFEST_TYPES)

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# Python's names for machines → the GOARCH names images use.
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
         "armv7l": "arm", "i686": "386", "i386": "386", "ppc64le": "ppc64le",
         "s390x": "s390x", "riscv64": "riscv64"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text


def this_platform() -> Platform:
    machine = platform.machine().lower()
    variant = "v7" if machine == "armv7l" else ("v8" if machine in ("aarch64", "arm64") else None)
    return Platform("linux", _ARCH.get(machine, machine), variant)


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A content reference: media type, digest, size (and, in lists, a platform)."""

    media_type: str
    digest: str
    size: int
    platform: Platform | None = None


@dataclass(frozen=True, slots=True)
class Manifest:
    """One image: its config blob and its layers, bottom first."""

    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True, slots=True)
class Index:
    """A manifest list / OCI index: one manifest per platform."""

    manifests: tuple[Descriptor, ...]


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """What the image's config says about running it."""

    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    diff_ids: tuple[str, ...] = ()
    platform: Platform | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def environment(self) -> dict[str, str]:
        """``Env`` as a mapping (an entry without ``=`` is an empty variable, as Docker)."""
        result: dict[str, str] = {}
        for entry in self.env:
            name, _, value = entry.partition("=")
            if name:
                result[name] = value
        return result


def parse_manifest(data: bytes, media_type: str | None) -> Manifest | Index:
    """A manifest or an index from a registry's body; ``media_type`` is the response's
    Content-Type, the body's own ``mediaType`` when the header is vague."""
    body = _json(data, "manifest")
    kind = body.get("mediaType") or media_type or ""
    if kind not in ACCEPTED and media_type in ACCEPTED:
        kind = media_type
    if kind not in ACCEPTED:
        # An OCI manifest may omit mediaType: its fields tell.
        if "manifests" in body:
            kind = OCI_INDEX
        elif "layers" in body and "config" in body:
            kind = OCI_MANIFEST
        elif body.get("schemaVersion") == 1:
            raise FailedPrecondition(
                "Docker schema 1 manifests are not supported (push the "
                "image again with a current client)"
            )
        else:
            raise InvalidArgument(f"unsupported manifest type {kind or media_type!r}")
    if kind in INDEX_TYPES:
        return Index(tuple(_descriptor(d, with_platform=True) for d in _list(body, "manifests")))
    config = body.get("config")
    if not isinstance(config, dict):
        raise InvalidArgument("manifest has no config")
    return Manifest(_descriptor(config), tuple(_descriptor(d) for d in _list(body, "layers")))


def select_platform(index: Index, wanted: Platform) -> Descriptor:
    """The index's manifest for ``wanted``: same os and architecture; the same variant if
    listed, else one without a variant. Attestations (``unknown/unknown``) never match."""
    fitting = [
        d for d in index.manifests
        if d.platform is not None and d.platform.os == wanted.os
        and d.platform.architecture == wanted.architecture and d.media_type in ("", *ACCEPTED)
    ]  # fmt: skip
    for candidate in fitting:
        if candidate.platform is not None and candidate.platform.variant == wanted.variant:
            return candidate
    for candidate in fitting:
        if candidate.platform is not None and candidate.platform.variant is None:
            return candidate
    if fitting:
        return fitting[0]
    offered = sorted({str(d.platform) for d in index.manifests if d.platform is not None})
    raise FailedPrecondition(
        f"no manifest for platform {wanted} (the image has {', '.join(offered) or 'none'})"
    )


def parse_config(data: bytes) -> ImageConfig:
    body = _json(data, "image config")
    run = body.get("config") or {}
    if not isinstance(run, dict):
        raise InvalidArgument("image config: 'config' is not an object")
    rootfs = body.get("rootfs") or {}
    os_name, arch = body.get("os"), body.get("architecture")
    return ImageConfig(
        env=_strings(run.get("Env")),
        working_dir=str(run.get("WorkingDir") or ""),
        user=str(run.get("User") or ""),
        entrypoint=_strings(run.get("Entrypoint")),
        cmd=_strings(run.get("Cmd")),
        diff_ids=_strings(rootfs.get("diff_ids") if isinstance(rootfs, dict) else None),
        platform=Platform(os_name, arch, body.get("variant"))
        if isinstance(os_name, str) and isinstance(arch, str)
        else None,
    )


def check_digest(digest: str) -> str:
    """``digest`` if it is a sha256 digest (the only algorithm pulled), else refused."""
    if not _DIGEST.fullmatch(digest):
        raise InvalidArgument(f"unsupported digest {digest!r} (only sha256 is pulled)")
    return digest


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        body = json.loads(data)
    except ValueError as exc:
        raise InvalidArgument(f"{what} is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidArgument(f"{what} is not a JSON object")
    return body


def _list(body: Mapping[str, Any], key: str) -> Sequence[Any]:
    value = body.get(key)
    if not isinstance(value, list):
        raise InvalidArgument(f"manifest: {key!r} is not a list")
    return value


def _descriptor(value: Any, *, with_platform: bool = False) -> Descriptor:
    if not isinstance(value, dict):
        raise InvalidArgument("manifest: a descriptor is not an object")
    digest = value.get("digest")
    size = value.get("size")
    if not isinstance(digest, str) or not isinstance(size, int) or size < 0:
        raise InvalidArgument("manifest: a descriptor lacks its digest or size")
    found = None
    raw = value.get("platform")
    if with_platform and isinstance(raw, dict):
        found = Platform(str(raw.get("os", "")), str(raw.get("architecture", "")),
                         raw.get("variant") if isinstance(raw.get("variant"), str) else None)  # fmt: skip
    return Descriptor(str(value.get("mediaType") or ""), check_digest(digest), size, found)


def _strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(str(v) for v in value)
    raise InvalidArgument(f"image config: expected a list of strings, got {value!r}")
