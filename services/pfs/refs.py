"""Refs: where names point — repos, branches, commits and ref resolution, in PostgreSQL.

Every function takes an open asyncpg connection so the caller decides the
transaction; nothing here touches the object store. Rows come back as the
records of ``shared.api.pfs_models``. Branch heads move only under a row lock taken
by ``lock_branch`` (compare-and-set), so several PFS replicas are safe.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.api.names import COMMIT_ID_RE, check_name, parse_ref
from shared.api.pfs_models import (
    BranchInfo,
    CommitInfo,
    CommitOrigin,
    CommitRef,
    RepoInfo,
    Trigger,
)
from shared.platform.db import Conn, Row, duplicate_is
from shared.platform.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound


def new_commit_id() -> str:
    return uuid.uuid4().hex


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


@dataclass(frozen=True)
class CommitRow:
    """A commit as stored, with the index root the API does not show."""

    info: CommitInfo
    root: str | None

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def finished(self) -> bool:
        return self.info.state == "finished"


_COMMIT_COLUMNS = (
    "id, repo, branch, parent, state, root, size_bytes, file_count, description, error, "
    "provenance, started, finishing, finished, second_parent, origin"
)


def commit_from_record(rec: Row) -> CommitRow:
    prov = rec["provenance"]
    prov_list = json.loads(prov) if isinstance(prov, str) else (prov or [])
    info = CommitInfo(
        id=rec["id"],
        repo=rec["repo"],
        branch=rec["branch"],
        parent=rec["parent"],
        state=rec["state"],
        started=_time(rec["started"]) or "",
        finishing=_time(rec["finishing"]),
        finished=_time(rec["finished"]),
        size_bytes=rec["size_bytes"],
        file_count=rec["file_count"],
        description=rec["description"],
        error=rec["error"],
        provenance=[CommitRef.from_json(p) for p in prov_list],
        index_root=rec["root"],
        second_parent=rec["second_parent"],
        origin=rec["origin"],
    )
    return CommitRow(info, rec["root"])


# Repos


async def create_repo(conn: Conn, name: str, description: str) -> None:
    check_name("repo", name)
    with duplicate_is(AlreadyExists(f"repo {name} already exists")):
        await conn.execute(
            "INSERT INTO pfs_repos (name, description) VALUES ($1, $2)", name, description
        )


async def repo_exists(conn: Conn, name: str) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM pfs_repos WHERE name = $1", name))


async def require_repo(conn: Conn, name: str) -> None:
    check_name("repo", name)
    if not await repo_exists(conn, name):
        raise NotFound(f"repo {name} not found (tusk list repo shows the repos)")


# A repo with its branch names and the size of its master head (as Pachyderm shows it).
_REPO_SELECT = """
    SELECT r.name, r.description, r.created,
           coalesce(array_agg(b.name ORDER BY b.name) FILTER (WHERE b.name IS NOT NULL), '{}')
               AS branches,
           coalesce((SELECT c.size_bytes FROM pfs_branches mb
                     JOIN pfs_commits c ON c.repo = mb.repo AND c.id = mb.head
                     WHERE mb.repo = r.name AND mb.name = 'master'), 0) AS size_bytes
    FROM pfs_repos r LEFT JOIN pfs_branches b ON b.repo = r.name
    WHERE $1::text IS NULL OR r.name = $1
    GROUP BY r.name ORDER BY r.created DESC, r.name
