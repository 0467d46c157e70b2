"""fsck: check that what PFS's tables name is really in the object store, byte for byte.

Every finished commit's index tree is walked from its root: each node is fetched, its
bytes hashed against its name and decoded; each file's chunks are fetched, decompressed
and hashed against theirs. Refs are checked too: branch heads and commit provenance must
name commits that exist.

Commits share most of their trees, so a subtree is verified once per run: its verdict
(the problems found under it, usually none) is remembered by node hash and replayed
for every later commit that reaches it. The cost is one read of each distinct node and
chunk, not one per commit; memory is one hash per distinct node and chunk checked.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import zstandard

from shared.api.lifecycle_models import FsckProblem, FsckReport
from shared.platform.db import Pool
from shared.platform.errors import Internal, InvalidArgument, NotFound
from shared.storage.chunking import load_chunk
from shared.storage.file_entries import from_index_entry
from shared.storage.file_index.node import LeafNode, Node, decode_node, node_hash, store_key
from shared.storage.objstore import ObjectStore

# Chunks of one leaf verified at once: reads overlap, memory stays a few chunks.
CHUNK_CONCURRENCY = 8


# A subtree's verdict: (path, detail) of each problem under it.
Findings = list[tuple[str, str]]


class StoreChecker:
    """Verifies trees and chunks, remembering each distinct node's and chunk's verdict."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.totals = FsckReport()
        self._nodes: dict[str, Findings] = {}
        self._chunks: dict[str, str | None] = {}
        self._decompressor = zstandard.ZstdDecompressor()

    async def check_tree(self, root: str) -> Findings:
        """Problems under the tree named ``root`` (an empty list when it is whole)."""
        return await self._subtree(root, "/")

    async def _subtree(self, digest: str, where: str) -> Findings:
        known = self._nodes.get(digest)
        if known is not None:
            return known
        node, problem = await self._read_node(digest)
        if node is None:
            findings: Findings = [(where, problem)]
        elif isinstance(node, LeafNode):
            findings = await self._leaf(node)
        else:
            findings = []
            for child in node.children:
                findings.extend(await self._subtree(child.hash, child.last_key))
        self._nodes[digest] = findings
        return findings

    async def _read_node(self, digest: str) -> tuple[Node | None, str]:
        self.totals.nodes += 1
        try:
            blob = await self.store.get(store_key(digest))
        except NotFound:
            return None, f"index node {digest} is missing (files up to this path are lost)"
        try:
            plain = self._decompressor.decompress(blob)
        except zstandard.ZstdError:
            return None, f"index node {digest} is corrupt: it does not decompress"
        if node_hash(plain) != digest:
            return None, f"index node {digest} is corrupt: its bytes do not match its name"
        try:
            return decode_node(plain), ""
        except Internal as exc:
            return None, f"index node {digest} is corrupt: {exc.message}"

    async def _leaf(self, node: LeafNode) -> Findings:
        wanted: dict[str, list[str]] = {}
        findings: Findings = []
        for item in node.entries:
            try:
                entry = from_index_entry(item)
            except (InvalidArgument, ValueError) as exc:
                findings.append((item.key, f"file entry is malformed: {exc}"))
                continue
            for ref in entry.chunks:
                wanted.setdefault(ref.chunk, []).append(item.key)
        todo = [c for c in wanted if c not in self._chunks]
        for start in range(0, len(todo), CHUNK_CONCURRENCY):
            batch = todo[start : start + CHUNK_CONCURRENCY]
            verdicts = await asyncio.gather(*(self._check_chunk(c) for c in batch))
            self._chunks.update(zip(batch, verdicts, strict=True))
        for chunk, paths in wanted.items():
            verdict = self._chunks[chunk]
            if verdict is not None:
                findings.extend((path, verdict) for path in dict.fromkeys(paths))
        return findings

    async def _check_chunk(self, chunk: str) -> str | None:
        self.totals.chunks += 1
        try:
            await load_chunk(self.store, chunk)
        except NotFound:
            return f"chunk {chunk} is missing"
        except Internal as exc:
            return exc.message
        return None


async def check_storage(pool: Pool, store: ObjectStore, repo: str | None) -> FsckReport:
    """Every problem in ``repo`` (or every repo): refs first, then each finished commit's tree."""
    checker = StoreChecker(store)
    report = checker.totals
    report.problems.extend([p async for p in _ref_problems(pool, repo)])
    async for commit_repo, commit_id, root in _commit_roots(pool, repo):
        report.commits += 1
        if root is None:
            continue
        for path, detail in await checker.check_tree(root):
            report.problems.append(FsckProblem(commit_repo, commit_id, path, detail))
    return report


async def _commit_roots(pool: Pool, repo: str | None) -> AsyncIterator[tuple[str, str, str | None]]:
    # Paged by seq so a store with millions of commits is never held in memory at once.
    after = 0
    while True:
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                """
                SELECT seq, repo, id, root FROM pfs_commits
                WHERE state = 'finished' AND seq > $1 AND ($2::text IS NULL OR repo = $2)
                ORDER BY seq LIMIT 1000
                """,
                after,
                repo,
            )
        if not rows:
            return
        for row in rows:
            yield row["repo"], row["id"], row["root"]
        after = rows[-1]["seq"]


async def _ref_problems(pool: Pool, repo: str | None) -> AsyncIterator[FsckProblem]:
    async with pool.acquire() as conn:
        if repo is not None and not await conn.fetchval(
            "SELECT true FROM pfs_repos WHERE name = $1", repo
        ):
            raise NotFound(f"repo {repo} not found")
        heads = await conn.fetch(
            """
            SELECT b.repo, b.name, b.head FROM pfs_branches b
            LEFT JOIN pfs_commits c ON c.id = b.head AND c.repo = b.repo
            WHERE b.head IS NOT NULL AND c.id IS NULL AND ($1::text IS NULL OR b.repo = $1)
            ORDER BY b.repo, b.name
            """,
            repo,
        )
        for row in heads:
            yield FsckProblem(
                row["repo"], row["head"], "", f"branch {row['name']} points at a missing commit"
            )
        provenance = await conn.fetch(
            """
            SELECT c.repo, c.id, p.value->>'repo' AS prov_repo, p.value->>'id' AS prov_id
            FROM pfs_commits c CROSS JOIN LATERAL jsonb_array_elements(c.provenance) p
            LEFT JOIN pfs_commits pc ON pc.repo = p.value->>'repo' AND pc.id = p.value->>'id'
            WHERE pc.id IS NULL AND ($1::text IS NULL OR c.repo = $1)
            ORDER BY c.seq
            """,
            repo,
        )
        for row in provenance:
            yield FsckProblem(
                row["repo"],
                row["id"],
                "",
                f"provenance names commit {row['prov_repo']}@{row['prov_id']}, which does not exist",
            )
