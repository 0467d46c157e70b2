"""Mounts: what each named mount shows, how its writes reach PFS, and their lifecycle.

A ``Mount`` shows one repo at one ref. Its *base* is a finished commit: the commit
itself for a commit mount, the branch's newest finished commit for a branch mount
(refreshed on request, on PFS's ``branch.moved`` events and at least every
``refresh_interval`` seconds, so a half-made commit is never shown). A read-write mount also keeps an ``Overlay`` of its changes and
stages each one in an open commit on the branch as it happens: a file's bytes when
its last writer closes it, deletes and renames at once. The open commit is finished
by ``commit()`` (the HTTP call) or at unmount, so ``cp -r`` into a mount then unmount
makes one commit. Files still open for writing are never committed half-written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime

from services.mountd.files import BaseFile, BaseReader, BlockSource, LocalFile, Stat
from services.mountd.overlay import Overlay, OverlayFile, is_under, join, parent_of
from shared.api.mount_client import MountInfo, MountSpec
from shared.api.names import check_name
from shared.api.pfs_client import FileSource, PfsClient
from shared.api.pfs_models import CommitInfo
from shared.platform.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    IsADirectory,
    NotADirectory,
    NotEmpty,
    NotFound,
    ReadOnly,
    TuskError,
)

log = logging.getLogger("tusk.mountd")

DEFAULT_LIST_PAGE = 1000
UPLOAD_BLOCK = 1 << 20


class _Gate:
    """Many shared holders (uploads, namespace changes) or one exclusive holder (a commit)."""

    def __init__(self) -> None:
        self._shared = 0
        self._exclusive = False
        self._changed = asyncio.Condition()

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: not self._exclusive)
            self._shared += 1
        try:
            yield
        finally:
            async with self._changed:
                self._shared -= 1
                self._changed.notify_all()

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: not self._exclusive and self._shared == 0)
            self._exclusive = True
        try:
            yield
        finally:
            async with self._changed:
                self._exclusive = False
                self._changed.notify_all()


def _time_ns(stamp: str | None) -> int:
    if not stamp:
        return 0
    return int(datetime.fromisoformat(stamp).timestamp() * 1_000_000_000)


async def _one_file(path: str, content: AsyncIterator[bytes]) -> AsyncIterator[FileSource]:
    yield path, content


async def _read_local(file: LocalFile, size: int) -> AsyncIterator[bytes]:
    offset = 0
    while offset < size:
        data = file.read(offset, min(UPLOAD_BLOCK, size - offset))
        if not data:
            break
        offset += len(data)
        yield data


class Mount:
    """One named mount: a repo at a ref, read-only or read-write."""

    def __init__(
        self,
        spec: MountSpec,
        client: PfsClient,
        source: BlockSource,
        *,
        path: str,
        scratch: str,
        list_page: int = DEFAULT_LIST_PAGE,
    ) -> None:
        self.spec = spec
        self.client = client
        self.source = source
        self.path = path
        self.scratch = scratch
        self.list_page = list_page
        self.commit: CommitInfo | None = None
        self.follows_branch = False
        self.overlay: Overlay | None = Overlay() if spec.mode == "rw" else None
        self.open_commit: str | None = None
        self._gate = _Gate()
        self._open_lock = asyncio.Lock()

    @property
    def writable(self) -> bool:
        return self.overlay is not None

    @property
    def repo(self) -> str:
        return self.spec.repo

    @property
    def branch(self) -> str:
        return self.spec.ref

    @property
    def mtime_ns(self) -> int:
        return _time_ns(self.commit.finished) if self.commit else 0

    def info(self) -> MountInfo:
        return MountInfo(
            name=self.spec.name,
            repo=self.repo,
            ref=self.spec.ref,
            mode=self.spec.mode,
            path=self.path,
            commit=self.commit.id if self.commit else None,
            follows_branch=self.follows_branch,
            open_commit=self.open_commit,
            pending_files=self.overlay.pending_files() if self.overlay else 0,
        )

    # Refs

    async def start(self) -> None:
        """Resolve the ref; a rw mount needs a branch and adopts an open commit left on it."""
        head: CommitInfo | None = None
        try:
            branch = await self.client.inspect_branch(self.repo, self.spec.ref)
            self.follows_branch = True
            if branch.head is not None:
                head = await self.client.inspect_commit(self.repo, branch.head)
        except (NotFound, InvalidArgument):
            if self.writable:
                await self.client.inspect_repo(self.repo)
                try:
                    commit = await self.client.inspect_commit(self.repo, self.spec.ref)
                except NotFound:
                    # A new branch: PFS creates it with the first write.
                    check_name("branch", self.spec.ref)
                    self.follows_branch = True
                    return
                raise InvalidArgument(
                    f"cannot mount {self.repo}@{self.spec.ref} read-write: it names commit "
                    f"{commit.id}, and commits are immutable; mount a branch"
                ) from None
            head = await self.client.inspect_commit(self.repo, self.spec.ref)
            if head.state != "finished":
                raise FailedPrecondition(
                    f"commit {self.repo}@{head.id} is still open; mount it once it is finished"
                ) from None
        if head is not None and head.state != "finished" and self.writable:
            log.warning(
                "mount %s adopts open commit %s on %s@%s (left by an earlier writer)",
                self.spec.name,
                head.id,
                self.repo,
                self.branch,
            )
            self.open_commit = head.id
        self.commit = await self._finished_from(head)

    async def _finished_from(self, commit: CommitInfo | None) -> CommitInfo | None:
        while commit is not None and commit.state != "finished":
            if commit.parent is None:
                return None
            commit = await self.client.inspect_commit(self.repo, commit.parent)
        return commit

    async def refresh(self) -> bool:
        """Move a branch mount to the branch's newest finished commit; True if it moved."""
        if not self.follows_branch or self.open_commit is not None:
            return False
        try:
            branch = await self.client.inspect_branch(self.repo, self.branch)
        except NotFound:
            return False
        if branch.head is None:
            return False
        if self.commit is not None and branch.head == self.commit.id:
            return False
        newest = await self._finished_from(await self.client.inspect_commit(self.repo, branch.head))
        if newest is None or (self.commit is not None and newest.id == self.commit.id):
            return False
        self.commit = newest
        return True

    # Reads

    async def _base_stat(self, path: str) -> Stat | None:
        if self.commit is None:
            return Stat("dir", 0, 0) if path == "/" else None
        if path == "/":
            return Stat("dir", 0, self.mtime_ns)
        try:
            info = await self.client.inspect_file(self.repo, self.commit.id, path)
        except NotFound:
            return None
        return Stat(info.type, info.size_bytes if info.type == "file" else 0, self.mtime_ns)

    async def stat(self, path: str) -> Stat:
        """The attributes of ``path``; ``NotFound`` if the mount does not show it."""
        overlay = self.overlay
        if overlay is not None and path != "/":
            file = overlay.files.get(path)
            if file is not None:
                return file.stat()
            if overlay.has_dir(path):
                return Stat("dir", 0, self.mtime_ns)
            if overlay.hides(path):
                raise NotFound(f"{path} was deleted")
        found = await self._base_stat(path)
        if found is None:
            raise NotFound(f"{path} not found in {self.repo}@{self.spec.ref}")
        return found

    async def exists(self, path: str) -> Stat | None:
        try:
            return await self.stat(path)
        except NotFound:
            return None

    async def list_dir(self, path: str) -> AsyncIterator[tuple[str, Stat]]:
        """The children of directory ``path``, sorted within each layer, paged from PFS."""
        overlay_names: set[str] = set()
        if self.overlay is not None:
            children = self.overlay.children(path)
            overlay_names = set(children)
            for name in sorted(children):
                file = children[name]
                yield name, file.stat() if file is not None else Stat("dir", 0, self.mtime_ns)
        if self.commit is None:
            return
        commit = self.commit
        mtime = _time_ns(commit.finished)
        try:
            async for info in self.client.iter_files(
                self.repo, commit.id, path, page=self.list_page
            ):
                name = info.path.rstrip("/").rpartition("/")[2]
                if name in overlay_names:
                    continue
                if self.overlay is not None and self.overlay.hides(join(path, name)):
                    continue
                size = info.size_bytes if info.type == "file" else 0
                yield name, Stat(info.type, size, mtime)
        except NotFound:
            # A directory made only in the overlay has no base listing.
            if not overlay_names and (self.overlay is None or not self.overlay.has_dir(path)):
                raise

    async def open_read(self, path: str) -> LocalFile | BaseFile:
        """The file at ``path`` for reading."""
        if self.overlay is not None:
            file = self.overlay.files.get(path)
            if file is not None:
                return file
        stat = await self.stat(path)
        if stat.kind == "dir":
            raise IsADirectory(f"{path} is a directory")
        assert self.commit is not None
        return BaseFile(self.repo, self.commit.id, path, stat.size, stat.mtime_ns)

    def reader(self, file: BaseFile) -> BaseReader:
        return BaseReader(file, self.source)

    # Writes

    def _require_writable(self) -> Overlay:
        if self.overlay is None:
            raise ReadOnly(f"mount {self.spec.name} is read-only")
        return self.overlay

    async def _require_parent_dir(self, path: str) -> None:
        parent = parent_of(path)
        stat = await self.stat(parent)
        if stat.kind != "dir":
            raise NotADirectory(f"{parent} is not a directory")

    async def _ensure_open_commit(self) -> str:
        async with self._open_lock:
            if self.open_commit is not None:
                return self.open_commit
            try:
                info = await self.client.start_commit(
                    self.repo, self.branch, description=f"written through mount {self.spec.name}"
                )
            except FailedPrecondition:
                # Someone else's open commit is the head: PFS stages our writes there too.
                info = await self.client.inspect_commit(self.repo, self.branch)
                if info.state != "open":
                    raise
            self.open_commit = info.id
            return info.id

    async def _delete_staged(self, path: str) -> None:
        # Nothing there in the open commit (a local file never uploaded): the overlay hides it.
        with contextlib.suppress(NotFound):
            await self.client.delete_file(self.repo, self.branch, path)

    async def create(self, path: str) -> LocalFile:
        """A new empty file at ``path`` (replacing a file there)."""
        overlay = self._require_writable()
        await self._require_parent_dir(path)
        existing = await self.exists(path)
        if existing is not None and existing.kind == "dir":
            raise IsADirectory(f"{path} is a directory")
        file = LocalFile.create(self.scratch, path)
        self._forget(overlay.files.get(path))
        overlay.put(path, file)
        return file

    async def open_write(self, path: str, *, truncate: bool) -> LocalFile:
        """The local copy of ``path`` to write into, made from the base copy if needed."""
        overlay = self._require_writable()
        current = await self.open_read(path)
        if isinstance(current, LocalFile):
            if truncate:
                async with current.lock:
                    current.truncate(0)
            return current
        file = LocalFile.create(self.scratch, path)
        if not truncate and current.size:
            # Writing into a committed file without truncating it needs its bytes here.
            offset = 0
            async for part in self.client.get_file(self.repo, current.commit, current.path):
                offset += file.write(offset, part)
        overlay.put(path, file)
        return file

    def _forget(self, file: OverlayFile | None) -> None:
        if isinstance(file, LocalFile):
            file.path = None
            file.close_if_unused()

    async def upload(self, file: LocalFile) -> None:
        """Stage the file's current bytes in the open commit (if it changed and is still shown)."""
        async with self._gate.shared():
            await self._upload(file)

    async def _upload(self, file: LocalFile) -> None:
        async with file.lock:
            path = file.path
            if not file.dirty or path is None:
                return
            await self._ensure_open_commit()
            size = file.size()
            await self.client.put_files(
                self.repo, self.branch, _one_file(path, _read_local(file, size))
            )
            file.dirty = False

    async def truncate(self, path: str, size: int, file: LocalFile | None = None) -> None:
        if file is None:
            file = await self.open_write(path, truncate=size == 0)
        async with file.lock:
            file.truncate(size)
        if file.writers == 0:
            await self.upload(file)

    async def unlink(self, path: str) -> None:
        overlay = self._require_writable()
        stat = await self.stat(path)
        if stat.kind == "dir":
            raise IsADirectory(f"{path} is a directory")
        async with self._gate.shared():
            await self._ensure_open_commit()
            await self._delete_staged(path)
            self._forget(overlay.remove(path))

    async def mkdir(self, path: str) -> None:
        overlay = self._require_writable()
        await self._require_parent_dir(path)
        if await self.exists(path) is not None:
            raise AlreadyExists(f"{path} exists")
        overlay.mkdir(path)

    async def rmdir(self, path: str) -> None:
        overlay = self._require_writable()
        stat = await self.stat(path)
        if stat.kind != "dir":
            raise NotADirectory(f"{path} is not a directory")
        async for _ in self.list_dir(path):
            raise NotEmpty(f"{path} is not empty")
        overlay.rmdir(path)

    async def rename(self, old: str, new: str) -> None:
        """Move a file or a directory; an existing file (or empty directory) at ``new`` is replaced."""
        overlay = self._require_writable()
        stat = await self.stat(old)
        if old == new:
            return
        if is_under(new, old):
            raise InvalidArgument(f"cannot move {old} into itself")
        await self._require_parent_dir(new)
        target = await self.exists(new)
        if stat.kind == "file" and target is not None and target.kind == "dir":
            raise IsADirectory(f"{new} is a directory")
        if stat.kind == "dir" and target is not None:
            if target.kind == "file":
                raise NotADirectory(f"{new} is not a directory")
            async for _ in self.list_dir(new):
                raise NotEmpty(f"{new} is not empty")
            overlay.rmdir(new)
        async with self._gate.shared():
            await self._ensure_open_commit()
            if stat.kind == "file":
                await self._move_file(overlay, old, new)
            else:
                await self._move_dir(overlay, old, new)

    async def _move_file(self, overlay: Overlay, old: str, new: str) -> None:
        file = overlay.files.get(old)
        if file is None:
            file = await self.open_read(old)
        if isinstance(file, LocalFile):
            async with file.lock:
                file.path = new
                file.dirty = True
        else:
            await self.client.copy_file(
                self.repo, file.commit, file.path, self.repo, self.branch, new
            )
        await self._delete_staged(old)
        overlay.remove(old)
        self._forget(overlay.files.get(new))
        overlay.put(new, file)
        if isinstance(file, LocalFile) and file.writers == 0:
            await self._upload(file)

    async def _move_dir(self, overlay: Overlay, old: str, new: str) -> None:
        base = self.commit
        base_files = [] if base is None else await self._base_files_under(old)
        if base is not None and base_files:
            # One server-side copy of the committed subtree; changes shown over it follow.
            await self.client.copy_file(self.repo, base.id, old, self.repo, self.branch, new)
        await self._delete_staged(old)
        moved: list[tuple[str, OverlayFile]] = []
        for path, size in base_files:
            if base is not None and path not in overlay.files and not overlay.hides(path):
                moved.append((path, BaseFile(self.repo, base.id, path, size, self.mtime_ns)))
            elif overlay.hides(path):
                # Deleted here but present in the copied subtree: delete its copy too.
                await self._delete_staged(new + path[len(old) :])
        moved.extend(overlay.files_under(old))
        dirs = [d for d in overlay.dirs if is_under(d, old)]
        for path, file in moved:
            overlay.remove(path)
            target = new + path[len(old) :]
            if isinstance(file, LocalFile):
                file.path = target
                file.dirty = True
            overlay.put(target, file)
        for d in dirs:
            overlay.rmdir(d)
            overlay.mkdir(new + d[len(old) :])
        overlay.rmdir(old)
        overlay.mkdir(new)
        for _, file in moved:
            if isinstance(file, LocalFile) and file.writers == 0:
                await self._upload(file)

    async def _base_files_under(self, directory: str) -> list[tuple[str, int]]:
        """(path, size) of every committed file under ``directory``, walked page by page."""
        assert self.commit is not None
        found: list[tuple[str, int]] = []
        pending = [directory]
        while pending:
            current = pending.pop()
            try:
                async for info in self.client.iter_files(
                    self.repo, self.commit.id, current, page=self.list_page
                ):
                    path = join(current, info.path.rstrip("/").rpartition("/")[2])
                    if info.type == "dir":
                        pending.append(path)
                    else:
                        found.append((path, info.size_bytes))
            except NotFound:
                continue
        return found

    def writing(self) -> list[str]:
        """Paths of files open for writing."""
        if self.overlay is None:
            return []
        return sorted(
            p for p, f in self.overlay.files.items() if isinstance(f, LocalFile) and f.writers
        )

    async def commit_now(self) -> CommitInfo | None:
        """Finish the open commit with every closed file; None if nothing was staged.

        Files still open for writing stay in the overlay for the next commit.
        """
        overlay = self._require_writable()
        async with self._gate.exclusive():
            for file in list(overlay.files.values()):
                if isinstance(file, LocalFile) and file.dirty and not file.writers:
                    await self._upload(file)
            if self.open_commit is None:
                return None
            info = await self.client.finish_commit(self.repo, self.open_commit)
            if info.state != "finished":
                info = await self.client.wait_commit(self.repo, info.id)
            self.open_commit = None
            for file in overlay.after_commit():
                self._forget(file)
            self.commit = info
            return info

    async def close(self, *, force: bool) -> CommitInfo | None:
        """Before unmount: commit what is closed; refuse while files are being written unless ``force``."""
        if self.overlay is None:
            return None
        writing = self.writing()
        if writing and not force:
            shown = ", ".join(writing[:5]) + (" …" if len(writing) > 5 else "")
            raise FailedPrecondition(
                f"mount {self.spec.name} has files open for writing ({shown}); close them "
                "or unmount with force (their unsaved writes are dropped)"
            )
        info = await self.commit_now()
        for file in list(self.overlay.files.values()):
            self._forget(file)
        return info