"""


async def get_repo(conn: Conn, name: str) -> RepoInfo:
    await require_repo(conn, name)
    return _repo_info((await conn.fetch(_REPO_SELECT, name))[0])


async def list_repos(conn: Conn) -> list[RepoInfo]:
    return [_repo_info(r) for r in await conn.fetch(_REPO_SELECT, None)]


def _repo_info(rec: Row) -> RepoInfo:
    return RepoInfo(
        name=rec["name"],
        created=_time(rec["created"]) or "",
        description=rec["description"],
        size_bytes=rec["size_bytes"],
        branches=list(rec["branches"]),
    )


async def downstream_of_repo(conn: Conn, name: str) -> list[str]:
    """Branches in other repos whose provenance includes a branch of ``name``."""
    rows = await conn.fetch(
        "SELECT DISTINCT repo || '@' || branch AS b FROM pfs_branch_provenance "
        "WHERE prov_repo = $1 AND repo <> $1 ORDER BY 1",
        name,
    )
    return [r["b"] for r in rows]


async def delete_repo(conn: Conn, name: str) -> None:
    # Provenance rows pointing into this repo from elsewhere go first (force delete).
    await conn.execute("DELETE FROM pfs_branch_provenance WHERE prov_repo = $1", name)
    await conn.execute("UPDATE pfs_branches SET head = NULL WHERE repo = $1", name)
    await conn.execute("UPDATE pfs_commits SET parent = NULL WHERE repo = $1", name)
    await conn.execute("DELETE FROM pfs_repos WHERE name = $1", name)


# Branches


async def get_branch_head(
    conn: Conn, repo: str, branch: str, *, lock: bool = False
) -> tuple[bool, str | None]:
    """(exists, head) of a branch; ``lock`` takes the row lock that serializes head moves."""
    row = await conn.fetchrow(
        "SELECT head FROM pfs_branches WHERE repo = $1 AND name = $2"
        + (" FOR UPDATE" if lock else ""),
        repo,
        branch,
    )
    return (row is not None, row["head"] if row else None)


async def insert_branch(conn: Conn, repo: str, name: str, head: str | None) -> None:
    check_name("branch", name)
    if COMMIT_ID_RE.match(name):
        raise InvalidArgument(f"invalid branch name {name!r}: it looks like a commit id")
    with duplicate_is(AlreadyExists(f"branch {repo}@{name} already exists")):
        await conn.execute(
            "INSERT INTO pfs_branches (repo, name, head) VALUES ($1, $2, $3)", repo, name, head
        )


async def insert_branch_if_missing(conn: Conn, repo: str, name: str) -> bool:
    """Create an empty branch unless a concurrent writer just did; True if this call made it."""
    check_name("branch", name)
    created = await conn.fetchval(
        "INSERT INTO pfs_branches (repo, name) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING 1",
        repo,
        name,
    )
    return bool(created)


async def set_branch_head(conn: Conn, repo: str, name: str, head: str | None) -> None:
    # head_moved is when a trigger's conditions start counting: only a real move resets it.
    await conn.execute(
        "UPDATE pfs_branches SET head = $3, head_moved = CASE WHEN head IS DISTINCT FROM $3 "
        "THEN now() ELSE head_moved END WHERE repo = $1 AND name = $2",
        repo,
        name,
        head,
    )


@dataclass(frozen=True)
class TriggeredBranch:
    """A branch with a trigger, as the trigger's evaluation needs it."""

    repo: str
    name: str
    head: str | None
    trigger: Trigger
    head_moved: datetime


def _trigger(value: Any) -> Trigger | None:
    if value is None:
        return None
    return Trigger.from_json(json.loads(value) if isinstance(value, str) else value)


async def set_branch_trigger(conn: Conn, repo: str, name: str, trigger: Trigger | None) -> None:
    await conn.execute(
        "UPDATE pfs_branches SET trigger = $3::jsonb WHERE repo = $1 AND name = $2",
        repo,
        name,
        json.dumps(trigger.to_json()) if trigger is not None else None,
    )


async def branch_trigger(conn: Conn, repo: str, name: str) -> Trigger | None:
    return _trigger(
        await conn.fetchval(
            "SELECT trigger FROM pfs_branches WHERE repo = $1 AND name = $2", repo, name
        )
    )


async def branches_triggered_by(
    conn: Conn, repo: str, source: str, *, lock: bool = False
) -> list[TriggeredBranch]:
    """The branches of ``repo`` whose trigger follows ``source``; ``lock`` locks their rows."""
    rows = await conn.fetch(
        "SELECT name, head, trigger, head_moved FROM pfs_branches "
        "WHERE repo = $1 AND trigger->>'branch' = $2 ORDER BY name"
        + (" FOR UPDATE" if lock else ""),
        repo,
        source,
    )
    return [_triggered(repo, r) for r in rows]


async def triggered_branch(conn: Conn, repo: str, name: str) -> TriggeredBranch | None:
    """One branch with a trigger, its row locked; None if gone or its trigger was removed."""
    row = await conn.fetchrow(
        "SELECT name, head, trigger, head_moved FROM pfs_branches "
        "WHERE repo = $1 AND name = $2 AND trigger IS NOT NULL FOR UPDATE",
        repo,
        name,
    )
    return _triggered(repo, row) if row is not None else None


