"""Event schemas: what Tusk services announce on the bus, one typed payload class per event type.

On the wire an event is JSON ``{"id", "type", "time", "data"}``: ``id`` a uuid4 hex (also
the ``Nats-Msg-Id``, so JetStream drops a re-sent duplicate), ``time`` RFC 3339 UTC,
``data`` the payload's fields. Its subject is ``<prefix>.<domain>.<type>.<key>`` where the
key is the repo for PFS events and the pipeline for PPS events, so consumers filter by
type and repo with subject wildcards (``tusk.pfs.commit.finished.images``,
``tusk.pfs.*.*.images``). docs/events.md is the reference for outside subscribers.

The envelope (``Event``, ``Payload``, ``subject_filter``) is ``shared.platform.envelope``,
beside the bus that carries it; it is re-exported here. Adding an event type is one
class: subclass ``PfsPayload`` (or a new domain base such as
``PpsPayload`` with its own ``subject_key``) with ``type="<noun>.<verb>"``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from shared.api.pfs_models import CommitRef
from shared.api.pps_models import JobRequest
from shared.platform.envelope import (
    PAYLOAD_TYPES,
    Event,
    Payload,
    UnknownPayload,
    subject_filter,
)

# ---------------------------------------------------------------------------------- PFS


@dataclass(frozen=True)
class BranchRef:
    """A branch of a repo, as in branch provenance."""

    repo: str
    branch: str


@dataclass(frozen=True, kw_only=True)
class PfsPayload(Payload):
    """Base of PFS events; their subject key is the repo."""

    DOMAIN: ClassVar[str] = "pfs"
    repo: str

    def subject_key(self) -> str:
        return self.repo


@dataclass(frozen=True, kw_only=True)
class RepoCreated(PfsPayload, type="repo.created"):
    description: str = ""


@dataclass(frozen=True, kw_only=True)
class RepoDeleted(PfsPayload, type="repo.deleted"):
    pass


@dataclass(frozen=True, kw_only=True)
class BranchCreated(PfsPayload, type="branch.created"):
    branch: str
    head: str | None = None
    provenance: list[BranchRef] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class BranchMoved(PfsPayload, type="branch.moved"):
    """A branch head moved by compare-and-set from ``old_head`` to ``new_head``."""

    branch: str
    old_head: str | None
    new_head: str | None


@dataclass(frozen=True, kw_only=True)
class BranchDeleted(PfsPayload, type="branch.deleted"):
    branch: str


def provenance_json(refs: list[CommitRef]) -> list[dict[str, Any]]:
    """Provenance as events carry it: each ``CommitRef`` with its id also under
    ``commit``, the name events used before (outside subscribers may still read it)."""
    return [{**ref.to_json(), "commit": ref.id} for ref in refs]


@dataclass(frozen=True, kw_only=True)
class CommitStarted(PfsPayload, type="commit.started"):
    branch: str | None
    commit: str
    parent: str | None = None
    provenance: list[CommitRef] = field(default_factory=list)
    # The commit set the commit belongs to (its id: docs/architecture.md, "Commit sets").
    commit_set: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "provenance": provenance_json(self.provenance)}


@dataclass(frozen=True, kw_only=True)
class CommitFinished(PfsPayload, type="commit.finished"):
    """A commit is finished: its files are final. ``error`` is set if it finished failed."""

    branch: str | None
    commit: str
    parent: str | None = None
    provenance: list[CommitRef] = field(default_factory=list)
    size_bytes: int = 0
    error: str | None = None
    commit_set: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "provenance": provenance_json(self.provenance)}


@dataclass(frozen=True, kw_only=True)
class CommitDeleted(PfsPayload, type="commit.deleted"):
    commit: str
    branch: str | None = None
    commit_set: str | None = None


# ---------------------------------------------------------------------------------- PPS


@dataclass(frozen=True, kw_only=True)
class PpsPayload(Payload):
    """Base of PPS events; their subject key is the pipeline."""

    DOMAIN: ClassVar[str] = "pps"
    pipeline: str

    def subject_key(self) -> str:
        return self.pipeline


@dataclass(frozen=True, kw_only=True)
class PipelineUpdated(PpsPayload, type="pipeline.updated"):
    """A pipeline was created, updated, stopped, started or deleted (``deleted``).

    ``job``: the job the change asks for (a new spec, a start), which the scheduler makes
    if PPS's direct request did not reach it (PPS stopped right after committing).
    """

    version: int
    state: str
    deleted: bool = False
    job: JobRequest | None = None


@dataclass(frozen=True, kw_only=True)
class JobStateChanged(PpsPayload, type="job.state"):
    """A job moved to ``state`` (Pachyderm's JOB_* names)."""

    job: str
    state: str
    reason: str | None = None
    output_commit: str | None = None
    # The commit set of the job's output commit (its id), once the job has one.
    commit_set: str | None = None


__all__ = [
    "PAYLOAD_TYPES",
    "BranchCreated",
    "BranchDeleted",
    "BranchMoved",
    "BranchRef",
    "CommitDeleted",
    "CommitFinished",
    "CommitStarted",
    "Event",
    "JobStateChanged",
    "Payload",
    "PfsPayload",
    "PipelineUpdated",
    "PpsPayload",
    "RepoCreated",
    "RepoDeleted",
    "UnknownPayload",
    "provenance_json",
    "subject_filter",
]
