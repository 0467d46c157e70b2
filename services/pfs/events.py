"""PFS's side of the event bus: record an event in the outbox of the caller's transaction."""

from __future__ import annotations

from shared.api.events import CommitFinished, CommitStarted, Event, Payload
from shared.api.pfs_models import CommitInfo
from shared.platform.config import Config
from shared.platform.db import Conn
from shared.platform.outbox import enqueue


async def emit(conn: Conn, config: Config, payload: Payload) -> None:
    """Enqueue ``payload`` as an event; it is published iff the transaction commits."""
    event = Event(payload)
    await enqueue(conn, event, event.subject(config.nats_prefix))


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
        )
    return CommitFinished(
        repo=info.repo,
        branch=info.branch,
        commit=info.id,
        parent=info.parent,
        provenance=provenance,
        size_bytes=info.size_bytes,
        error=info.error,
    )