def _triggered(repo: str, row: Row) -> TriggeredBranch:
    trigger = _trigger(row["trigger"])
    assert trigger is not None
    return TriggeredBranch(repo, row["name"], row["head"], trigger, row["head_moved"])


async def cron_triggered_branches(conn: Conn) -> list[tuple[str, str]]:
    """(repo, branch) of every branch whose trigger has a cron schedule."""
    rows = await conn.fetch(
        "SELECT repo, name FROM pfs_branches WHERE trigger->>'cron' IS NOT NULL ORDER BY 1, 2"
    )
    return [(r["repo"], r["name"]) for r in rows]


async def commits_since(conn: Conn, repo: str, head: str, since: str | None, limit: int) -> int:
    """How many commits of ``repo`` lead from ``since`` (exclusive) to ``head`` (inclusive),
    counted up to ``limit``; the whole history when ``since`` is not an ancestor."""
    count = await conn.fetchval(
        """
        WITH RECURSIVE chain(id, parent, n) AS (
            SELECT id, parent, 1 FROM pfs_commits
            WHERE repo = $4 AND id = $1 AND id IS DISTINCT FROM $2
            UNION ALL
            SELECT c.id, c.parent, chain.n + 1 FROM pfs_commits c
            JOIN chain ON c.repo = $4 AND c.id = chain.parent
            WHERE c.id IS DISTINCT FROM $2 AND chain.n < $3
        )
        SELECT count(*) FROM chain
        """,
        head,
        since,
        limit,
        repo,
    )
    return int(count or 0)


async def set_branch_provenance(
    conn: Conn, repo: str, name: str, provenance: list[tuple[str, str]]
) -> None:
    await conn.execute(
        "DELETE FROM pfs_branch_provenance WHERE repo = $1 AND branch = $2", repo, name
    )
    for prov_repo, prov_branch in provenance:
        exists, _ = await get_branch_head(conn, prov_repo, prov_branch)
        if not exists:
            raise NotFound(f"provenance branch {prov_repo}@{prov_branch} not found")
        if (prov_repo, prov_branch) == (repo, name):
            raise InvalidArgument(f"branch {repo}@{name} cannot have itself as provenance")
        await conn.execute(
            "INSERT INTO pfs_branch_provenance VALUES ($1, $2, $3, $4)",
            repo,
            name,
            prov_repo,
            prov_branch,
        )
    # A cycle would make a pipeline DAG that never settles.
    cycle = await conn.fetchval(
        """
        WITH RECURSIVE up(repo, branch) AS (
            SELECT prov_repo, prov_branch FROM pfs_branch_provenance WHERE repo = $1 AND branch = $2
            UNION
            SELECT p.prov_repo, p.prov_branch FROM pfs_branch_provenance p
            JOIN up ON p.repo = up.repo AND p.branch = up.branch
        )
        SELECT 1 FROM up WHERE repo = $1 AND branch = $2 LIMIT 1
        """,
        repo,
        name,
    )
    if cycle:
        raise InvalidArgument(f"provenance of {repo}@{name} would form a cycle")


async def branch_provenance(conn: Conn, repo: str, name: str) -> list[tuple[str, str]]:
    rows = await conn.fetch(
        "SELECT prov_repo, prov_branch FROM pfs_branch_provenance WHERE repo = $1 AND branch = $2 "
        "ORDER BY 1, 2",
        repo,
        name,
    )
    return [(r["prov_repo"], r["prov_branch"]) for r in rows]


async def get_branch(conn: Conn, repo: str, name: str) -> BranchInfo:
    row = await conn.fetchrow(
        "SELECT head, trigger FROM pfs_branches WHERE repo = $1 AND name = $2", repo, name
    )
    if row is None:
        raise NotFound(f"branch {repo}@{name} not found (tusk list branch {repo})")
    return await _branch_info(conn, repo, name, row["head"], _trigger(row["trigger"]))


async def _branch_info(
    conn: Conn, repo: str, name: str, head: str | None, trigger: Trigger | None
) -> BranchInfo:
    prov = await branch_provenance(conn, repo, name)
    sub = await conn.fetch(
        "SELECT repo, branch FROM pfs_branch_provenance WHERE prov_repo = $1 AND prov_branch = $2 "
        "ORDER BY 1, 2",
        repo,
        name,
    )
    return BranchInfo(
        repo=repo,
        name=name,
        head=head,
        provenance=[f"{r}@{b}" for r, b in prov],
        subvenance=[f"{r['repo']}@{r['branch']}" for r in sub],
        trigger=trigger,
    )


