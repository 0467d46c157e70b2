"""Which bucket and key a request names: path-style (``/BUCKET/KEY``) or virtual-hosted-style
(``Host: BUCKET.<domain>``, path ``/KEY``). Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from yarl import URL


@dataclass(frozen=True)
class Target:
    """``bucket`` None: the service (ListBuckets); ``key`` None: the bucket itself."""

    bucket: str | None
    key: str | None


def host_name(host: str | None) -> str:
    """The name part of a Host header (no port), as sent; '' if unreadable."""
    if not host:
        return ""
    try:
        return URL.build(scheme="http", authority=host).raw_host or ""
    except (ValueError, TypeError):
        return ""


def virtual_bucket(host: str | None, domains: Sequence[str]) -> str | None:
    """The bucket of a virtual-hosted-style Host (``BUCKET.<domain>``), else None."""
    name = host_name(host).rstrip(".")
    lower = name.lower()
    for domain in domains:
        suffix = "." + domain.lower().strip(".")
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return name[: -len(suffix)]
    return None


def target_of(host: str | None, raw_path: str, domains: Sequence[str]) -> Target:
    """Split a request into bucket and key; keys are percent-decoded exactly once."""
    path = raw_path.split("?", 1)[0]
    bucket = virtual_bucket(host, domains)
    if bucket is not None:
        key = unquote(path[1:]) if path.startswith("/") else unquote(path)
        return Target(bucket, key or None)
    rest = path.lstrip("/")
    if not rest:
        return Target(None, None)
    name, slash, raw_key = rest.partition("/")
    key = unquote(raw_key) if slash else ""
    return Target(unquote(name), key or None)
