"""Argument types for pachctl's ``repo[@ref][:/path]`` grammar, checked before any request.

A malformed argument raises ``InvalidArgument`` from ``shared.api.names`` with the
names module's message, so the user sees the same words the service would use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click

from shared.api.names import COMMIT_ID_RE, RepoRef, check_name, parse_repo_ref
from shared.platform.errors import InvalidArgument

DEFAULT_BRANCH = "master"


@dataclass(frozen=True)
class Target:
    """A parsed ``repo@ref:/path`` plus what the user literally typed after the colon."""

    repo: str
    ref: str | None
    path: str | None
    # True when the typed path ended in '/', i.e. "put it inside this directory".
    into_dir: bool
    text: str

    @property
    def ref_or_default(self) -> str:
        return self.ref if self.ref is not None else DEFAULT_BRANCH

    @property
    def path_or_root(self) -> str:
        return self.path if self.path is not None else "/"


def parse_target(text: str) -> Target:
    """Parse ``repo``, ``repo@ref``, ``repo@ref:/path`` (raises ``InvalidArgument``)."""
    parsed: RepoRef = parse_repo_ref(text)
    raw_path = text.split(":", 1)[1] if ":" in text else None
    into_dir = raw_path is not None and (raw_path.endswith("/") or raw_path == "")
    return Target(parsed.repo, parsed.ref, parsed.path, into_dir, text)


def writable_branch(target: Target, what: str) -> str:
    """The branch a write goes to (master by default); never a commit id or an ancestry ref."""
    ref = target.ref_or_default
    if "^" in ref or "~" in ref:
        raise InvalidArgument(
            f"{what} writes to a branch, not to the ancestry ref {ref!r} (use {target.repo}@BRANCH)"
        )
    if COMMIT_ID_RE.match(ref):
        raise InvalidArgument(
            f"{what} writes to a branch, but {ref!r} is a commit id: finished commits are "
            f"immutable (use {target.repo}@BRANCH)"
        )
    return check_name("branch", ref)


class TargetType(click.ParamType):
    """A click type for ``repo[@ref][:/path]`` with per-command requirements."""

    def __init__(self, *, ref: bool = False, path: bool = False, no_path: bool = False) -> None:
        self.need_ref = ref
        self.need_path = path
        self.no_path = no_path
        self.name = "REPO" + ("@REF" if ref else "[@REF]") + (":/PATH" if path else "")

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, Target):
            return value
        target = parse_target(str(value))
        if self.need_ref and target.ref is None:
            raise InvalidArgument(f"invalid {target.text!r}: expected {self.name}")
        if self.need_path and target.path is None:
            raise InvalidArgument(f"invalid {target.text!r}: expected {self.name}")
        if self.no_path and target.path is not None:
            raise InvalidArgument(f"invalid {target.text!r}: no ':/path' expected here")
        return target


class RepoNameType(click.ParamType):
    """A bare repo name."""

    name = "REPO"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return check_name("repo", str(value))


REPO = RepoNameType()
REPO_AT = TargetType(no_path=True)
REPO_AT_REF = TargetType(ref=True, no_path=True)
REPO_FILE = TargetType(path=True)
REPO_ANY = TargetType()