async def list_branches(conn: Conn, repo: str) -> list[BranchInfo]:
    rows = await conn.fetch(
        "SELECT name, head, trigger FROM pfs_branches WHERE repo = $1 ORDER BY created DESC, name",
        repo,
    )
    return [
        await _branch_info(conn, repo, r["name"], r["head"], _trigger(r["trigger"])) for r in rows
    ]


async def delete_branch(conn: Conn, repo: str, name: str) -> None:
    await conn.execute("DELETE FROM pfs_branches WHERE repo = $1 AND name = $2", repo, name)


async def branch_subvenance(conn: Conn, repo: str, name: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT repo || '@' || branch AS b FROM pfs_branch_provenance "
        "WHERE prov_repo = $1 AND prov_branch = $2 ORDER BY 1",
        repo,
        name,
    )
    return [r["b"] for r in rows]


# Commits


async def insert_commit(
    conn: Conn,
    *,
    commit_id: str,
    repo: str,
    branch: str | None,
    parent: str | None,
    state: str,
    root: str | None = None,
    size_bytes: int = 0,
    file_count: int = 0,
    description: str = "",
    provenance: list[CommitRef] | None = None,
    second_parent: str | None = None,
    origin: CommitOrigin = "user",
) -> CommitRow:
    prov = json.dumps([{"repo": p.repo, "branch": p.branch, "id": p.id} for p in provenance or []])
    finished_now = state == "finished"
    rec = await conn.fetchrow(
        f"""
        INSERT INTO pfs_commits (id, repo, branch, parent, state, root, size_bytes, file_count,
                                 description, provenance, finishing, finished, second_parent,
                                 origin)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb,
                CASE WHEN $11 THEN now() END, CASE WHEN $11 THEN now() END, $12, $13)
        RETURNING {_COMMIT_COLUMNS}
        """,
        commit_id,
        repo,
        branch,
        parent,
        state,
        root,
        size_bytes,
        file_count,
        description,
        prov,
        finished_now,
        second_parent,
        origin,
    )
    assert rec is not None
    return commit_from_record(rec)


async def get_commit(
    conn: Conn, repo: str, commit_id: str, *, lock: bool = False
) -> CommitRow | None:
    rec = await conn.fetchrow(
        f"SELECT {_COMMIT_COLUMNS} FROM pfs_commits WHERE repo = $1 AND id = $2"
        + (" FOR UPDATE" if lock else ""),
        repo,
        commit_id,
    )
    return commit_from_record(rec) if rec else None


async def commit_exists(conn: Conn, repo: str, commit_id: str) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT true FROM pfs_commits WHERE repo = $1 AND id = $2", repo, commit_id
        )
    )


async def commit_set(conn: Conn, set_id: str, *, lock: bool = False) -> list[CommitRow]:
    """The commits of a commit set (one id across repos), oldest first."""
    rows = await conn.fetch(
        f"SELECT {_COMMIT_COLUMNS} FROM pfs_commits WHERE id = $1 ORDER BY seq"
        + (" FOR UPDATE" if lock else ""),
        set_id,
    )
    return [commit_from_record(r) for r in rows]


