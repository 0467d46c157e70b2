"""Registry credentials in Docker's ``config.json`` format (``{"auths": {host: {"auth":
base64("user:password")}}}``, or ``username``/``password``), as ``docker login`` writes
them and Kubernetes' ``.dockerconfigjson`` pull secrets hold them. Pure."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass

from shared.images.reference import DOCKER_HUB, DOCKER_HUB_API
from shared.platform.errors import InvalidArgument

# The keys a Kubernetes pull secret keeps its config under.
SECRET_KEYS = (".dockerconfigjson", "config.json", ".dockercfg")


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str

    def basic(self) -> str:
        """The ``Authorization`` value for HTTP Basic auth."""
        pair = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(pair).decode()

    def __repr__(self) -> str:  # never print a password into a log
        return f"Credentials({self.username!r}, ***)"


def parse_docker_config(data: bytes, source: str) -> dict[str, Credentials]:
    """Registry host → credentials from a config.json (or a legacy .dockercfg) body."""
    try:
        body = json.loads(data)
    except ValueError:
        raise InvalidArgument(f"{source}: not a Docker config.json (not JSON)") from None
    if not isinstance(body, dict):
        raise InvalidArgument(f"{source}: not a Docker config.json")
    auths = body.get("auths", body)  # .dockercfg is the auths mapping itself
    if not isinstance(auths, dict):
        raise InvalidArgument(f"{source}: 'auths' is not an object")
    found: dict[str, Credentials] = {}
    for server, entry in auths.items():
        if not isinstance(entry, dict):
            continue
        credentials = _entry(entry, f"{source}: {server}")
        if credentials is not None:
            found[_host(server)] = credentials
    return found


def lookup(known: Mapping[str, Credentials], registry: str) -> Credentials | None:
    """The credentials for ``registry`` (host[:port]); Docker Hub under any of its names."""
    if registry in (DOCKER_HUB, DOCKER_HUB_API):
        for name in (DOCKER_HUB, DOCKER_HUB_API, "index.docker.io"):
            if name in known:
                return known[name]
        return None
    return known.get(registry)


def _entry(entry: Mapping[str, object], where: str) -> Credentials | None:
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            text = base64.b64decode(auth, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidArgument(f"{where}: 'auth' is not base64 of user:password") from None
        username, sep, secret = text.partition(":")
        if not sep:
            raise InvalidArgument(f"{where}: 'auth' is not base64 of user:password")
        return Credentials(username, secret)
    user, password = entry.get("username"), entry.get("password")
    if isinstance(user, str) and isinstance(password, str):
        return Credentials(user, password)
    return None


def _host(server: str) -> str:
    """``https://index.docker.io/v1/`` → ``index.docker.io``; a bare host stays."""
    host = server.split("://", 1)[-1].split("/", 1)[0]
    return DOCKER_HUB if host in ("index.docker.io", DOCKER_HUB_API) else host
