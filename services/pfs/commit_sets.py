"""Commit sets (Pachyderm 2's global IDs): one id names a commit in each repo it reached.

A job's output commit takes the id of the input commit that triggered it, so a user's
commit and everything computed from it share one id. The set is what ``list``, ``inspect``,
``wait``, ``squash`` and ``delete commit ID`` act on. Its *pending* branches are those the
set will still reach: downstream of a set commit by branch provenance, with no commit of
the set yet. A failed commit stops the walk there — nothing is computed from it — and so
does a *covered* branch, whose newest commit was already computed from the set's commit or
a later one upstream (a pipeline created while the commit landed read it in its first job,
even if that job failed; a pipeline that moved past the commit): no commit of the set will
come there.
"""

from __future__ import annotations

from collections import defaultdict

from services.pfs import refs
from shared.api.pfs_models import CommitInfo, CommitSetInfo, CommitSetState
from shared.platform.db import Conn
from shared.platform.errors import NotFound

Branch = tuple[str, str]
Edge = tuple[str, str, str, str]


def pending_branches(
    commits: list[CommitInfo], edges: list[Edge], covered: frozenset[Branch] = frozenset()
) -> list[Branch]:
    """Branches downstream of the set's good commits that have no commit of the set yet.

    ``edges``: (prov_repo, prov_branch, repo, branch) of the branch provenance below the
    set's branches; ``covered``: branches the set will not reach (see the module). Pure:
    the walk visits each edge once.
    """
    have = {(c.repo, c.branch) for c in commits if c.branch is not None}
    failed = {(c.repo, c.branch) for c in commits if c.branch is not None and c.error}
    failed |= covered - have
    below: dict[Branch, list[Branch]] = defaultdict(list)
    for prov_repo, prov_branch, repo, branch in edges:
        below[(prov_repo, prov_branch)].append((repo, branch))
    start = [b for b in have if b not in failed]
    seen = set(start)
    stack = list(start)
    pending: list[Branch] = []
    while stack:
        for nxt in below[stack.pop()]:
            if nxt in seen:
                continue
            seen.add(nxt)
            if nxt in failed:
                continue
            if nxt not in have:
                pending.append(nxt)
            stack.append(nxt)
    return sorted(pending)


def set_state(commits: list[CommitInfo], pending: list[Branch]) -> CommitSetState:
    if any(c.error is not None for c in commits):
        return "failed"
    if pending or any(c.state != "finished" for c in commits):
        return "running"
    return "finished"


async def read_set(conn: Conn, set_id: str) -> CommitSetInfo:
    """The set's commits, its pending branches and its state; NotFound if no commit has it."""
    rows = await refs.commit_set(conn, set_id)
    if not rows:
        raise NotFound(f"no commit set {set_id}: no repo has a commit with that id")
    commits = [r.info for r in rows]
    branches = sorted({(c.repo, c.branch) for c in commits if c.branch is not None})
    edges = await refs.branch_subvenance_edges(conn, branches)
    pending = pending_branches(commits, edges)
    if pending:
        covered = await refs.branches_past(conn, set_id, pending)
        if covered:
            pending = pending_branches(commits, edges, frozenset(covered))
    return CommitSetInfo(
        id=set_id,
        state=set_state(commits, pending),
        commits=commits,
        pending=[f"{r}@{b}" for r, b in pending],
    )