async def branches_past(
    conn: Conn, set_id: str, branches: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """Those of ``branches`` whose newest commit was computed from a commit of set ``set_id``
    or a later one of the same repo (by ``seq``): they are past the set. The newest commit,
    not the head: a job that read the set's commit and failed leaves the head where it was
    (or none at all, for a pipeline's first job), yet nothing of the set will come there."""
    rows = await conn.fetch(
        """
        SELECT DISTINCT w.repo, w.name FROM unnest($2::text[], $3::text[]) AS w(repo, name)
        CROSS JOIN LATERAL (
            SELECT c.provenance FROM pfs_commits c
            WHERE c.repo = w.repo AND c.branch = w.name
            ORDER BY c.seq DESC LIMIT 1
        ) h
        CROSS JOIN LATERAL jsonb_array_elements(h.provenance) p
        JOIN pfs_commits pc ON pc.repo = p->>'repo' AND pc.id = p->>'id'
        JOIN pfs_commits sc ON sc.repo = pc.repo AND sc.id = $1
        WHERE pc.seq >= sc.seq
        """,
        set_id,
        [r for r, _ in branches],
        [b for _, b in branches],
    )
    return [(r["repo"], r["name"]) for r in rows]


async def branch_subvenance_edges(
    conn: Conn, branches: list[tuple[str, str]]
) -> list[tuple[str, str, str, str]]:
    """(prov_repo, prov_branch, repo, branch) for every branch computed from one of
    ``branches``, at any distance (the branch provenance graph walked downstream)."""
    rows = await conn.fetch(
        """
        WITH RECURSIVE down(prov_repo, prov_branch, repo, branch) AS (
            SELECT p.prov_repo, p.prov_branch, p.repo, p.branch FROM pfs_branch_provenance p
            JOIN unnest($1::text[], $2::text[]) AS s(repo, branch)
              ON p.prov_repo = s.repo AND p.prov_branch = s.branch
          UNION
            SELECT p.prov_repo, p.prov_branch, p.repo, p.branch FROM down
            JOIN pfs_branch_provenance p ON p.prov_repo = down.repo AND p.prov_branch = down.branch
        )
        SELECT * FROM down
        """,
        [r for r, _ in branches],
        [b for _, b in branches],
    )
    return [(r["prov_repo"], r["prov_branch"], r["repo"], r["branch"]) for r in rows]


async def resolve_ref(conn: Conn, repo: str, ref: str) -> CommitRow:
    """The commit a ref names: a branch head or a commit id, then N parents back."""
    await require_repo(conn, repo)
    parsed = parse_ref(ref)
    exists, head = await get_branch_head(conn, repo, parsed.base)
    if exists:
        if head is None:
            raise NotFound(f"branch {repo}@{parsed.base} has no commits yet")
        commit_id = head
    elif COMMIT_ID_RE.match(parsed.base):
        commit_id = parsed.base
    else:
        raise NotFound(f"branch or commit {parsed.base!r} not found in repo {repo}")
    row = await get_commit(conn, repo, commit_id)
    if row is None:
        raise NotFound(f"commit {commit_id} not found in repo {repo}")
    for step in range(parsed.ancestors):
        if row.info.parent is None:
            raise NotFound(f"{repo}@{ref}: the history has only {step + 1} commit(s)")
        parent = await get_commit(conn, repo, row.info.parent)
        if parent is None:
            raise NotFound(f"{repo}@{ref}: parent commit {row.info.parent} is gone")
        row = parent
    return row


async def resolve_readable(conn: Conn, repo: str, ref: str) -> CommitRow:
    """The commit whose files a read of ``ref`` shows.

    A plain branch name whose head is still open reads its newest finished
    ancestor (readers never see a half-made commit); an explicit open commit id
    is refused with a hint.
    """
    row = await resolve_ref(conn, repo, ref)
    parsed = parse_ref(ref)
    is_branch = (await get_branch_head(conn, repo, parsed.base))[0]
    while not row.finished:
        if not is_branch:
            raise FailedPrecondition(
                f"commit {row.id} is still open; its files are readable once it is finished "
                f"(tusk finish commit {repo}@{row.id})"
            )
        if row.info.parent is None:
            raise NotFound(f"branch {repo}@{parsed.base} has no finished commits yet")
        parent = await get_commit(conn, repo, row.info.parent)
        if parent is None:
            raise NotFound(f"branch {repo}@{parsed.base} has no finished commits yet")
        row = parent
    return row


async def finish_commit_row(
    conn: Conn,
    repo: str,
    commit_id: str,
    *,
    root: str | None,
    size_bytes: int,
    file_count: int,
    description: str | None,
    error: str | None,
) -> CommitRow:
    rec = await conn.fetchrow(
        f"""
        UPDATE pfs_commits SET state = 'finished', root = $2, size_bytes = $3, file_count = $4,
               description = coalesce($5, description), error = $6, finished = now(),
               finishing = coalesce(finishing, now())
        WHERE id = $1 AND repo = $7 RETURNING {_COMMIT_COLUMNS}
        """,
        commit_id,
        root,
        size_bytes,
        file_count,
        description,
        error,
        repo,
    )
    if rec is None:
        raise NotFound(f"commit {repo}@{commit_id} not found")
    return commit_from_record(rec)


async def list_commits(
    conn: Conn, repo: str, branch: str | None, limit: int, before: str | None
) -> tuple[list[CommitRow], str | None]:
    before_seq = None
    if before is not None:
        before_seq = await conn.fetchval(
            "SELECT seq FROM pfs_commits WHERE repo = $1 AND id = $2", repo, before
        )
        if before_seq is None:
            raise InvalidArgument(f"paging cursor {before!r} is not a commit of {repo}")
    rows = await conn.fetch(
        f"""
        SELECT {_COMMIT_COLUMNS}, seq FROM pfs_commits
        WHERE repo = $1 AND ($2::text IS NULL OR branch = $2) AND ($3::bigint IS NULL OR seq < $3)
        ORDER BY seq DESC LIMIT $4
        """,
        repo,
        branch,
        before_seq,
        limit + 1,
    )
    page = [commit_from_record(r) for r in rows[:limit]]
    cursor = page[-1].id if len(rows) > limit else None
    return page, cursor


async def commits_with_provenance(conn: Conn, repo: str, commit_id: str) -> list[CommitRow]:
    """Commits whose provenance names ``repo@commit_id`` (its subvenance)."""
    rows = await conn.fetch(
        f"SELECT {_COMMIT_COLUMNS} FROM pfs_commits WHERE provenance @> $1::jsonb ORDER BY seq",
        json.dumps([{"repo": repo, "id": commit_id}]),
    )
    return [commit_from_record(r) for r in rows]


# The walks below follow provenance edges only: each step looks commits up by primary key
# (upstream) or through the GIN index on provenance (downstream), so their cost grows with
# the size of the DAG around the commit, never with the length of any history. The lookups
# are LATERAL subqueries kept apart by LIMIT/OFFSET so the planner runs them once per
# commit reached, instead of joining the whole table to a worktable it overestimates.
_COMMIT_COLUMNS_C = ", ".join(f"c.{name.strip()}" for name in _COMMIT_COLUMNS.split(","))

FULL_PROVENANCE_SQL = f"""
WITH RECURSIVE up(repo, id) AS (
    SELECT p->>'repo', p->>'id' FROM pfs_commits c, jsonb_array_elements(c.provenance) p
    WHERE c.repo = $2 AND c.id = $1
  UNION
    SELECT p->>'repo', p->>'id' FROM up,
        LATERAL (
            SELECT c.provenance FROM pfs_commits c WHERE c.repo = up.repo AND c.id = up.id LIMIT 1
        ) c,
        jsonb_array_elements(c.provenance) p
)
SELECT {_COMMIT_COLUMNS_C} FROM up,
    LATERAL (SELECT * FROM pfs_commits c WHERE c.repo = up.repo AND c.id = up.id LIMIT 1) c
ORDER BY c.seq
"""

FULL_SUBVENANCE_SQL = f"""
WITH RECURSIVE down(repo, id) AS (
    SELECT c.repo, c.id FROM pfs_commits c
    WHERE c.provenance
        @> jsonb_build_array(jsonb_build_object('repo', $2::text, 'id', $1::text))
  UNION
    SELECT c.repo, c.id FROM down,
        LATERAL (
            SELECT c.repo, c.id FROM pfs_commits c
            WHERE c.provenance
                @> jsonb_build_array(jsonb_build_object('repo', down.repo, 'id', down.id))
            OFFSET 0
        ) c
)
SELECT {_COMMIT_COLUMNS_C} FROM down,
    LATERAL (SELECT * FROM pfs_commits c WHERE c.repo = down.repo AND c.id = down.id LIMIT 1) c
ORDER BY c.seq
"""


async def full_provenance(conn: Conn, repo: str, commit_id: str) -> list[CommitRow]:
    """Every upstream commit of ``repo@commit_id``, at any distance, oldest first."""
    rows = await conn.fetch(FULL_PROVENANCE_SQL, commit_id, repo)
    return [commit_from_record(r) for r in rows]


async def full_subvenance(conn: Conn, repo: str, commit_id: str) -> list[CommitRow]:
    """Every downstream commit of ``repo@commit_id``, at any distance, oldest first."""
    rows = await conn.fetch(FULL_SUBVENANCE_SQL, commit_id, repo)
    return [commit_from_record(r) for r in rows]


async def unfinished_commits(conn: Conn, state: str) -> list[tuple[str, str]]:
    rows = await conn.fetch("SELECT repo, id FROM pfs_commits WHERE state = $1 ORDER BY seq", state)
    return [(r["repo"], r["id"]) for r in rows]


def commit_payload(row: CommitRow) -> dict[str, Any]:
    return row.info.to_json()
