"""PFS's event payloads of commits (emitted through ``shared.platform.outbox.emit``)."""

from __future__ import annotations

from shared.api.events import CommitFinished, CommitStarted, Payload
from shared.api.pfs_models import CommitInfo


def commit_payload(kind: str, info: CommitInfo) -> Payload:
    """The commit.started / commit.finished payload of a commit."""
    provenance = list(info.provenance)
    if kind == "commit.started":
        return CommitStarted(
            repo=info.repo,
            branch=info.branch,
            commit=info.id,
            parent=info.parent,
            provenance=provenance,
            commit_set=info.id,
        )
    return CommitFinished(
        repo=info.repo,
        branch=info.branch,
        commit=info.id,
        parent=info.parent,
        provenance=provenance,
        size_bytes=info.size_bytes,
        error=info.error,
        commit_set=info.id,
    )
