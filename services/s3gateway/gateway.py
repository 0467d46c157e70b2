"""The gateway's core: buckets and keys resolved against PFS, object bytes streamed to and
from the chunk store directly (the data plane), writes landed in PFS by reference.

PFS answers metadata (a file's chunk list, a listing page, the commit a read sees) and
takes commits; the bytes never pass through it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

from services.s3gateway.buckets import Bucket
from services.s3gateway.checksums import Checksums
from services.s3gateway.errors import S3Error
from shared.api.names import normalize_path
from shared.api.pfs_client import PfsClient
from shared.api.pfs_models import CommitInfo, FileInfo
from shared.platform.config import Config
from shared.platform.errors import InvalidArgument, NotFound
from shared.storage.chunking import ChunkCache, FileEntry, PackWriter, read_range
from shared.storage.objstore import ObjectStore

# Decompressed chunks kept for readers: ranged GETs of one file share boundary chunks.
CHUNK_CACHE_BYTES = 64 << 20
DEFAULT_BRANCH = "master"
# Finished commits are immutable: their times are remembered by id.
COMMIT_TIMES = 4096


def path_of(key: str) -> str:
    """The PFS path of an object key; keys PFS cannot hold as they are are refused."""
    path = "/" + key
    try:
        valid = normalize_path(path) == path
    except InvalidArgument:
        valid = False
    if not valid or "\x00" in key:
        raise S3Error(
            400,
            "InvalidArgument",
            f"key {key!r} cannot be a Tusk path: keys may not start or end with '/', hold "
            "'//', '.' or '..' segments, or NUL",
            Key=key,
        )
    return path


def key_of(path: str) -> str:
    return path[1:]


def etag_of(entry_hash: str) -> str:
    """An object's ETag: the BLAKE3 of its bytes (64 hex digits, so no client takes it
    for an MD5 and checks it against one)."""
    return f'"{entry_hash}"'


@dataclass(frozen=True)
class StoredObject:
    key: str
    entry: FileEntry
    commit: str
    modified: datetime

    @property
    def etag(self) -> str:
        return etag_of(self.entry.hash)


@dataclass(frozen=True)
class Page:
    commit: CommitInfo | None
    files: list[FileInfo]
    prefixes: list[str]
    truncated: bool


def commit_time(info: CommitInfo) -> datetime:
    return datetime.fromisoformat(info.finished or info.finishing or info.started)


def _q(part: str) -> str:
    return quote(part, safe="")


class Gateway:
    def __init__(self, config: Config, pfs: PfsClient, store: ObjectStore) -> None:
        self.config = config
        self.pfs = pfs
        self.store = store
        self.cache = ChunkCache(max_bytes=CHUNK_CACHE_BYTES)
        self._times: OrderedDict[str, datetime] = OrderedDict()
        self._branches: OrderedDict[tuple[str, str], str] = OrderedDict()

    # ------------------------------------------------------------------------- buckets

    async def require_bucket(self, bucket: Bucket) -> None:
        """``NoSuchBucket`` unless the branch (or the commit, on that branch) exists."""
        try:
            if bucket.commit is None:
                if bucket.branch == DEFAULT_BRANCH:
                    # A new repo's master exists before its first write, as an empty bucket.
                    await self.pfs.inspect_repo(bucket.repo)
                else:
                    await self.pfs.inspect_branch(bucket.repo, bucket.branch)
                return
            info = await self.pfs.inspect_commit(bucket.repo, bucket.commit)
        except (NotFound, InvalidArgument):
            raise S3Error.no_such_bucket(bucket.name) from None
        if info.branch != bucket.branch:
            raise S3Error.no_such_bucket(bucket.name)

    async def check_commit_bucket(self, bucket: Bucket) -> None:
        """A commit bucket names its branch too: the commit must be on it (remembered,
        since a commit's branch never changes)."""
        if bucket.commit is None:
            return
        key = (bucket.repo, bucket.commit)
        branch = self._branches.get(key)
        if branch is None:
            try:
                branch = (await self.pfs.inspect_commit(bucket.repo, bucket.commit)).branch or ""
            except (NotFound, InvalidArgument):
                raise S3Error.no_such_bucket(bucket.name) from None
            self._branches[key] = branch
            if len(self._branches) > COMMIT_TIMES:
                self._branches.popitem(last=False)
        if branch != bucket.branch:
            raise S3Error.no_such_bucket(bucket.name)

    def require_writable(self, bucket: Bucket) -> None:
        if not bucket.writable:
            raise S3Error.read_only(bucket.name)

    async def commit_time(self, repo: str, commit: str) -> datetime:
        when = self._times.get(commit)
        if when is None:
            when = commit_time(await self.pfs.inspect_commit(repo, commit))
            self._times[commit] = when
            if len(self._times) > COMMIT_TIMES:
                self._times.popitem(last=False)
        return when

    # --------------------------------------------------------------------------- reads

    async def lookup(self, bucket: Bucket, key: str) -> StoredObject:
        """The object at ``key`` as a read of the bucket sees it; NoSuchKey/NoSuchBucket."""
        await self.check_commit_bucket(bucket)
        try:
            path = path_of(key)
        except S3Error:
            raise S3Error.no_such_key(key) from None
        try:
            body = await self.pfs.request(
                "GET",
                f"/v1/repos/{_q(bucket.repo)}/commits/{_q(bucket.ref)}/entry/"
                + quote(path.lstrip("/"), safe="/"),
            )
        except NotFound:
            await self.require_bucket(bucket)
            raise S3Error.no_such_key(key) from None
        except InvalidArgument:
            # A directory: S3 has no object there.
            raise S3Error.no_such_key(key) from None
        entry = FileEntry.from_json(body["entry"])
        commit = str(body["commit"])
        return StoredObject(key, entry, commit, await self.commit_time(bucket.repo, commit))

    def read(self, obj: StoredObject, start: int, end: int) -> AsyncIterator[bytes]:
        return read_range(
            self.store, obj.entry, start, end, self.cache, path=f"{obj.commit}:/{obj.key}"
        )

    async def list_page(
        self,
        bucket: Bucket,
        prefix: str,
        *,
        after: str | None,
        delimiter: str | None,
        limit: int,
    ) -> Page:
        """One page of keys under ``prefix`` after ``after`` (keys, not paths)."""
        await self.check_commit_bucket(bucket)
        try:
            commit, files, prefixes, truncated = await self.pfs.list_paths(
                bucket.repo,
                bucket.ref,
                "/" + prefix,
                after=None if after is None else "/" + after,
                delimiter=delimiter or None,
                limit=limit,
            )
        except NotFound:
            await self.require_bucket(bucket)
            return Page(None, [], [], False)  # a branch without a finished commit yet
        return Page(commit, files, [key_of(p) for p in prefixes], truncated)

    # -------------------------------------------------------------------------- writes

    async def store_bytes(
        self, blocks: AsyncIterable[bytes], checks: Checksums, trailers: dict[str, str]
    ) -> FileEntry:
        """Cut and store an upload's bytes as chunks; check its digests once all arrived.

        ``trailers`` fills while ``blocks`` is read (aws-chunked sends digests last).
        """
        async with PackWriter(self.store, max_file_bytes=self.config.max_file_bytes) as writer:
            writer.start_file()
            async for block in blocks:
                await checks.update(block)
                await writer.write(block)
            writer.end_file()
            checks.verify(trailers)
            [entry] = await writer.close()
        return entry

    async def land(self, bucket: Bucket, changes: list[tuple[str, FileEntry | None]]) -> CommitInfo:
        """Put files (None: delete) on the branch: into its open commit if it has one, else
        as a commit of their own."""
        self.require_writable(bucket)
        try:
            result = await self.pfs.put_entries(bucket.repo, bucket.branch, changes, origin="s3")
        except NotFound:
            raise S3Error.no_such_bucket(bucket.name) from None
        return result.commit
