"""Three-way merges of file indexes, and the newest common ancestor of two commits.

A merge of SOURCE into DEST against their base walks two diffs at once — base→SOURCE
and base→DEST, each one sorted walk that skips equal subtrees by hash
(``shared.storage.file_index.diff``) — so its cost follows the paths changed on either
side, O(k log N) node reads, never the size of the repo. Per path:

- changed only in SOURCE: take SOURCE's version (or its deletion);
- changed only in DEST: keep DEST's;
- changed on both sides to the same content (same hash, or both deleted): keep it;
- changed on both sides differently: a conflict, unless a strategy picks a side.

Revert is the same walk with the roles turned: undoing commit C on a branch whose head is
H merges C's parent into H against C (base C, SOURCE C's parent, DEST H).
"""

from __future__ import annotations

import heapq
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

from shared.platform.db import Conn
from shared.storage.file_entries import from_index_entry
from shared.storage.file_index import FileIndex, IndexEntry

Strategy = Literal["source", "dest"]
STRATEGIES: tuple[Strategy, ...] = ("source", "dest")

DiffItem = tuple[str, IndexEntry | None, IndexEntry | None]


@dataclass
class MergePlan:
    """What merging SOURCE into DEST changes in DEST, and the paths that conflict."""

    changes: list[tuple[str, IndexEntry | None]] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)


def same_content(a: IndexEntry | None, b: IndexEntry | None) -> bool:
    """Two versions of a path hold the same bytes (both absent counts as the same)."""
    if a is None or b is None:
        return a is None and b is None
    if a.value == b.value:
        return True
    # The same bytes written twice may sit in differently packed chunks: compare hashes.
    first, second = from_index_entry(a), from_index_entry(b)
    return first.hash == second.hash and first.size == second.size


def resolve(
    path: str,
    source: IndexEntry | None,
    dest: IndexEntry | None,
    strategy: Strategy | None,
    plan: MergePlan,
) -> None:
    """Record the outcome for a path changed on both sides (pure)."""
    if same_content(source, dest) or strategy == "dest":
        return
    if strategy == "source":
        plan.changes.append((path, source))
    else:
        plan.conflicts.append(path)


async def plan_merge(
    index: FileIndex,
    base: str | None,
    source: str | None,
    dest: str | None,
    strategy: Strategy | None,
) -> MergePlan:
    """The changes that bring SOURCE's side into DEST (sorted by path) and the conflicts."""
    plan = MergePlan()
    theirs = index.diff(base, source)
    ours = index.diff(base, dest)
    try:
        their = await _next(theirs)
        our = await _next(ours)
        while their is not None:
            if our is None or their[0] < our[0]:
                plan.changes.append((their[0], their[2]))
                their = await _next(theirs)
            elif our[0] < their[0]:
                our = await _next(ours)  # DEST's own change stays as it is
            else:
                resolve(their[0], their[2], our[2], strategy, plan)
                their, our = await _next(theirs), await _next(ours)
    finally:
        await theirs.aclose()
        await ours.aclose()
    return plan


async def _next(items: AsyncIterator[DiffItem]) -> DiffItem | None:
    return await anext(items, None)


async def merge_base(conn: Conn, repo: str, first: str, second: str) -> str | None:
    """The newest commit both ``first`` and ``second`` descend from (None: unrelated).

    Walks both histories newest first (commits by ``seq``, which only grows, and a parent
    is always older than its child), marking which side reaches each commit; the first
    commit popped that both sides reach is the answer, since every path to it comes from
    newer commits, all popped before it. The walk stops there: it costs the commits made
    since the two lines parted, not the whole history.
    """
    if first == second:
        return first
    reached: dict[str, int] = {first: 1, second: 2}
    seqs = await _seqs(conn, repo, [first, second])
    heap = [(-seqs[c], c) for c in (first, second) if c in seqs]
    heapq.heapify(heap)
    while heap:
        _, commit = heapq.heappop(heap)
        if reached[commit] == 3:
            return commit
        for parent, seq in await _parents(conn, repo, commit):
            before = reached.get(parent, 0)
            reached[parent] = before | reached[commit]
            if before == 0:
                heapq.heappush(heap, (-seq, parent))
    return None  # unrelated histories (each walked to its root)


async def _seqs(conn: Conn, repo: str, commits: list[str]) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT id, seq FROM pfs_commits WHERE repo = $2 AND id = ANY($1::text[])", commits, repo
    )
    return {r["id"]: r["seq"] for r in rows}


async def _parents(conn: Conn, repo: str, commit: str) -> list[tuple[str, int]]:
    rows = await conn.fetch(
        """
        SELECT p.id, p.seq FROM pfs_commits c
        JOIN pfs_commits p ON p.repo = c.repo AND (p.id = c.parent OR p.id = c.second_parent)
        WHERE c.repo = $2 AND c.id = $1
        """,
        commit,
        repo,
    )
    return [(r["id"], r["seq"]) for r in rows]
