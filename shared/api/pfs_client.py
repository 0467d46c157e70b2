"""The HTTP client SDK for PFS: one method per API call, records from ``shared.api.pfs_models``.

Refs (``master``, ``master^``, a commit id) and paths go into URLs quoted; a
service's error body comes back as the same ``TuskError`` subclass it was.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Awaitable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar
from urllib.parse import quote

import aiohttp

from shared.api.filestream import CONTENT_TYPE, Content, FileStreamReader, encode_files
from shared.api.lifecycle_models import FsckReport, GcReport
from shared.api.names import MAX_TEXT_CHARS
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
from shared.platform.config import CLUSTER_HEADER
from shared.platform.errors import InvalidArgument, TuskError, Unavailable, error_from_json

if TYPE_CHECKING:
    # The storage code (blake3, zstandard, FastCDC) is for callers of file_entry and
    # put_entries; ``put file`` starts without it.
    from shared.storage.chunking import FileEntry

# (path, content): the content's blocks, or its bytes when already in memory (small files).
FileSource = tuple[str, Content]
T = TypeVar("T")


def _q(part: str) -> str:
    return quote(part, safe="")


def _qpath(path: str) -> str:
    return quote(path.lstrip("/"), safe="/")


class ServiceClient:
    """Shared plumbing: one aiohttp session, JSON calls, error translation.

    With ``cluster_id`` (``Config.cluster_id``, set by ``tusk up``) every response must
    come from a service of that cluster: after a ``tusk down`` another cluster may have
    taken the same ports, and its answers would be about other data.
    """

    def __init__(
        self, base_url: str, *, timeout: float | None = None, cluster_id: str | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.cluster_id = cluster_id or None
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=10)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, auto_decompress=False)
        return self._session

    def _check_cluster(self, resp: aiohttp.ClientResponse) -> None:
        if self.cluster_id is None:
            return
        served = resp.headers.get(CLUSTER_HEADER)
        if served == self.cluster_id:
            return
        where = resp.url.raw_authority
        if served:
            raise Unavailable(
                f"the service at {where} belongs to another Tusk cluster; run `tusk up`"
            )
        raise Unavailable(f"the service at {where} is not part of this Tusk cluster; run `tusk up`")

    async def _raise_for(self, resp: aiohttp.ClientResponse) -> None:
        self._check_cluster(resp)
        if resp.status < 400:
            return
        raw = await resp.read()
        try:
            body = json.loads(raw)["error"]
        except (ValueError, KeyError, TypeError):
            raise TuskError(f"{resp.method} {resp.url.path}: HTTP {resp.status}") from None
        raise error_from_json(body)

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """Call the service and return its decoded JSON body (None for an empty one)."""
        clean = {k: _param(v) for k, v in (params or {}).items() if v is not None}
        try:
            async with self.session.request(
                method,
                self.base_url + path,
                json=json_body,
                params=clean,
                data=data,
                headers=headers,
            ) as resp:
                await self._raise_for(resp)
                raw = await resp.read()
        except aiohttp.ClientConnectionError as exc:
            raise Unavailable(
                f"cannot reach {self.base_url} ({exc.__class__.__name__}); is the cluster up? (tusk up)"
            ) from None
        return json.loads(raw) if raw else None

    async def stream(
        self, method: str, path: str, *, params: dict[str, Any] | None = None
    ) -> aiohttp.ClientResponse:
        """Open a streaming response; the caller must ``release()`` it."""
        clean = {k: _param(v) for k, v in (params or {}).items() if v is not None}
        try:
            resp = await self.session.request(method, self.base_url + path, params=clean)
        except aiohttp.ClientConnectionError as exc:
            raise Unavailable(
                f"cannot reach {self.base_url} ({exc.__class__.__name__}); is the cluster up? (tusk up)"
            ) from None
        try:
            await self._raise_for(resp)
        except BaseException:
            resp.release()
            raise
        return resp


def _clip(text: str | None) -> str | None:
    if text is None or len(text) <= MAX_TEXT_CHARS:
        return text
    return text[: MAX_TEXT_CHARS - 1] + "…"


def _broken_off(
    what: str, received: int | None, expected: int | None, cause: BaseException | None
) -> Unavailable:
    """The error of a download the service cut off (it logs why it did)."""
    after = ""
    if received is not None:
        after = f" after {received}" + ("" if expected is None else f" of {expected}") + " bytes"
    how = "" if cause is None else f" ({type(cause).__name__})"
    return Unavailable(f"reading {what} broke off{after}{how}; the service's log says why")


# What a download stream cut off by the service raises: the connection's errors, or the
# stream decoder's complaint that the stream ended early.
_CUT_OFF = (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, InvalidArgument)


async def _unbroken(step: Awaitable[T], what: str) -> T:
    try:
        return await step
    except _CUT_OFF as exc:
        raise _broken_off(what, None, None, exc) from None


async def _unbroken_blocks(blocks: AsyncIterator[bytes], what: str) -> AsyncIterator[bytes]:
    received = 0
    try:
        async for block in blocks:
            received += len(block)
            yield block
    except _CUT_OFF as exc:
        raise _broken_off(what, received, None, exc) from None


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class PfsClient(ServiceClient):
    """Repos, branches, commits and files."""

    # Repos
    async def create_repo(self, name: str, description: str = "") -> RepoInfo:
        body = await self.request(
            "POST", "/v1/repos", json_body={"name": name, "description": description}
        )
        return RepoInfo.from_json(body)

    async def list_repos(self) -> list[RepoInfo]:
        body = await self.request("GET", "/v1/repos")
        return [RepoInfo.from_json(r) for r in body["repos"]]

    async def inspect_repo(self, name: str) -> RepoInfo:
        return RepoInfo.from_json(await self.request("GET", f"/v1/repos/{_q(name)}"))

    async def delete_repo(self, name: str, *, force: bool = False) -> None:
        await self.request("DELETE", f"/v1/repos/{_q(name)}", params={"force": force})

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
        """Create a branch, or change an existing one: ``head`` moves it, ``provenance``
        replaces its provenance, ``trigger`` sets its trigger; what is None stays."""
        body = await self.request(
            "POST",
            f"/v1/repos/{_q(repo)}/branches",
            json_body={
                "name": name,
                "head": head,
                "provenance": provenance,
                "trigger": trigger.to_json() if trigger is not None else None,
            },
        )
        return BranchInfo.from_json(body)

    async def list_branches(self, repo: str) -> list[BranchInfo]:
        body = await self.request("GET", f"/v1/repos/{_q(repo)}/branches")
        return [BranchInfo.from_json(b) for b in body["branches"]]

    async def inspect_branch(self, repo: str, name: str) -> BranchInfo:
        return BranchInfo.from_json(
            await self.request("GET", f"/v1/repos/{_q(repo)}/branches/{_q(name)}")
        )

    async def delete_branch(self, repo: str, name: str, *, force: bool = False) -> None:
        await self.request(
            "DELETE", f"/v1/repos/{_q(repo)}/branches/{_q(name)}", params={"force": force}
        )

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
        """Open a commit; ``commit_id`` joins it to that commit set (AlreadyExists if the
        repo has a commit of the set already); ``origin``: who makes it."""
        body: dict[str, Any] = {"branch": branch, "description": description, "origin": origin}
        if commit_id is not None:
            body["id"] = commit_id
        if provenance is not None:
            body["provenance"] = [
                {"repo": p.repo, "branch": p.branch, "id": p.id} for p in provenance
            ]
        return CommitInfo.from_json(
            await self.request("POST", f"/v1/repos/{_q(repo)}/commits", json_body=body)
        )

    async def finish_commit(
        self, repo: str, ref: str, *, description: str | None = None, error: str | None = None
    ) -> CommitInfo:
        body = await self.request(
            "POST",
            f"/v1/repos/{_q(repo)}/commits/{_q(ref)}/finish",
            # A job's failure must be recordable however long its message: PFS keeps 64 KiB.
            json_body={"description": description, "error": _clip(error)},
        )
        return CommitInfo.from_json(body)

    async def inspect_commit(self, repo: str, ref: str) -> CommitInfo:
        return CommitInfo.from_json(
            await self.request("GET", f"/v1/repos/{_q(repo)}/commits/{_q(ref)}")
        )

    async def list_commits(
        self, repo: str, branch: str | None = None, *, limit: int = 100, before: str | None = None
    ) -> tuple[list[CommitInfo], str | None]:
        """One page, newest first; pass the returned cursor as ``before`` for the next page."""
        body = await self.request(
            "GET",
            f"/v1/repos/{_q(repo)}/commits",
            params={"branch": branch, "limit": limit, "before": before},
        )
        return [CommitInfo.from_json(c) for c in body["commits"]], body.get("next")

    async def iter_commits(
        self, repo: str, branch: str | None = None, *, page: int = 100
    ) -> AsyncIterator[CommitInfo]:
        cursor: str | None = None
        while True:
            commits, cursor = await self.list_commits(repo, branch, limit=page, before=cursor)
            for commit in commits:
                yield commit
            if cursor is None:
                return

    async def wait_commit(self, repo: str, ref: str, *, timeout: float | None = None) -> CommitInfo:
        """Block until the commit is finished."""
        body = await self.request(
            "GET", f"/v1/repos/{_q(repo)}/commits/{_q(ref)}/wait", params={"timeout": timeout}
        )
        return CommitInfo.from_json(body)

    async def delete_commit(self, repo: str, ref: str) -> None:
        await self.request("DELETE", f"/v1/repos/{_q(repo)}/commits/{_q(ref)}")

    async def squash_commit(self, repo: str, ref: str) -> None:
        await self.request("POST", f"/v1/repos/{_q(repo)}/commits/{_q(ref)}/squash")

    async def inspect_commit_set(self, set_id: str) -> CommitSetInfo:
        return CommitSetInfo.from_json(await self.request("GET", f"/v1/commitsets/{_q(set_id)}"))

    async def wait_commit_set(self, set_id: str, *, timeout: float | None = None) -> CommitSetInfo:
        """Block until the set settles: finished (downstream pipelines' commits included) or
        failed (check ``state``)."""
        body = await self.request(
            "GET", f"/v1/commitsets/{_q(set_id)}/wait", params={"timeout": timeout}
        )
        return CommitSetInfo.from_json(body)

    async def delete_commit_set(self, set_id: str) -> list[CommitInfo]:
        body = await self.request("DELETE", f"/v1/commitsets/{_q(set_id)}")
        return [CommitInfo.from_json(c) for c in body["commits"]]

    async def squash_commit_set(self, set_id: str) -> list[CommitInfo]:
        body = await self.request("POST", f"/v1/commitsets/{_q(set_id)}/squash")
        return [CommitInfo.from_json(c) for c in body["commits"]]

    async def subscribe_commits(
        self, repo: str, branch: str, *, all_: bool = False
    ) -> AsyncIterator[CommitInfo]:
        """Finished commits of the branch as they happen (``all_``: existing ones first)."""
        resp = await self.stream(
            "GET", f"/v1/repos/{_q(repo)}/branches/{_q(branch)}/subscribe", params={"all": all_}
        )
        try:
            async for line in resp.content:
                if line.strip():
                    yield CommitInfo.from_json(json.loads(line))
        finally:
            resp.release()

    # Files
    async def put_files(
        self,
        repo: str,
        branch: str,
        files: AsyncIterable[FileSource],
        *,
        append: bool = False,
        description: str = "",
    ) -> PutResult:
        """Upload many files in one request; all land in one commit or none do."""

        async def headers() -> AsyncIterator[tuple[dict[str, Any], Content]]:
            async for path, content in files:
                yield {"path": path}, content

        body = await self.request(
            "POST",
            f"/v1/repos/{_q(repo)}/branches/{_q(branch)}/files",
            params={"append": append, "description": description or None},
            data=encode_files(headers()),
            headers={"Content-Type": CONTENT_TYPE},
        )
        return PutResult.from_json(body)

    async def get_file(
        self, repo: str, ref: str, path: str, *, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """The bytes of one file (or a range of it), streamed.

        A transfer the server breaks off (it does when it cannot read the file's bytes
        after it started sending them) raises ``Unavailable``, never ends quietly short.
        """
        resp = await self.stream(
            "GET",
            f"/v1/repos/{_q(repo)}/commits/{_q(ref)}/files/{_qpath(path)}",
            params={"offset": offset or None, "length": length},
        )
        what = f"{repo}@{ref}:{path}"
        received = 0
        try:
            try:
                async for data in resp.content.iter_chunked(1 << 20):
                    received += len(data)
                    yield data
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
                raise _broken_off(what, received, resp.content_length, exc) from None
            if resp.content_length is not None and received != resp.content_length:
                raise _broken_off(what, received, resp.content_length, None)
        finally:
            resp.release()

    async def get_files(
        self, repo: str, ref: str, path: str
    ) -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
        """Every file under ``path`` (recursively) as (path, content); consume each content in turn."""
        resp = await self.stream(
            "GET",
            f"/v1/repos/{_q(repo)}/commits/{_q(ref)}/files/{_qpath(path)}",
            params={"recursive": True},
        )
        what = f"{repo}@{ref}:{path}"
        try:
            reader = FileStreamReader(resp.content)
            while (header := await _unbroken(reader.next_header(), what)) is not None:
                file = f"{repo}@{ref}:{header['path']}"
                yield header["path"], _unbroken_blocks(reader.blocks(), file)
        finally:
            resp.release()

    async def file_entry(self, repo: str, ref: str, path: str) -> FileEntry:
        """A file's chunk list, to read its bytes straight from the object store."""
        body = await self.request(
            "GET", f"/v1/repos/{_q(repo)}/commits/{_q(ref)}/entry/{_qpath(path)}"
        )
        from shared.storage.chunking import FileEntry

        return FileEntry.from_json(body["entry"])

    async def inspect_file(self, repo: str, ref: str, path: str) -> FileInfo:
        body = await self.request(
            "GET", f"/v1/repos/{_q(repo)}/commits/{_q(ref)}/inspect/{_qpath(path)}"
        )
        return FileInfo.from_json(body)

    async def list_files(
        self, repo: str, ref: str, path: str = "/", *, limit: int = 1000, after: str | None = None
    ) -> tuple[list[FileInfo], str | None]:
        """One page of a directory's children (or the file itself); cursor for the next page."""
        body = await self.request(
            "GET",
            f"/v1/repos/{_q(repo)}/commits/{_q(ref)}/list/{_qpath(path)}",
            params={"limit": limit, "after": after},
        )
        return [FileInfo.from_json(f) for f in body["files"]], body.get("next")

    async def iter_files(
        self, repo: str, ref: str, path: str = "/", *, page: int = 1000
    ) -> AsyncIterator[FileInfo]:
        cursor: str | None = None
        while True:
            files, cursor = await self.list_files(repo, ref, path, limit=page, after=cursor)
            for info in files:
                yield info
            if cursor is None:
                return

    async def list_paths(
        self,
        repo: str,
        ref: str,
        prefix: str = "/",
        *,
        after: str | None = None,
        delimiter: str | None = None,
        limit: int = 1000,
    ) -> tuple[CommitInfo, list[FileInfo], list[str], bool]:
        """One page of paths starting with the string ``prefix`` (S3's listing): (the commit
        read, files, rolled-up prefixes, truncated). Resume after the page's last item."""
        body = await self.request(
            "GET",
            f"/v1/repos/{_q(repo)}/commits/{_q(ref)}/paths",
            params={"prefix": prefix, "after": after, "delimiter": delimiter, "limit": limit},
        )
        return (
            CommitInfo.from_json(body["commit"]),
            [FileInfo.from_json(f) for f in body["files"]],
            list(body["prefixes"]),
            bool(body["truncated"]),
        )

    async def glob_files(self, repo: str, ref: str, pattern: str) -> list[FileInfo]:
        body = await self.request(
            "GET", f"/v1/repos/{_q(repo)}/commits/{_q(ref)}/glob", params={"pattern": pattern}
        )
        return [FileInfo.from_json(f) for f in body["files"]]

    async def diff_files(
        self,
        repo: str,
        ref: str,
        path: str = "/",
        *,
        old_repo: str | None = None,
        old_ref: str | None = None,
        old_path: str | None = None,
    ) -> list[FileChange]:
        """Changes from ``old`` (default: the commit's parent) to ``repo@ref`` under ``path``."""
        body = await self.request(
            "GET",
            f"/v1/repos/{_q(repo)}/commits/{_q(ref)}/diff",
            params={"path": path, "old_repo": old_repo, "old_ref": old_ref, "old_path": old_path},
        )
        return [FileChange.from_json(c) for c in body["changes"]]

    async def put_entries(
        self,
        repo: str,
        branch: str,
        changes: list[tuple[str, FileEntry | None]],
        *,
        commit: str | None = None,
        origin: CommitOrigin = "user",
    ) -> PutResult:
        """Land files already in the chunk store by reference (None deletes the path).

        With ``commit`` (an open commit), a long list goes in several requests, each under
        the service's body limit; all of them land in that commit. ``origin``: who makes
        the commit, when the write makes one.
        """
        batches = _entry_batches(changes) if commit is not None else [changes]
        result: PutResult | None = None
        files = size = 0
        for batch in batches:
            body = await self.request(
                "POST",
                f"/v1/repos/{_q(repo)}/branches/{_q(branch)}/entries",
                json_body={
                    "commit": commit,
                    "origin": origin,
                    "changes": [
                        {"path": p, "entry": e.to_json() if e is not None else None}
                        for p, e in batch
                    ],
                },
            )
            result = PutResult.from_json(body)
            files, size = files + result.files, size + result.bytes
        assert result is not None
        return PutResult(result.commit, files, size)

    async def commit_lineage(self, repo: str, ref: str) -> dict[str, list[CommitInfo]]:
        """``direct_provenance``, ``full_provenance`` and ``subvenance`` (every downstream
        commit) of ``repo@ref``, each oldest first."""
        body = await self.request("GET", f"/v1/repos/{_q(repo)}/commits/{_q(ref)}/lineage")
        return {k: [CommitInfo.from_json(c) for c in v] for k, v in body.items()}

    async def commit_subvenance(self, repo: str, ref: str) -> list[CommitInfo]:
        """Commits whose provenance includes ``repo@ref`` (e.g. a pipeline's outputs of it)."""
        body = await self.request("GET", f"/v1/repos/{_q(repo)}/commits/{_q(ref)}/subvenance")
        return [CommitInfo.from_json(c) for c in body["commits"]]

    async def merge_branch(
        self,
        repo: str,
        source: str,
        dest: str,
        *,
        strategy: str | None = None,
        message: str = "",
    ) -> tuple[str, CommitInfo]:
        """Merge ``repo@source`` into ``repo@dest``: (fast-forward|merge|up-to-date, head)."""
        body = await self.request(
            "POST",
            f"/v1/repos/{_q(repo)}/branches/{_q(dest)}/merge",
            json_body={"source": source, "strategy": strategy, "message": message},
        )
        return str(body["result"]), CommitInfo.from_json(body["commit"])

    async def revert_commit(
        self, repo: str, ref: str, *, branch: str | None = None, message: str = ""
    ) -> CommitInfo:
        """A new commit on ``branch`` (default: the commit's own) undoing ``repo@ref``."""
        body = await self.request(
            "POST",
            f"/v1/repos/{_q(repo)}/commits/{_q(ref)}/revert",
            json_body={"branch": branch, "message": message},
        )
        return CommitInfo.from_json(body)

    async def garbage_collect(
        self, *, dry_run: bool = False, grace_s: float | None = None
    ) -> GcReport:
        """Delete objects nothing references and nothing wrote recently (PFS's collector)."""
        body = await self.request(
            "POST", "/v1/gc", json_body={"dry_run": dry_run, "grace_s": grace_s}
        )
        return GcReport.from_json(body)

    async def fsck(self, repo: str | None = None) -> FsckReport:
        """Verify the object store holds every commit's nodes and chunks intact (PFS's fsck)."""
        return FsckReport.from_json(await self.request("GET", "/v1/fsck", params={"repo": repo}))

    async def delete_file(self, repo: str, branch: str, path: str) -> PutResult:
        body = await self.request(
            "DELETE", f"/v1/repos/{_q(repo)}/branches/{_q(branch)}/files/{_qpath(path)}"
        )
        return PutResult.from_json(body)

    async def copy_file(
        self,
        src_repo: str,
        src_ref: str,
        src_path: str,
        repo: str,
        branch: str,
        path: str,
        *,
        append: bool = False,
    ) -> PutResult:
        body = await self.request(
            "POST",
            f"/v1/repos/{_q(repo)}/branches/{_q(branch)}/copy",
            json_body={
                "src_repo": src_repo,
                "src_ref": src_ref,
                "src_path": src_path,
                "path": path,
                "append": append,
            },
        )
        return PutResult.from_json(body)


# Bytes of JSON one put_entries request carries at most (PFS accepts 64 MiB).
ENTRIES_BATCH_BYTES = 16 << 20


def _entry_batches(
    changes: list[tuple[str, FileEntry | None]],
) -> list[list[tuple[str, FileEntry | None]]]:
    """``changes`` cut into lists whose JSON stays under ``ENTRIES_BATCH_BYTES`` (estimated)."""
    batches: list[list[tuple[str, FileEntry | None]]] = [[]]
    size = 0
    for path, entry in changes:
        # A chunk reference is a 64-hex hash and two integers: under 100 bytes of JSON.
        cost = len(path.encode()) + 120 + (100 * len(entry.chunks) if entry is not None else 0)
        if batches[-1] and size + cost > ENTRIES_BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append((path, entry))
        size += cost
    return batches


def require_branch(ref: str | None, what: str) -> str:
    """pachctl writes need ``repo@branch``; default to master like pachctl does."""
    if ref is None:
        return "master"
    if "^" in ref or "~" in ref:
        raise InvalidArgument(f"{what} needs a branch name, not the ancestry ref {ref!r}")
    return ref
