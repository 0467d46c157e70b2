"""Names users type: repo and branch names, file paths, refs and pachctl's `repo@ref:/path`.

Pure functions; every refusal is an ``InvalidArgument`` whose message names the
bad part and the rule it broke.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.platform.errors import InvalidArgument

# Re-exported: the patterns live below both the API and the HTTP layer.
from shared.platform.name_rules import ANCESTRY_RE as ANCESTRY_RE
from shared.platform.name_rules import COMMIT_ID_RE as COMMIT_ID_RE
from shared.platform.name_rules import MAX_TEXT_CHARS as MAX_TEXT_CHARS
from shared.platform.name_rules import NAME_RE as NAME_RE

MAX_PATH_BYTES = 4096


def check_name(kind: str, name: str) -> str:
    """Return ``name`` if it is a valid repo/branch/pipeline name, else raise."""
    if not NAME_RE.match(name):
        raise InvalidArgument(
            f"invalid {kind} name {name!r}: use 1-63 characters from A-Z a-z 0-9 _ -"
        )
    return name


def normalize_path(path: str) -> str:
    """Return the canonical form of a file path: leading '/', no trailing '/', no empty segments.

    '/' itself stays '/'. Refuses '..', '.', NUL and empty segments (``a//b``).
    """
    if "\x00" in path:
        raise InvalidArgument(f"invalid path {path!r}: paths may not contain NUL")
    if len(path.encode()) > MAX_PATH_BYTES:
        raise InvalidArgument(f"invalid path: longer than {MAX_PATH_BYTES} bytes")
    stripped = path.strip("/")
    if stripped == "":
        return "/"
    segments = stripped.split("/")
    for segment in segments:
        if segment == "":
            raise InvalidArgument(f"invalid path {path!r}: empty segment ('//')")
        if segment in (".", ".."):
            raise InvalidArgument(f"invalid path {path!r}: '{segment}' segments are not allowed")
    return "/" + "/".join(segments)


def file_path(path: str) -> str:
    """Normalize a path that must name a file (not the root)."""
    norm = normalize_path(path)
    if norm == "/":
        raise InvalidArgument("a file path is needed here, not '/'")
    return norm


@dataclass(frozen=True)
class Ref:
    """A parsed ref: a branch name or commit id, then ``ancestors`` steps back along parents."""

    base: str
    ancestors: int = 0

    def __str__(self) -> str:
        return self.base + (f"~{self.ancestors}" if self.ancestors else "")


def parse_ref(text: str) -> Ref:
    """Parse ``master``, ``<commit id>``, ``master^``, ``master^^``, ``master~3``, ``<id>^2``.

    ``^N`` counts like ``~N`` (Tusk commits have one parent), as pachctl treats it.
    """
    match = ANCESTRY_RE.match(text)
    if not match:
        raise InvalidArgument(
            f"invalid ref {text!r}: expected a branch name or commit id, "
            "optionally followed by ^, ^N or ~N"
        )
    steps = 0
    for op, digits in re.findall(r"([\^~])([0-9]*)", match.group("suffix")):
        steps += int(digits) if digits else 1
        del op
    return Ref(match.group("base"), steps)


@dataclass(frozen=True)
class RepoRef:
    """pachctl's ``repo[@ref][:path]``."""

    repo: str
    ref: str | None = None
    path: str | None = None


def parse_repo_ref(text: str, *, need_path: bool = False) -> RepoRef:
    """Parse ``repo``, ``repo@ref``, ``repo@ref:/path`` (pachctl grammar)."""
    path: str | None = None
    head = text
    if ":" in text:
        head, path = text.split(":", 1)
        path = normalize_path(path or "/")
    repo, ref = ([*head.split("@", 1), None])[:2] if "@" in head else (head, None)
    assert repo is not None
    check_name("repo", repo)
    if ref is not None:
        if ref == "":
            raise InvalidArgument(f"invalid {text!r}: nothing after '@' (expected repo@branch)")
        parse_ref(ref)
    if need_path and path is None:
        raise InvalidArgument(f"invalid {text!r}: expected repo@ref:/path")
    return RepoRef(repo, ref, path)