# Called with the mount whose content changed, or None when mounts came or went.
ChangeHook = Callable[[Mount | None], Awaitable[None]]


class MountManager:
    """The named mounts of one FUSE tree, and the follower that keeps branch mounts current."""

    def __init__(
        self,
        client: PfsClient,
        source: BlockSource,
        *,
        root: str,
        scratch: str,
        refresh_interval: float = 30.0,
        list_page: int = DEFAULT_LIST_PAGE,
    ) -> None:
        self.client = client
        self.source = source
        self.root = root
        self.scratch = scratch
        self.refresh_interval = refresh_interval
        self.list_page = list_page
        self.mounts: dict[str, Mount] = {}
        # Called after a mount shows new content, so the kernel's caches are dropped.
        self.on_change: ChangeHook | None = None
        # Set whenever PFS announces a branch move (``Bus.watch``); None: poll only.
        self.branch_moves: asyncio.Event | None = None
        self._lock = asyncio.Lock()

    def get(self, name: str) -> Mount:
        mount = self.mounts.get(name)
        if mount is None:
            raise NotFound(f"no mount named {name!r}")
        return mount

    async def mount(self, spec: MountSpec) -> Mount:
        """Add a mount; it appears at ``<root>/<name>``."""
        check_name("mount", spec.name)
        async with self._lock:
            if spec.name in self.mounts:
                raise AlreadyExists(f"a mount named {spec.name!r} exists; unmount it first")
            mount = Mount(
                spec,
                self.client,
                self.source,
                path=os.path.join(self.root, spec.name),
                scratch=self.scratch,
                list_page=self.list_page,
            )
            await mount.start()
            self.mounts[spec.name] = mount
        await self._changed_root()
        log.info("mounted %s@%s (%s) at %s", spec.repo, spec.ref, spec.mode, mount.path)
        return mount

    async def unmount(self, name: str, *, force: bool = False) -> CommitInfo | None:
        """Remove a mount, finishing its open commit first."""
        mount = self.get(name)
        info = await mount.close(force=force)
        async with self._lock:
            self.mounts.pop(name, None)
        await self._changed_root()
        log.info("unmounted %s%s", name, f" (commit {info.id})" if info else "")
        return info

    async def commit(self, name: str) -> CommitInfo | None:
        mount = self.get(name)
        info = await mount.commit_now()
        if info is not None:
            await self._changed(mount)
        return info

    async def refresh(self, name: str) -> Mount:
        mount = self.get(name)
        if await mount.refresh():
            await self._changed(mount)
        return mount

    async def _changed(self, mount: Mount) -> None:
        if self.on_change is not None:
            await self.on_change(mount)

    async def _changed_root(self) -> None:
        if self.on_change is not None:
            await self.on_change(None)

    async def follow(self) -> None:
        """Refresh the branch mounts whenever a branch moves (``branch_moves``, an event
        set by PFS's ``branch.moved`` events), and at least every ``refresh_interval``
        seconds, forever (the interval alone when there are no events)."""
        if self.branch_moves is None and self.refresh_interval <= 0:
            return
        interval = self.refresh_interval if self.refresh_interval > 0 else None
        while True:
            if self.branch_moves is None:
                await asyncio.sleep(self.refresh_interval)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.branch_moves.wait(), interval)
                self.branch_moves.clear()
            for mount in list(self.mounts.values()):
                try:
                    if await mount.refresh():
                        log.info("mount %s now shows commit %s", mount.spec.name, mount.commit)
                        await self._changed(mount)
                except TuskError as exc:
                    log.warning("refreshing mount %s failed: %s", mount.spec.name, exc)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[MountManager]:
        """Follow branches while inside; at exit unmount everything (commits finished)."""
        async with asyncio.TaskGroup() as group:
            follower = group.create_task(self.follow())
            try:
                yield self
            finally:
                follower.cancel()
                # The tree goes away with us: no kernel entries left to invalidate.
                self.on_change = None
                await self.unmount_all()

    async def unmount_all(self) -> None:
        for name in list(self.mounts):
            try:
                await self.unmount(name, force=True)
            except TuskError as exc:
                log.error("unmounting %s failed: %s", name, exc)
