"""Staging: what an open commit changes, not yet in any file index.

One row per path (the last write wins); ``entry`` NULL is a deletion. Finishing
the commit applies the rows, in path order, to the parent's index.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from shared.platform.db import Conn
from shared.storage.chunking import FileEntry

Change = tuple[str, FileEntry | None]


async def stage(conn: Conn, repo: str, commit_id: str, changes: Sequence[Change]) -> None:
    """Record changes in one statement (an unnest upsert, not one INSERT per file)."""
    if not changes:
        return
    paths = [p for p, _ in changes]
    entries = [json.dumps(e.to_json()) if e is not None else None for _, e in changes]
    sizes = [e.size if e is not None else 0 for _, e in changes]
    await conn.execute(
        """
        INSERT INTO pfs_staged (repo, commit_id, path, entry, size_bytes)
        SELECT $5, $1, p, e::jsonb, s FROM unnest($2::text[], $3::text[], $4::bigint[]) AS t(p, e, s)
        ON CONFLICT (repo, commit_id, path) DO UPDATE SET entry = excluded.entry, size_bytes = excluded.size_bytes
        """,
        commit_id,
        paths,
        entries,
        sizes,
        repo,
    )


async def staged_entry(
    conn: Conn, repo: str, commit_id: str, path: str
) -> tuple[bool, FileEntry | None]:
    """(is staged, entry) for one path; a staged deletion is (True, None)."""
    row = await conn.fetchrow(
        "SELECT entry FROM pfs_staged WHERE repo = $3 AND commit_id = $1 AND path = $2",
        commit_id,
        path,
        repo,
    )
    if row is None:
        return False, None
    return True, _entry(row["entry"])


async def staged_under(conn: Conn, repo: str, commit_id: str, directory: str) -> list[Change]:
    """Staged changes at or under ``directory``, sorted by path."""
    prefix = directory.rstrip("/") + "/"
    rows = await conn.fetch(
        "SELECT path, entry FROM pfs_staged WHERE repo = $4 AND commit_id = $1 "
        "AND (path = $2 OR starts_with(path, $3)) "
        'ORDER BY path COLLATE "C"',
        commit_id,
        directory,
        prefix,
        repo,
    )
    return [(r["path"], _entry(r["entry"])) for r in rows]


async def all_staged(conn: Conn, repo: str, commit_id: str) -> list[Change]:
    rows = await conn.fetch(
        "SELECT path, entry FROM pfs_staged WHERE repo = $2 AND commit_id = $1 "
        'ORDER BY path COLLATE "C"',
        commit_id,
        repo,
    )
    return [(r["path"], _entry(r["entry"])) for r in rows]


async def clear(conn: Conn, repo: str, commit_id: str) -> None:
    await conn.execute("DELETE FROM pfs_staged WHERE repo = $1 AND commit_id = $2", repo, commit_id)


def _entry(raw: str | None) -> FileEntry | None:
    if raw is None:
        return None
    return FileEntry.from_json(json.loads(raw) if isinstance(raw, str) else raw)
