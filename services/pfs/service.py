"""The PFS core: repos, branches, commits and files, composed from refs, staging and the index.

Each write is one PostgreSQL transaction that also records its events in the
outbox, so an event exists exactly when its change committed. File bytes go to
the chunk store *before* that transaction; an upload that fails half-way leaves
only unreferenced chunks behind, never a half-made commit.

Writes to a branch with no open commit make a commit of their own (as pachctl
does): the new index is computed from the head, then the head moves by
compare-and-set under the branch row lock; if another writer moved it first,
the change is re-applied on the new head, so concurrent puts all land.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from services.pfs import commit_sets, refs, staging, triggers
from services.pfs.committed import Change, CommittedFiles
from services.pfs.events import commit_payload
from services.pfs.history import parents_without
from services.pfs.merge import MergePlan, Strategy, merge_base, plan_merge
from services.pfs.store_guard import GuardedStore, in_flight
from shared.api.events import (
    BranchCreated,
    BranchDeleted,
    BranchMoved,
    CommitDeleted,
    RepoCreated,
    RepoDeleted,
)
from shared.api.filestream import FileStreamReader
from shared.api.names import COMMIT_ID_RE, check_name, file_path, normalize_path, parse_ref
from shared.api.pfs_models import (
    BranchInfo,
    CommitInfo,
    CommitOrigin,
    CommitRef,
    CommitSetInfo,
    FileChange,
    FileInfo,
    PutResult,
    RepoInfo,
    Trigger,
)
from shared.platform.backoff import Backoff, keep_running
from shared.platform.bus import Bus
from shared.platform.config import Config
from shared.platform.db import Conn, Pool, acquire, db_ready
from shared.platform.errors import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from shared.platform.outbox import emit
from shared.platform.waits import wait_for
from shared.storage.chunking import (
    ChunkCache,
    FileEntry,
    PackWriter,
    chunk_key,
    concat_entries,
    missing_chunks,
    read_range,
)
from shared.storage.objstore import ObjectStore

log = logging.getLogger("tusk.pfs")

# How often a write re-applies its change after losing a head race before giving up.
MAX_HEAD_RETRIES = 100
# A chunk is named by the BLAKE3-256 hex of its bytes.
CHUNK_NAME_RE = re.compile(r"[0-9a-f]{64}")
# How often cron triggers are checked (their schedules have a resolution of a second).
CRON_TRIGGER_INTERVAL_S = 1.0


@dataclass
class PendingWrite:
    """A write waiting to land: explicit changes plus directory deletions and appends."""

    puts: dict[str, FileEntry]
    appends: set[str]
    delete_dirs: list[str]
    # Exact files to delete if present (no error when missing): pipeline output replacement.
    delete_files: set[str] = field(default_factory=set)

    @classmethod
    def empty(cls) -> PendingWrite:
        return cls({}, set(), [])


class PfsService:
    def __init__(
        self, config: Config, pool: Pool, store: GuardedStore, files: CommittedFiles
    ) -> None:
        self.config = config
        self.pool = pool
        self.store: ObjectStore = store
        # Writes register here while in flight, for the garbage collector (store_guard).
        self.guard = store
        self.files = files
        self.chunk_cache = ChunkCache(max_bytes=256 << 20)
        self._lanes: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    # Repos

    async def create_repo(self, name: str, description: str = "") -> RepoInfo:
        check_name("repo", name)
        async with self.pool.acquire() as conn, conn.transaction():
            await refs.create_repo(conn, name, description)
            await emit(conn, self.config, RepoCreated(repo=name, description=description))
            return await refs.get_repo(conn, name)

    async def list_repos(self) -> list[RepoInfo]:
        async with self.pool.acquire() as conn:
            return await refs.list_repos(conn)

    async def inspect_repo(self, name: str) -> RepoInfo:
        async with self.pool.acquire() as conn:
            return await refs.get_repo(conn, name)

    async def delete_repo(self, name: str, *, force: bool = False) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await refs.require_repo(conn, name)
            downstream = await refs.downstream_of_repo(conn, name)
            if downstream and not force:
                raise FailedPrecondition(
                    f"repo {name} is provenance of {', '.join(downstream)}; "
                    "delete those first or use --force"
                )
            await refs.delete_repo(conn, name)
            await emit(conn, self.config, RepoDeleted(repo=name))

    # Branches

    async def create_branch(
        self,
        repo: str,
        name: str,
        *,
        head: str | None = None,
        provenance: list[str] | None = None,
        trigger: Trigger | None = None,
    ) -> BranchInfo:
        """Create a branch, or move/re-provenance/re-trigger it when it exists (as pachctl)."""
        check_name("branch", name)
        prov = [_parse_branch(p) for p in provenance or []]
        if trigger is not None:
            triggers.check_trigger(repo, name, trigger)
        async with self.pool.acquire() as conn, conn.transaction():
            await refs.require_repo(conn, repo)
            head_id = (await refs.resolve_ref(conn, repo, head)).id if head else None
            exists, old_head = await refs.get_branch_head(conn, repo, name, lock=True)
            if exists:
                # pachctl create branch on an existing branch moves its head / sets provenance.
                await refs.set_branch_head(conn, repo, name, head_id if head else old_head)
            else:
                await refs.insert_branch(conn, repo, name, head_id)
                await emit(conn, self.config, BranchCreated(repo=repo, branch=name, head=head_id))
            if provenance is not None or not exists:
                await refs.set_branch_provenance(conn, repo, name, prov)
            if trigger is not None:
                await triggers.check_no_loop(conn, repo, name, trigger)
                await refs.set_branch_trigger(conn, repo, name, trigger)
            # A new branch made at a head moved too (from nothing): head watchers see it.
            if head and head_id != old_head:
                await self._emit_moved(conn, repo, name, old_head, head_id)
            info = await refs.get_branch(conn, repo, name)
            if info.trigger is not None and info.provenance:
                raise InvalidArgument(
                    f"branch {repo}@{name} cannot have both provenance and a trigger: "
                    "its head would be set by two things"
                )
            return info

    async def list_branches(self, repo: str) -> list[BranchInfo]:
        async with self.pool.acquire() as conn:
            await refs.require_repo(conn, repo)
            return await refs.list_branches(conn, repo)

    async def inspect_branch(self, repo: str, name: str) -> BranchInfo:
        async with self.pool.acquire() as conn:
            await refs.require_repo(conn, repo)
            return await refs.get_branch(conn, repo, name)

    async def delete_branch(self, repo: str, name: str, *, force: bool = False) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await refs.require_repo(conn, repo)
            await refs.get_branch(conn, repo, name)
            sub = await refs.branch_subvenance(conn, repo, name)
            if sub and not force:
                raise FailedPrecondition(
                    f"branch {repo}@{name} is provenance of {', '.join(sub)}; use --force to delete it"
                )
            await conn.execute(
                "DELETE FROM pfs_branch_provenance WHERE prov_repo = $1 AND prov_branch = $2",
                repo,
                name,
            )
            await refs.delete_branch(conn, repo, name)
            await emit(conn, self.config, BranchDeleted(repo=repo, branch=name))

    # Commits

    async def start_commit(
        self,
        repo: str,
        branch: str,
        *,
        description: str = "",
        provenance: list[CommitRef] | None = None,
        commit_id: str | None = None,
        origin: CommitOrigin = "user",
    ) -> CommitInfo:
        """Open a commit on ``repo@branch``. ``commit_id`` joins it to that commit set (a
        pipeline's output takes its triggering input commit's id); refused if the repo
        already has a commit of that id. ``origin``: who makes it (shown, not checked)."""
        check_name("branch", branch)
        if commit_id is not None and not COMMIT_ID_RE.fullmatch(commit_id):
            raise InvalidArgument(f"commit id {commit_id!r}: expected 32 hex digits")
        async with self.pool.acquire() as conn, conn.transaction():
            await refs.require_repo(conn, repo)
            head = await self._lock_or_create_branch(conn, repo, branch)
            if commit_id is not None and await refs.commit_exists(conn, repo, commit_id):
                raise AlreadyExists(f"repo {repo} already has a commit of set {commit_id}")
            if head is not None:
                head_row = await refs.get_commit(conn, repo, head)
                if head_row is not None and not head_row.finished:
                    raise FailedPrecondition(
                        f"branch {repo}@{branch} already has open commit {head}; "
                        f"finish it first (tusk finish commit {repo}@{branch})"
                    )
            if provenance is None:
                provenance = await self._current_provenance(conn, repo, branch)
            row = await refs.insert_commit(
                conn,
                commit_id=commit_id or refs.new_commit_id(),
                repo=repo,
                branch=branch,
                parent=head,
                state="open",
                description=description,
                provenance=provenance,
                origin=origin,
            )
            await refs.set_branch_head(conn, repo, branch, row.id)
            await self._emit_commit(conn, "commit.started", row)
            await self._emit_moved(conn, repo, branch, head, row.id)
            return row.info

    @in_flight
    async def finish_commit(
        self, repo: str, ref: str, *, description: str | None = None, error: str | None = None
    ) -> CommitInfo:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._lock_commit(conn, repo, ref)
            if row.info.state != "open":
                raise FailedPrecondition(f"commit {repo}@{row.id} is already {row.info.state}")
            await conn.execute(
                "UPDATE pfs_commits SET state = 'finishing', finishing = now() "
                "WHERE repo = $1 AND id = $2",
                repo,
                row.id,
            )
        return await self._complete_finish(repo, row.id, description=description, error=error)

    async def _complete_finish(
        self,
        repo: str,
        commit_id: str,
        *,
        description: str | None = None,
        error: str | None = None,
    ) -> CommitInfo:
        """Apply a finishing commit's staged changes; idempotent, so recovery can rerun it."""
        async with self.pool.acquire() as conn:
            row = await refs.get_commit(conn, repo, commit_id)
            if row is None or row.info.state == "finished":
                raise (
                    NotFound(f"commit {commit_id} not found")
                    if row is None
                    else FailedPrecondition(f"commit {commit_id} is already finished")
                )
            base_root = await self._parent_root(conn, row)
            changes = await staging.all_staged(conn, repo, commit_id)
        root = await self.files.apply(base_root, changes)
        count, size = await self.files.totals(root)
        async with self.pool.acquire() as conn, conn.transaction():
            current = await refs.get_commit(conn, repo, commit_id, lock=True)
            if current is None or current.info.state != "finishing":
                raise FailedPrecondition(f"commit {commit_id} changed while finishing")
            done = await refs.finish_commit_row(
                conn,
                repo,
                commit_id,
                root=root,
                size_bytes=size,
                file_count=count,
                description=description,
                error=error,
            )
            await staging.clear(conn, repo, commit_id)
            await self._emit_commit(conn, "commit.finished", done)
            if error is None and done.info.branch is not None:
                await self._follow_if_head(conn, done)
            if error is not None and done.info.branch is not None:
                # A failed commit stays readable by id, but its branch keeps its last good head.
                _, head = await refs.get_branch_head(
                    conn, done.info.repo, done.info.branch, lock=True
                )
                if head == done.id:
                    await refs.set_branch_head(
                        conn, done.info.repo, done.info.branch, done.info.parent
                    )
                    await self._emit_moved(
                        conn, done.info.repo, done.info.branch, done.id, done.info.parent
                    )
            return done.info

    async def _follow_if_head(self, conn: Conn, done: refs.CommitRow) -> None:
        """Let the branches that trigger on the commit's branch follow it (if still its head)."""
        assert done.info.branch is not None
        _, head = await refs.get_branch_head(conn, done.info.repo, done.info.branch)
        if head == done.id:
            await triggers.follow(
                conn, self.config, done.info.repo, done.info.branch, datetime.now(UTC)
            )

    async def run_cron_triggers(self) -> None:
        """Check cron triggers on their schedule, for good (the app owns this task): a cron
        trigger fires at its due time even when no commit arrives then."""

        async def loop() -> None:
            while True:
                await self.tick_cron_triggers(datetime.now(UTC))
                await asyncio.sleep(CRON_TRIGGER_INTERVAL_S)

        await keep_running("cron triggers", loop, log, Backoff(maximum=30.0))

    async def tick_cron_triggers(self, now: datetime) -> None:
        """Move every cron-triggered branch whose conditions hold at ``now``."""
        async with acquire(self.pool) as conn:
            branches = await refs.cron_triggered_branches(conn)
        for repo, name in branches:
            async with acquire(self.pool) as conn, conn.transaction():
                target = await refs.triggered_branch(conn, repo, name)
                if target is None:
                    continue
                _, source_head = await refs.get_branch_head(conn, repo, target.trigger.branch)
                if source_head is not None and await triggers.jump_if_due(
                    conn, self.config, target, source_head, now
                ):
                    await triggers.follow(conn, self.config, repo, name, now)

    @in_flight
    async def recover_finishing(self) -> int:
        """Finish commits a crash left in 'finishing' (run at start)."""
        async with self.pool.acquire() as conn:
            ids = await refs.unfinished_commits(conn, "finishing")
        for repo, commit_id in ids:
            log.info("recovering commit %s@%s left finishing", repo, commit_id)
            await self._complete_finish(repo, commit_id)
        return len(ids)

    async def _lock_commit(self, conn: Conn, repo: str, ref: str) -> refs.CommitRow:
        """Resolve ``ref`` and lock its commit row for the rest of the transaction."""
        resolved = await refs.resolve_ref(conn, repo, ref)
        row = await refs.get_commit(conn, repo, resolved.id, lock=True)
        if row is None:
            raise NotFound(f"commit {repo}@{resolved.id} was deleted meanwhile")
        return row

    async def _parent_root(self, conn: Conn, row: refs.CommitRow) -> str | None:
        if row.info.parent is None:
            return None
        parent = await refs.get_commit(conn, row.info.repo, row.info.parent)
        if parent is None:
            return None
        if not parent.finished:
            raise FailedPrecondition(f"parent commit {parent.id} of {row.id} is not finished yet")
        return parent.root

    async def inspect_commit(self, repo: str, ref: str) -> CommitInfo:
        async with self.pool.acquire() as conn:
            return (await refs.resolve_ref(conn, repo, ref)).info

    async def list_commits(
        self, repo: str, branch: str | None, limit: int, before: str | None
    ) -> tuple[list[CommitInfo], str | None]:
        async with self.pool.acquire() as conn:
            await refs.require_repo(conn, repo)
            if branch is not None:
                await refs.get_branch(conn, repo, branch)
            rows, cursor = await refs.list_commits(conn, repo, branch, limit, before)
            return [r.info for r in rows], cursor

    async def commits_from(self, repo: str, ref: str) -> list[CommitInfo]:
        """Commits whose provenance includes ``repo@ref`` (its subvenance)."""
        async with self.pool.acquire() as conn:
            row = await refs.resolve_ref(conn, repo, ref)
            return [r.info for r in await refs.commits_with_provenance(conn, repo, row.id)]

    async def commit_lineage(self, repo: str, ref: str) -> dict[str, list[CommitInfo]]:
        """A commit's direct provenance, its full provenance and its full subvenance."""
        async with self.pool.acquire() as conn:
            row = await refs.resolve_ref(conn, repo, ref)
            upstream = await refs.full_provenance(conn, repo, row.id)
            downstream = await refs.full_subvenance(conn, repo, row.id)
        direct = {(p.repo, p.id) for p in row.info.provenance}
        return {
            "direct_provenance": [r.info for r in upstream if (r.info.repo, r.id) in direct],
            "full_provenance": [r.info for r in upstream],
            "subvenance": [r.info for r in downstream],
        }

    async def wait_commit(self, repo: str, ref: str, timeout: float | None, bus: Bus) -> CommitInfo:
        """The commit once finished; woken by the repo's commit events, not a timer."""
        async with self.pool.acquire() as conn:
            commit_id = (await refs.resolve_ref(conn, repo, ref)).id

        async def finished() -> CommitInfo | None:
            async with self.pool.acquire() as conn:
                row = await refs.get_commit(conn, repo, commit_id)
            if row is None:
                raise NotFound(f"commit {commit_id} was deleted while waiting")
            return row.info if row.finished else None

        # commit.finished and commit.deleted of this repo.
        subject = f"{self.config.nats_prefix}.pfs.commit.*.{repo}"
        info = await wait_for(bus, subject, finished, timeout)
        if info is None:
            raise FailedPrecondition(f"commit {repo}@{commit_id} not finished after {timeout} s")
        return info

    async def delete_commit(self, repo: str, ref: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await self._delete_open(conn, await self._lock_commit(conn, repo, ref))

    async def _delete_open(self, conn: Conn, row: refs.CommitRow) -> None:
        """Delete an open commit whose row the caller locked; its head goes back a commit."""
        repo = row.info.repo
        if row.info.state != "open":
            raise FailedPrecondition(
                f"commit {repo}@{row.id} is {row.info.state}; only open commits can be deleted "
                "(tusk squash commit removes a finished one from history)"
            )
        if row.info.branch is not None:
            exists, head = await refs.get_branch_head(conn, repo, row.info.branch, lock=True)
            if exists and head == row.id:
                await refs.set_branch_head(conn, repo, row.info.branch, row.info.parent)
                await self._emit_moved(conn, repo, row.info.branch, row.id, row.info.parent)
        await self._unlink(conn, row)

    async def _unlink(self, conn: Conn, row: refs.CommitRow) -> None:
        """Take a commit out of its repo's history: its children get its parents, both of
        a merge commit's (services/pfs/history.py)."""
        repo = row.info.repo
        own = await conn.fetchrow(
            "SELECT parent, second_parent FROM pfs_commits WHERE repo = $1 AND id = $2",
            repo,
            row.id,
        )
        replacement = (own["parent"], own["second_parent"]) if own else (row.info.parent, None)
        children = await conn.fetch(
            "SELECT id, parent, second_parent FROM pfs_commits "
            "WHERE repo = $1 AND (parent = $2 OR second_parent = $2) FOR UPDATE",
            repo,
            row.id,
        )
        for child in children:
            parent, second = parents_without(
                child["id"], (child["parent"], child["second_parent"]), row.id, replacement
            )
            await conn.execute(
                "UPDATE pfs_commits SET parent = $3, second_parent = $4 WHERE repo = $1 AND id = $2",
                repo,
                child["id"],
                parent,
                second,
            )
        await conn.execute("DELETE FROM pfs_commits WHERE repo = $1 AND id = $2", repo, row.id)
        await emit(
            conn,
            self.config,
            CommitDeleted(repo=repo, commit=row.id, branch=row.info.branch, commit_set=row.id),
        )

    async def squash_commit(self, repo: str, ref: str) -> None:
        """Remove a finished commit from history; its children keep their (complete) content."""
        async with self.pool.acquire() as conn, conn.transaction():
            await self._squash_finished(conn, await self._lock_commit(conn, repo, ref))

    async def _squash_finished(self, conn: Conn, row: refs.CommitRow) -> None:
        """Squash a finished commit the caller locked. Commits of its own set may name it as
        provenance (they go in the same transaction); any other commit keeps it."""
        repo = row.info.repo
        if not row.finished:
            raise FailedPrecondition(
                f"commit {repo}@{row.id} is open; delete it instead (tusk delete commit)"
            )
        heads = await conn.fetch(
            "SELECT name FROM pfs_branches WHERE repo = $1 AND head = $2", repo, row.id
        )
        if heads:
            raise FailedPrecondition(
                f"commit {repo}@{row.id} is the head of branch {heads[0]['name']}; "
                "only commits with children can be squashed"
            )
        user = await conn.fetchval(
            "SELECT repo || '@' || id FROM pfs_commits "
            "WHERE provenance @> $1::jsonb AND id <> $2 LIMIT 1",
            json.dumps([{"repo": repo, "id": row.id}]),
            row.id,
        )
        if user:
            raise FailedPrecondition(
                f"commit {repo}@{row.id} is provenance of other commits ({user}); it is kept"
            )
        await self._unlink(conn, row)

    # Commit sets: one id across repos (services/pfs/commit_sets.py)

    async def inspect_commit_set(self, set_id: str) -> CommitSetInfo:
        _check_set_id(set_id)
        async with self.pool.acquire() as conn:
            return await commit_sets.read_set(conn, set_id)

    async def wait_commit_set(self, set_id: str, timeout: float | None, bus: Bus) -> CommitSetInfo:
        """The set once settled: every commit finished and no branch pending, or a commit
        failed. Woken by every repo's commit events, since the set reaches new repos."""
        await self.inspect_commit_set(set_id)  # an unknown id fails at once

        async def settled() -> CommitSetInfo | None:
            info = await self.inspect_commit_set(set_id)
            return None if info.state == "running" else info

        subject = f"{self.config.nats_prefix}.pfs.commit.*.*"
        info = await wait_for(bus, subject, settled, timeout)
        if info is None:
            now = await self.inspect_commit_set(set_id)
            waiting = [f"{c.repo}@{c.branch}" for c in now.commits if c.state != "finished"]
            raise FailedPrecondition(
                f"commit set {set_id} not finished after {timeout} s; still waiting for "
                + ", ".join(waiting + now.pending)
            )
        return info

    async def delete_commit_set(self, set_id: str) -> list[CommitInfo]:
        """Delete every commit of an open set, all or none; the commits deleted."""
        _check_set_id(set_id)
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await self._lock_set(conn, set_id)
            for row in rows:
                await self._delete_open(conn, row)
            return [r.info for r in rows]

    async def squash_commit_set(self, set_id: str) -> list[CommitInfo]:
        """Squash every commit of a finished set, all or none; the commits squashed."""
        _check_set_id(set_id)
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await self._lock_set(conn, set_id)
            for row in rows:
                await self._squash_finished(conn, row)
            return [r.info for r in rows]

    async def _lock_set(self, conn: Conn, set_id: str) -> list[refs.CommitRow]:
        rows = await refs.commit_set(conn, set_id, lock=True)
        if not rows:
            raise NotFound(f"no commit set {set_id}: no repo has a commit with that id")
        return rows

    # Files: writes

    async def put_files(
        self,
        repo: str,
        branch: str,
        reader: FileStreamReader,
        *,
        append: bool,
        description: str = "",
    ) -> PutResult:
        """Store every file of an upload stream, then land them in one commit (or none)."""
        async with self.guard.upload():
            return await self._put_files(repo, branch, reader, append, description)

    async def _put_files(
        self, repo: str, branch: str, reader: FileStreamReader, append: bool, description: str
    ) -> PutResult:
        await self._check_writable_branch(repo, branch)
        paths: list[str] = []
        async with PackWriter(self.store, max_file_bytes=self.config.max_file_bytes) as writer:
            while (header := await reader.next_header()) is not None:
                paths.append(file_path(header["path"]))
                writer.start_file()
                # next_block, not blocks(): no async generator per file (10,000 small ones)
                while (block := await reader.next_block()) is not None:
                    await writer.write(block)
                writer.end_file()
            entries = await writer.close()
        pending = PendingWrite.empty()
        for path, entry in zip(paths, entries, strict=True):
            if path in pending.puts and append:
                entry = await concat_entries(
                    self.store, pending.puts[path], entry, self.chunk_cache
                )
            pending.puts[path] = entry
            if append:
                pending.appends.add(path)
        total = sum(e.size for e in entries)
        commit = await self._land(repo, branch, pending, description)
        return PutResult(commit, files=len(paths), bytes=total)

    async def put_entries(
        self,
        repo: str,
        branch: str,
        changes: list[tuple[str, FileEntry | None]],
        *,
        commit: str | None = None,
        origin: CommitOrigin = "user",
    ) -> PutResult:
        """Land files whose chunks are already stored (pipeline outputs), by reference.

        ``None`` deletes a path. With ``commit``, the branch's open head must be that commit.
        ``origin``: who makes the commit, if the write makes one (not into an open commit).
        """
        async with self.guard.upload():
            return await self._put_entries(repo, branch, changes, commit, origin)

    async def _put_entries(
        self,
        repo: str,
        branch: str,
        changes: list[tuple[str, FileEntry | None]],
        commit: str | None,
        origin: CommitOrigin,
    ) -> PutResult:
        await self._check_writable_branch(repo, branch)
        pending = PendingWrite.empty()
        for path, entry in changes:
            norm = file_path(path)
            if entry is None:
                pending.delete_files.add(norm)
            else:
                pending.puts[norm] = entry
        await self._check_chunks_stored(pending.puts)
        if commit is not None:
            async with self.pool.acquire() as conn:
                _, head = await refs.get_branch_head(conn, repo, branch)
            if head != commit:
                raise FailedPrecondition(
                    f"commit {repo}@{commit} is not the open head of branch {branch}"
                )
        info = await self._land(repo, branch, pending, "", origin)
        if commit is not None and info.id != commit:
            raise FailedPrecondition(f"commit {repo}@{commit} was finished meanwhile")
        return PutResult(
            info, files=len(pending.puts), bytes=sum(e.size for e in pending.puts.values())
        )

    async def _check_chunks_stored(self, puts: dict[str, FileEntry]) -> None:
        """Refuse entries naming chunks that are not stored: landed, they would be files
        whose bytes can never be read. One ``exists`` per distinct chunk, concurrently."""
        where: dict[str, str] = {}  # chunk → the first path that references it
        for path, entry in puts.items():
            for ref in entry.chunks:
                if not CHUNK_NAME_RE.fullmatch(ref.chunk):
                    raise InvalidArgument(
                        f"entry for {path} names chunk {ref.chunk!r}: "
                        "not a chunk name (64 hex digits)"
                    )
                where.setdefault(ref.chunk, path)
        # A chunk in the read cache was read from the store: no need to ask again (but a
        # collection must know it is re-used; a chunk being deleted has left the cache).
        unknown = []
        for chunk in where:
            if chunk in self.chunk_cache:
                self.guard.touch_reused(chunk_key(chunk))
            else:
                unknown.append(chunk)
        missing = await missing_chunks(self.store, unknown)
        if missing:
            chunk = min(missing, key=lambda c: (where[c], c))
            more = f" (and {len(missing) - 1} more missing chunks)" if len(missing) > 1 else ""
            raise InvalidArgument(
                f"entry for {where[chunk]} references chunk {chunk}, which is not in "
                f"the object store{more}; store the bytes before landing them by reference"
            )

    @in_flight
    async def delete_file(self, repo: str, branch: str, path: str) -> PutResult:
        path = normalize_path(path)
        await self._check_writable_branch(repo, branch)
        pending = PendingWrite({}, set(), [path])
        commit = await self._land(repo, branch, pending, "")
        return PutResult(commit)

    @in_flight
    async def copy_file(
        self,
        src_repo: str,
        src_ref: str,
        src_path: str,
        repo: str,
        branch: str,
        path: str,
        *,
        append: bool,
    ) -> PutResult:
        src_path = normalize_path(src_path)
        path = normalize_path(path)
        await self._check_writable_branch(repo, branch)
        async with self.pool.acquire() as conn:
            src = await refs.resolve_readable(conn, src_repo, src_ref)
        pending = PendingWrite.empty()
        base = "" if path == "/" else path
        async for key, entry in self.files.files_under(src.root, src_path):
            rel = key[len(src_path) :] if src_path != "/" else key
            dst = path if rel == "" else base + rel
            pending.puts[file_path(dst)] = entry
            if append:
                pending.appends.add(dst)
        if not pending.puts:
            raise NotFound(f"{src_repo}@{src_ref}:{src_path} not found")
        commit = await self._land(repo, branch, pending, "")
        return PutResult(
            commit, files=len(pending.puts), bytes=sum(e.size for e in pending.puts.values())
        )

    async def _check_writable_branch(self, repo: str, branch: str) -> None:
        """Refuse writes to refs that are not branch names before any byte is stored."""
        async with self.pool.acquire() as conn:
            await refs.require_repo(conn, repo)
            if parse_ref(branch).ancestors or "^" in branch or "~" in branch:
                raise InvalidArgument(f"cannot write to {repo}@{branch}: writes need a branch name")
            exists, _ = await refs.get_branch_head(conn, repo, branch)
            if not exists and COMMIT_ID_RE.match(branch):
                raise InvalidArgument(
                    f"cannot write to commit {repo}@{branch}: commits are immutable; "
                    f"write to a branch (e.g. {repo}@master)"
                )
            check_name("branch", branch)

    async def _land(
        self,
        repo: str,
        branch: str,
        pending: PendingWrite,
        description: str,
        origin: CommitOrigin = "user",
    ) -> CommitInfo:
        """Put a write into the branch's open commit, or make a commit of its own."""
        async with self._lane(repo, branch):
            return await self._land_in_turn(repo, branch, pending, description, origin)

    def _lane(self, repo: str, branch: str) -> asyncio.Lock:
        """The turn this process's writers to one branch take, one after another.

        Racing, every writer computed its commit on the same head and all but one lost
        the compare-and-set and computed again: N concurrent writers cost O(N²) applies
        (100 took ~98 s, and some gave up). In turn, each computes once, on the latest
        head. Other replicas still race this one; the compare-and-set settles that.
        """
        lane = self._lanes.get((repo, branch))
        if lane is None:
            lane = self._lanes[(repo, branch)] = asyncio.Lock()
        return lane

    async def _land_in_turn(
        self,
        repo: str,
        branch: str,
        pending: PendingWrite,
        description: str,
        origin: CommitOrigin = "user",
    ) -> CommitInfo:
        """``_land`` once this process's earlier writes to the branch are done."""
        for attempt in range(MAX_HEAD_RETRIES):
            async with self.pool.acquire() as conn:
                _exists, head = await refs.get_branch_head(conn, repo, branch)
                head_row = await refs.get_commit(conn, repo, head) if head else None
            if head_row is not None and not head_row.finished:
                landed = await self._stage_into_open(repo, branch, head_row.id, pending)
                if landed is not None:
                    return landed
                continue
            base_root = head_row.root if head_row else None
            changes = await self._resolve_changes(base_root, None, pending)
            root = await self.files.apply(base_root, changes)
            count, size = await self.files.totals(root)
            async with self.pool.acquire() as conn, conn.transaction():
                current = await self._lock_or_create_branch(conn, repo, branch)
                if current != head:
                    await asyncio.sleep(random.uniform(0, 0.005 * (attempt + 1)))
                    continue  # another writer won the race; re-apply on its head
                provenance = await self._current_provenance(conn, repo, branch)
                row = await refs.insert_commit(
                    conn,
                    commit_id=refs.new_commit_id(),
                    repo=repo,
                    branch=branch,
                    parent=head,
                    state="finished",
                    root=root,
                    size_bytes=size,
                    file_count=count,
                    description=description,
                    provenance=provenance,
                    origin=origin,
                )
                await refs.set_branch_head(conn, repo, branch, row.id)
                await self._emit_commit(conn, "commit.started", row)
                await self._emit_commit(conn, "commit.finished", row)
                await self._emit_moved(conn, repo, branch, head, row.id)
                await triggers.follow(conn, self.config, repo, branch, datetime.now(UTC))
                return row.info
        raise Conflict(f"branch {repo}@{branch} kept moving; the write was not applied, retry it")

    # Merge and revert

    @in_flight
    async def merge_branch(
        self,
        repo: str,
        source: str,
        dest: str,
        *,
        strategy: Strategy | None = None,
        message: str = "",
    ) -> tuple[str, CommitInfo]:
        """Merge ``repo@source`` into ``repo@dest``: ("fast-forward" | "merge" | "up-to-date", head)."""
        async with self.pool.acquire() as conn:
            await refs.require_repo(conn, repo)
            await self._check_mergeable_into(conn, repo, dest)
            their = await refs.resolve_readable(conn, repo, source)
            await refs.get_branch(conn, repo, source)  # a branch, not a commit id
        async with self._lane(repo, dest):
            for _ in range(MAX_HEAD_RETRIES):
                async with self.pool.acquire() as conn:
                    _, head = await refs.get_branch_head(conn, repo, dest)
                    ours = await refs.get_commit(conn, repo, head) if head else None
                    if ours is not None and not ours.finished:
                        raise FailedPrecondition(
                            f"{repo}@{dest} has an open commit {ours.id}; finish it before merging"
                        )
                    base = await merge_base(conn, repo, their.id, head) if head else None
                if ours is not None and base == their.id:
                    return "up-to-date", ours.info
                if ours is None or base == ours.id:
                    moved = await self._move_head(repo, dest, head, their)
                    if moved is not None:
                        return "fast-forward", moved
                    continue
                async with self.pool.acquire() as conn:
                    base_row = await refs.get_commit(conn, repo, base) if base else None
                plan = await plan_merge(
                    self.files.index,
                    base_row.root if base_row else None,
                    their.root,
                    ours.root,
                    strategy,
                )
                if plan.conflicts:
                    raise Conflict(
                        _conflict_text(
                            f"merge of {repo}@{source} into {repo}@{dest} refused",
                            "changed on both sides",
                            plan,
                            "--strategy source|dest takes one side for all of them",
                        )
                    )
                description = message or f"Merge {repo}@{source} ({their.id}) into {dest}"
                made = await self._commit_on(
                    repo, dest, ours, plan, description, "merge", second_parent=their
                )
                if made is not None:
                    return "merge", made
        raise Conflict(f"branch {repo}@{dest} kept moving; the merge was not applied, retry it")

    @in_flight
    async def revert_commit(
        self, repo: str, ref: str, branch: str | None = None, message: str = ""
    ) -> CommitInfo:
        """A new commit on ``branch`` undoing what commit ``ref`` changed (three-way)."""
        async with self.pool.acquire() as conn:
            undone = await refs.resolve_readable(conn, repo, ref)
            target = branch or undone.info.branch
            if target is None:
                raise InvalidArgument(f"commit {undone.id} has no branch: name one with --branch")
            await self._check_mergeable_into(conn, repo, target)
            parent = (
                await refs.get_commit(conn, repo, undone.info.parent)
                if undone.info.parent
                else None
            )
        async with self._lane(repo, target):
            for _ in range(MAX_HEAD_RETRIES):
                async with self.pool.acquire() as conn:
                    _, head = await refs.get_branch_head(conn, repo, target)
                    ours = await refs.get_commit(conn, repo, head) if head else None
                    if ours is None or not ours.finished:
                        raise FailedPrecondition(
                            f"{repo}@{target} has no finished head commit to revert on"
                        )
                    if await merge_base(conn, repo, undone.id, ours.id) != undone.id:
                        raise InvalidArgument(
                            f"commit {undone.id} is not in the history of {repo}@{target}"
                        )
                plan = await plan_merge(
                    self.files.index, undone.root, parent.root if parent else None, ours.root, None
                )
                if plan.conflicts:
                    raise Conflict(
                        _conflict_text(
                            f"revert of {repo}@{undone.id} on {target} refused",
                            "changed again by later commits",
                            plan,
                            "revert those later commits first, or change the files by hand",
                        )
                    )
                description = message or f"Revert {repo}@{undone.id}"
                made = await self._commit_on(repo, target, ours, plan, description, "revert")
                if made is not None:
                    return made
        raise Conflict(f"branch {repo}@{target} kept moving; the revert was not applied, retry it")

    async def _check_mergeable_into(self, conn: Conn, repo: str, branch: str) -> None:
        """Pipelines own their output branches: refuse merges and reverts into them."""
        upstream = await refs.branch_provenance(conn, repo, branch)
        if upstream:
            sources = ", ".join(f"{r}@{b}" for r, b in upstream)
            raise FailedPrecondition(
                f"cannot merge into {repo}@{branch}: it is a pipeline's output, computed from "
                f"{sources}; merge into the inputs instead"
            )

    async def _move_head(
        self, repo: str, branch: str, old: str | None, new: refs.CommitRow
    ) -> CommitInfo | None:
        """Fast-forward: the head moves to ``new`` if it is still ``old`` (None if it moved)."""
        async with self.pool.acquire() as conn, conn.transaction():
            if await self._lock_or_create_branch(conn, repo, branch) != old:
                return None
            await refs.set_branch_head(conn, repo, branch, new.id)
            await self._emit_moved(conn, repo, branch, old, new.id)
            await triggers.follow(conn, self.config, repo, branch, datetime.now(UTC))
            return new.info

    async def _commit_on(
        self,
        repo: str,
        branch: str,
        head: refs.CommitRow,
        plan: MergePlan,
        description: str,
        origin: CommitOrigin,
        *,
        second_parent: refs.CommitRow | None = None,
    ) -> CommitInfo | None:
        """A finished commit on ``branch`` applying ``plan`` to ``head`` (None if it moved)."""
        root = await self.files.index.apply(head.root, plan.changes)
        count, size = await self.files.totals(root)
        async with self.pool.acquire() as conn, conn.transaction():
            if await self._lock_or_create_branch(conn, repo, branch) != head.id:
                return None
            provenance = list(head.info.provenance)
            if second_parent is not None:
                # A merge commit comes from both lines: it names both parents' provenance.
                seen = {(p.repo, p.id) for p in provenance}
                provenance += [
                    p for p in second_parent.info.provenance if (p.repo, p.id) not in seen
                ]
            row = await refs.insert_commit(
                conn,
                commit_id=refs.new_commit_id(),
                repo=repo,
                branch=branch,
                parent=head.id,
                second_parent=second_parent.id if second_parent else None,
                state="finished",
                root=root,
                size_bytes=size,
                file_count=count,
                description=description,
                provenance=provenance,
                origin=origin,
            )
            await refs.set_branch_head(conn, repo, branch, row.id)
            await self._emit_commit(conn, "commit.started", row)
            await self._emit_commit(conn, "commit.finished", row)
            await self._emit_moved(conn, repo, branch, head.id, row.id)
            await triggers.follow(conn, self.config, repo, branch, datetime.now(UTC))
            return row.info

    async def _stage_into_open(
        self, repo: str, branch: str, commit_id: str, pending: PendingWrite
    ) -> CommitInfo | None:
        """Stage into the open head commit; None if it stopped being open meanwhile."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await refs.get_commit(conn, repo, commit_id, lock=True)
            if row is None or row.info.state != "open":
                return None
            base_root = await self._parent_root(conn, row)
            changes = await self._resolve_changes(base_root, (conn, repo, commit_id), pending)
            await staging.stage(conn, repo, commit_id, changes)
            return row.info

    async def _resolve_changes(
        self,
        base_root: str | None,
        open_commit: tuple[Conn, str, str] | None,
        pending: PendingWrite,
    ) -> list[Change]:
        """Turn a pending write into sorted per-path changes against the current content."""

        async def current(path: str) -> FileEntry | None:
            if open_commit is not None:
                staged, entry = await staging.staged_entry(*open_commit, path)
                if staged:
                    return entry
            return await self.files.get_entry(base_root, path)

        changes: dict[str, FileEntry | None] = dict.fromkeys(pending.delete_files)
        for directory in pending.delete_dirs:
            found = False
            async for key, _ in self.files.files_under(base_root, directory):
                changes[key] = None
                found = True
            if open_commit is not None:
                for key, entry in await staging.staged_under(*open_commit, directory):
                    changes[key] = None
                    found = found or entry is not None
            if not found:
                raise NotFound(f"file {directory} not found")
        await self._check_file_dir_conflicts(base_root, pending.puts)
        for path, entry in pending.puts.items():
            if path in pending.appends:
                existing = await current(path)
                if existing is not None:
                    entry = await concat_entries(self.store, existing, entry, self.chunk_cache)
            changes[path] = entry
        return sorted(changes.items())

    async def _check_file_dir_conflicts(
        self, base_root: str | None, puts: dict[str, FileEntry]
    ) -> None:
        """A path cannot be both a file and a directory (pachctl refuses it too)."""
        dirs: set[str] = set()
        for path in puts:
            parts = path.split("/")
            dirs.update("/".join(parts[:i]) for i in range(2, len(parts)))
        for d in sorted(dirs):
            if d in puts:
                raise InvalidArgument(f"path {d} would be both a file and a directory")
            if await self.files.get_entry(base_root, d) is not None:
                raise InvalidArgument(f"cannot put under {d}: {d} is a file")
        if base_root is None:
            return  # nothing committed yet: only the batch itself could collide (checked above)
        for path in puts:
            # O(log N) node visits each, on cached nodes: the cost grows with the change.
            count, _ = await self.files.dir_stats(base_root, path)
            if count:
                raise InvalidArgument(f"cannot put file {path}: it is a directory")

    async def _lock_or_create_branch(self, conn: Conn, repo: str, branch: str) -> str | None:
        """Lock the branch row (creating the branch on first write, as pachctl does); its head."""
        exists, head = await refs.get_branch_head(conn, repo, branch, lock=True)
        if exists:
            return head
        if await refs.insert_branch_if_missing(conn, repo, branch):
            await emit(conn, self.config, BranchCreated(repo=repo, branch=branch))
        _, head = await refs.get_branch_head(conn, repo, branch, lock=True)
        return head

    async def _current_provenance(self, conn: Conn, repo: str, branch: str) -> list[CommitRef]:
        out = []
        for prov_repo, prov_branch in await refs.branch_provenance(conn, repo, branch):
            _, head = await refs.get_branch_head(conn, prov_repo, prov_branch)
            if head is not None:
                out.append(CommitRef(prov_repo, prov_branch, head))
        return out

    async def _emit_commit(self, conn: Conn, kind: str, row: refs.CommitRow) -> None:
        await emit(conn, self.config, commit_payload(kind, row.info))

    async def _emit_moved(
        self, conn: Conn, repo: str, branch: str, old: str | None, new: str | None
    ) -> None:
        await emit(
            conn, self.config, BranchMoved(repo=repo, branch=branch, old_head=old, new_head=new)
        )

    # Files: reads

    async def _readable(self, repo: str, ref: str) -> refs.CommitRow:
        async with self.pool.acquire() as conn:
            return await refs.resolve_readable(conn, repo, ref)

    async def open_file(
        self, repo: str, ref: str, path: str, offset: int, length: int | None
    ) -> tuple[int, Callable[[], AsyncIterator[bytes]]]:
        """(byte count, reader) of one file or a range of it; errors before any byte is sent."""
        path = normalize_path(path)
        row = await self._readable(repo, ref)
        entry = await self.files.require_file(row.root, path, f"{repo}@{ref}")
        if offset < 0 or offset > entry.size:
            raise InvalidArgument(f"offset {offset} is outside {path} ({entry.size} bytes)")
        end = entry.size if length is None else min(entry.size, offset + length)

        def reader() -> AsyncIterator[bytes]:
            return read_range(
                self.store, entry, offset, end, self.chunk_cache, path=f"{repo}@{ref}:{path}"
            )

        return end - offset, reader

    async def walk_files(
        self, repo: str, ref: str, path: str
    ) -> AsyncIterator[tuple[str, FileEntry]]:
        path = normalize_path(path)
        row = await self._readable(repo, ref)
        found = False
        async for key, entry in self.files.files_under(row.root, path):
            found = True
            yield key, entry
        if not found and path != "/":
            raise NotFound(f"file {path} not found in {repo}@{ref}")

    async def file_entry(self, repo: str, ref: str, path: str) -> tuple[str, FileEntry]:
        """(commit id, entry) of a file: its chunk list, for readers of the object store."""
        path = normalize_path(path)
        row = await self._readable(repo, ref)
        return row.id, await self.files.require_file(row.root, path, f"{repo}@{ref}")

    def read_entry(self, entry: FileEntry, path: str | None = None) -> AsyncIterator[bytes]:
        """A stored file's bytes; ``path`` names it in errors (a missing chunk)."""
        return read_range(self.store, entry, 0, entry.size, self.chunk_cache, path=path)

    async def inspect_file(self, repo: str, ref: str, path: str) -> FileInfo:
        row = await self._readable(repo, ref)
        try:
            return await self.files.inspect(row.root, normalize_path(path), row.id)
        except NotFound:
            raise NotFound(f"file {path} not found in {repo}@{ref}") from None

    async def list_files(
        self, repo: str, ref: str, path: str, *, after: str | None, limit: int
    ) -> tuple[list[FileInfo], str | None]:
        row = await self._readable(repo, ref)
        try:
            return await self.files.list_page(
                row.root, normalize_path(path), row.id, after=after, limit=limit
            )
        except NotFound:
            raise NotFound(f"file or directory {path} not found in {repo}@{ref}") from None

    async def list_paths(
        self,
        repo: str,
        ref: str,
        prefix: str,
        *,
        after: str | None,
        delimiter: str | None,
        limit: int,
    ) -> tuple[CommitInfo, list[FileInfo], list[str], bool]:
        """A page of paths by string prefix (the S3 gateway's listing), and the commit read."""
        if not prefix.startswith("/"):
            raise InvalidArgument(f"prefix {prefix!r} must start with '/'")
        row = await self._readable(repo, ref)
        files, prefixes, truncated = await self.files.paths_page(
            row.root, prefix, row.id, after=after, delimiter=delimiter, limit=limit
        )
        return row.info, files, prefixes, truncated

    async def glob_files(self, repo: str, ref: str, pattern: str) -> list[FileInfo]:
        row = await self._readable(repo, ref)
        return await self.files.glob(row.root, pattern, row.id)

    async def diff_files(
        self,
        repo: str,
        ref: str,
        path: str,
        old_repo: str | None,
        old_ref: str | None,
        old_path: str | None,
    ) -> list[FileChange]:
        path = normalize_path(path)
        async with self.pool.acquire() as conn:
            new = await refs.resolve_readable(conn, repo, ref)
            if old_ref is None:
                old_root = None
                if new.info.parent is not None:
                    parent = await refs.get_commit(conn, repo, new.info.parent)
                    old_root = parent.root if parent else None
            else:
                old_root = (await refs.resolve_readable(conn, old_repo or repo, old_ref)).root
        return await self.files.diff(
            old_root, new.root, path, normalize_path(old_path) if old_path else None
        )

    async def ready(self) -> bool:
        return await db_ready(self.pool)


def _conflict_text(what: str, why: str, plan: MergePlan, hint: str) -> str:
    """The refusal: a summary line, then every conflicting path on a line of its own."""
    paths = "\n".join(f"  {p}" for p in plan.conflicts)
    return f"{what}: {len(plan.conflicts)} path(s) {why} ({hint}):\n{paths}"


def _check_set_id(set_id: str) -> None:
    if not COMMIT_ID_RE.fullmatch(set_id):
        raise InvalidArgument(f"commit set id {set_id!r}: expected 32 hex digits")


def _parse_branch(text: str) -> tuple[str, str]:
    if "@" not in text:
        raise InvalidArgument(f"provenance {text!r}: expected repo@branch")
    repo, branch = text.split("@", 1)
    return check_name("repo", repo), check_name("branch", branch)
