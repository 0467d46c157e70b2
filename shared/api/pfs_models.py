"""PFS records as they travel between service, client and CLI — one definition each.

Field names follow pachctl's JSON output where it has one (``id``, ``branch``,
``parent``, ``started``, ``finished``, ``size_bytes``, ``provenance``), so a
Pachyderm user reading ``-o json`` recognises them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

from shared.platform.records import Record, from_dict

CommitState = Literal["open", "finishing", "finished"]
FileType = Literal["file", "dir"]
ChangeKind = Literal["added", "deleted", "modified"]
CommitSetState = Literal["running", "finished", "failed"]
# Who made a commit (docs/console.md): a user (CLI, mount, API), a pipeline's job, the S3
# gateway, a cron tick, a merge or a revert. Set by the caller through PFS's API; PFS sets
# merge and revert itself.
CommitOrigin = Literal["user", "job", "s3", "cron", "merge", "revert"]
COMMIT_ORIGINS: tuple[CommitOrigin, ...] = ("user", "job", "s3", "cron", "merge", "revert")


@dataclass(frozen=True)
class CommitRef(Record):
    """One commit named with its repo and branch, as provenance lists them (in the API's
    records and in events alike)."""

    # Events written before CommitRef had one definition named the id "commit"; they are
    # still read (docs/events.md).
    JSON_ALIASES: ClassVar[dict[str, str]] = {"id": "commit"}

    repo: str
    branch: str | None
    id: str

    def __str__(self) -> str:
        return f"{self.repo}@{self.id}"


@dataclass(frozen=True)
class RepoInfo(Record):
    name: str
    created: str
    description: str = ""
    size_bytes: int = 0
    branches: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Trigger(Record):
    """A branch trigger (Pachyderm's deferred processing): the branch moves to the head of
    ``branch`` (in the same repo) when the condition holds. Conditions, counted since the
    branch last moved: ``size`` bytes of growth, ``commits`` new commits, ``cron`` a
    schedule that came due. ``all``: every set condition must hold, else any one; with no
    condition the branch follows every commit of ``branch``."""

    branch: str
    size: int | None = None
    commits: int | None = None
    cron: str | None = None
    all: bool = False


@dataclass(frozen=True)
class BranchInfo(Record):
    repo: str
    name: str
    head: str | None
    # "repo@branch" strings of the branches this branch is computed from.
    provenance: list[str] = field(default_factory=list)
    # "repo@branch" strings of the branches computed from this one.
    subvenance: list[str] = field(default_factory=list)
    trigger: Trigger | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BranchInfo:
        info = from_dict(cls, data)
        trigger = data.get("trigger")
        if trigger is None:
            return info
        return replace(info, trigger=Trigger.from_json(trigger))


@dataclass(frozen=True)
class CommitInfo(Record):
    id: str
    repo: str
    branch: str | None
    parent: str | None
    state: CommitState
    started: str
    finishing: str | None = None
    finished: str | None = None
    size_bytes: int = 0
    file_count: int = 0
    description: str = ""
    error: str | None = None
    provenance: list[CommitRef] = field(default_factory=list)
    # Root of the commit's file index in the object store (data-plane readers use it).
    index_root: str | None = None
    # A merge commit's other parent: the head of the branch merged in (``parent`` is the
    # destination's head before the merge).
    second_parent: str | None = None
    origin: CommitOrigin = "user"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CommitInfo:
        values = dict(data)
        values["provenance"] = [CommitRef.from_json(p) for p in data.get("provenance") or []]
        return from_dict(cls, values)


@dataclass(frozen=True)
class FileInfo(Record):
    path: str
    type: FileType
    size_bytes: int
    # BLAKE3 of the content for files; None for directories.
    hash: str | None = None
    # Number of files under a directory (1 for a file).
    file_count: int = 1
    commit: str | None = None


@dataclass(frozen=True)
class FileChange(Record):
    """One path that differs between two commits."""

    path: str
    change: ChangeKind
    old: FileInfo | None
    new: FileInfo | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileChange:
        old = data.get("old")
        new = data.get("new")
        return cls(
            path=data["path"],
            change=data["change"],
            old=FileInfo.from_json(old) if old else None,
            new=FileInfo.from_json(new) if new else None,
        )


@dataclass(frozen=True)
class PutResult(Record):
    """What a put/delete/copy did: the commit it landed in and how much it wrote."""

    commit: CommitInfo
    files: int = 0
    bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"commit": self.commit.to_json(), "files": self.files, "bytes": self.bytes}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PutResult:
        return cls(CommitInfo.from_json(data["commit"]), data.get("files", 0), data.get("bytes", 0))


@dataclass(frozen=True)
class CommitSetInfo(Record):
    """A commit set (Pachyderm 2's global ID): every commit that carries one id, in every
    repo. ``pending``: ``repo@branch`` of the branches downstream of the set that will get
    a commit of it (a pipeline's output not made yet). ``state``: ``running`` while a commit
    is unfinished or a branch pending, ``failed`` once a commit finished with an error,
    else ``finished``."""

    id: str
    state: CommitSetState
    commits: list[CommitInfo] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "commits": [c.to_json() for c in self.commits],
            "pending": list(self.pending),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CommitSetInfo:
        return cls(
            id=data["id"],
            state=data["state"],
            commits=[CommitInfo.from_json(c) for c in data.get("commits") or []],
            pending=list(data.get("pending") or []),
        )

    @property
    def failed(self) -> list[CommitInfo]:
        return [c for c in self.commits if c.error is not None]
