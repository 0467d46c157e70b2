"""Records of the storage-lifecycle API (fsck, garbage collection), shared by PFS, its
client and the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FsckProblem:
    """One thing broken: where (repo, commit, path — empty when not known) and what."""

    repo: str
    commit: str
    path: str
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"repo": self.repo, "commit": self.commit, "path": self.path, "detail": self.detail}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FsckProblem:
        return cls(str(data["repo"]), str(data["commit"]), str(data["path"]), str(data["detail"]))

    def line(self) -> str:
        """``repo@commit:path: detail``, leaving out the parts that are not known."""
        where = self.repo + (f"@{self.commit}" if self.commit else "")
        where += f":{self.path}" if self.path else ""
        return f"{where}: {self.detail}"


@dataclass
class FsckReport:
    """The problems of one fsck run and how much it looked at."""

    problems: list[FsckProblem] = field(default_factory=list)
    commits: int = 0
    nodes: int = 0
    chunks: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "problems": [p.to_json() for p in self.problems],
            "checked": {"commits": self.commits, "nodes": self.nodes, "chunks": self.chunks},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FsckReport:
        checked = data.get("checked", {})
        return cls(
            [FsckProblem.from_json(p) for p in data["problems"]],
            int(checked.get("commits", 0)),
            int(checked.get("nodes", 0)),
            int(checked.get("chunks", 0)),
        )


@dataclass
class GcReport:
    """What one garbage collection freed (or, in a dry run, would free) and what it saw."""

    dry_run: bool = False
    objects: int = 0
    bytes: int = 0
    scanned: int = 0
    young: int = 0
    live_objects: int = 0
    # The mark's memory: the most chunk marks held at once, and runs spilled to disk.
    chunk_marks_peak: int = 0
    chunk_mark_runs: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "objects": self.objects,
            "bytes": self.bytes,
            "scanned": self.scanned,
            "young": self.young,
            "live_objects": self.live_objects,
            "chunk_marks_peak": self.chunk_marks_peak,
            "chunk_mark_runs": self.chunk_mark_runs,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GcReport:
        return cls(
            bool(data.get("dry_run", False)),
            int(data.get("objects", 0)),
            int(data.get("bytes", 0)),
            int(data.get("scanned", 0)),
            int(data.get("young", 0)),
            int(data.get("live_objects", 0)),
            int(data.get("chunk_marks_peak", 0)),
            int(data.get("chunk_mark_runs", 0)),
        )
