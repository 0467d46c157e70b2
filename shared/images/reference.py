"""Image references as Docker spells them: ``[registry/]repository[:tag][@digest]``."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from shared.platform.errors import InvalidArgument

DOCKER_HUB = "docker.io"
# Where Docker Hub's distribution API answers (docker.io itself only redirects).
DOCKER_HUB_API = "registry-1.docker.io"
DEFAULT_TAG = "latest"

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}")
_HOST = re.compile(r"[a-zA-Z0-9.-]+|\[[0-9a-fA-F:.]+\]")


@dataclass(frozen=True, slots=True)
class ImageReference:
    """One image: ``registry`` (a host[:port] as written, ``docker.io`` for Docker Hub),
    ``repository`` (``library/ubuntu``), and a ``tag`` or a ``digest`` (a digest wins)."""

    registry: str
    repository: str
    tag: str | None = DEFAULT_TAG
    digest: str | None = None

    @property
    def api_host(self) -> str:
        """host[:port] that serves the distribution API."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def version(self) -> str:
        """What to ask the manifest endpoint for: the digest if pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str) -> ImageReference:
    """``ubuntu:22.04`` → docker.io/library/ubuntu:22.04; ``127.0.0.1:5000/x@sha256:…``
    → that registry and digest. A malformed name is refused with the reason."""
    name = text.strip()
    if not name or name != text or any(c.isspace() for c in name):
        raise InvalidArgument(f"image {text!r}: not an image reference")
    name, at, digest = name.partition("@")
    if at and not _DIGEST.fullmatch(digest):
        raise InvalidArgument(f"image {text!r}: {digest!r} is not a digest")
    tag: str | None = None
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > last_slash:
        name, tag = name[:colon], name[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise InvalidArgument(f"image {text!r}: {tag!r} is not a tag")
    first, slash, rest = name.partition("/")
    # The first component is a registry when it looks like a host: a dot, a port, or localhost.
    if slash and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        registry, path = first, rest
        host = registry.rsplit(":", 1)[0] if not registry.endswith("]") else registry
        if not _HOST.fullmatch(host):
            raise InvalidArgument(f"image {text!r}: {registry!r} is not a registry host")
    else:
        registry, path = DOCKER_HUB, name
    if registry in (DOCKER_HUB, "index.docker.io"):
        registry = DOCKER_HUB
        if "/" not in path:
            path = f"library/{path}"
    if not path or not all(_COMPONENT.fullmatch(part) for part in path.split("/")):
        raise InvalidArgument(
            f"image {text!r}: repository {path!r} must be lowercase letters, digits and separators"
        )
    if tag is None and not at:
        tag = DEFAULT_TAG
    return ImageReference(registry, path, tag, digest if at else None)


def is_loopback(registry: str) -> bool:
    """Whether ``registry`` (host[:port]) is this machine: the only registries spoken to
    over plain HTTP, as Docker does."""
    host = registry
    if host.startswith("["):
        host = host[1 : host.index("]")]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
