"""The HTTP client SDK for mountd, and the records it shares with the service and the CLI.

A mount is named; mountd shows it at ``<mount root>/<name>``. ``MountSpec`` is what a
user asks for (``images@master+w`` on the command line), ``MountInfo`` what mountd
reports back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal
from urllib.parse import quote

from shared.api.pfs_client import ServiceClient
from shared.api.pfs_models import CommitInfo
from shared.platform.errors import InvalidArgument

MountMode = Literal["ro", "rw"]
MODES: tuple[MountMode, ...] = ("ro", "rw")


@dataclass(frozen=True)
class MountSpec:
    """What to mount: ``repo@ref`` (branch or commit id) shown under ``name``, read-only or not."""

    repo: str
    ref: str = "master"
    name: str = ""
    mode: MountMode = "ro"

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.repo)
        if self.mode not in MODES:
            raise InvalidArgument(f"mount mode must be 'ro' or 'rw', not {self.mode!r}")

    @classmethod
    def parse(cls, text: str) -> MountSpec:
        """Parse ``REPO[@REF][+w]`` (Pachyderm's mount syntax; ``+w`` mounts read-write)."""
        mode: MountMode = "ro"
        if text.endswith("+w"):
            text, mode = text[:-2], "rw"
        repo, _, ref = text.partition("@")
        if not repo:
            raise InvalidArgument(f"bad mount spec {text!r}: expected REPO[@REF][+w]")
        return cls(repo=repo, ref=ref or "master", mode=mode)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MountSpec:
        return cls(
            repo=data["repo"],
            ref=data.get("ref") or "master",
            name=data.get("name") or "",
            mode=data.get("mode") or "ro",
        )


@dataclass(frozen=True)
class MountInfo:
    """One mount as mountd reports it."""

    name: str
    repo: str
    ref: str
    mode: MountMode
    # Where the files are: <mount root>/<name>.
    path: str
    # The finished commit whose files are shown (None: the branch has none yet).
    commit: str | None
    # Whether the mount follows a branch (False: pinned to one commit).
    follows_branch: bool
    # rw mounts: the open commit writes go into (None until the first write).
    open_commit: str | None = None
    # rw mounts: files written but not yet in a finished commit.
    pending_files: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MountInfo:
        return cls(
            name=data["name"],
            repo=data["repo"],
            ref=data["ref"],
            mode=data["mode"],
            path=data["path"],
            commit=data.get("commit"),
            follows_branch=bool(data.get("follows_branch")),
            open_commit=data.get("open_commit"),
            pending_files=int(data.get("pending_files") or 0),
        )


def _q(part: str) -> str:
    return quote(part, safe="")


class MountClient(ServiceClient):
    """Mount, list, commit, refresh and unmount through mountd."""

    async def mount(
        self, repo: str, ref: str = "master", *, name: str | None = None, mode: MountMode = "ro"
    ) -> MountInfo:
        """Mount ``repo@ref`` at ``<mount root>/<name>`` (name defaults to the repo)."""
        spec = MountSpec(repo=repo, ref=ref, name=name or "", mode=mode)
        return MountInfo.from_json(await self.request("POST", "/mounts", json_body=spec.to_json()))

    async def list_mounts(self) -> list[MountInfo]:
        body = await self.request("GET", "/mounts")
        return [MountInfo.from_json(m) for m in body["mounts"]]

    async def inspect_mount(self, name: str) -> MountInfo:
        return MountInfo.from_json(await self.request("GET", f"/mounts/{_q(name)}"))

    async def unmount(self, name: str, *, force: bool = False) -> CommitInfo | None:
        """Unmount; a rw mount's open commit is finished first (returned, if there was one).

        Refused while files are open for writing, unless ``force`` (their unsaved
        writes are then dropped, never committed half-written).
        """
        body = await self.request("DELETE", f"/mounts/{_q(name)}", params={"force": force})
        return CommitInfo.from_json(body["commit"]) if body.get("commit") else None

    async def commit(self, name: str) -> CommitInfo | None:
        """Finish a rw mount's open commit now (None if nothing was written since the last)."""
        body = await self.request("POST", f"/mounts/{_q(name)}/commit")
        return CommitInfo.from_json(body["commit"]) if body.get("commit") else None

    async def refresh(self, name: str) -> MountInfo:
        """Move a branch mount to the branch's newest finished commit now."""
        return MountInfo.from_json(await self.request("POST", f"/mounts/{_q(name)}/refresh"))
