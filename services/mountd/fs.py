"""The FUSE file system: the kernel's requests answered from the mounts of a ``MountManager``.

The tree: the mount root lists the named mounts; ``<root>/<name>/…`` shows that
mount's files. Inodes are numbered per (mount, path) as the kernel learns them and
dropped when it forgets them, so listing a huge directory does not grow memory for
good. Every handler maps ``TuskError``s to an errno (``ERRNO_BY_ERROR``); anything
unexpected is logged with its traceback and answered ``EIO`` — pyfuse3 would
otherwise end the worker without replying, hanging the caller.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat as stat_mode
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import pyfuse3

from services.mountd.files import BaseFile, BaseReader, LocalFile, Stat
from services.mountd.listing import DirListing
from services.mountd.mounts import Mount, MountManager
from services.mountd.overlay import join
from shared.platform.errors import (
    AlreadyExists,
    InvalidArgument,
    IsADirectory,
    NotADirectory,
    NotEmpty,
    NotFound,
    ReadOnly,
    TooLarge,
    TuskError,
)
from shared.platform.fuse_base import TuskOperations

log = logging.getLogger("tusk.mountd.fs")

P = ParamSpec("P")
R = TypeVar("R")

ERRNO_BY_ERROR: tuple[tuple[type[TuskError], int], ...] = (
    (NotFound, errno.ENOENT),
    (ReadOnly, errno.EROFS),
    (IsADirectory, errno.EISDIR),
    (NotADirectory, errno.ENOTDIR),
    (NotEmpty, errno.ENOTEMPTY),
    (AlreadyExists, errno.EEXIST),
    (TooLarge, errno.EFBIG),
    (InvalidArgument, errno.EINVAL),
)

# Kernel cache lifetimes (seconds): a commit never changes; a branch mount's caches
# are also dropped explicitly when it moves; a rw mount's view changes under writes.
COMMIT_TIMEOUT = 300.0
BRANCH_TIMEOUT = 1.0
RW_TIMEOUT = 0.0
# What stat() reports as the preferred I/O size: cp and friends size their buffers by it.
BLOCK_HINT = 128 << 10


def errno_for(error: TuskError) -> int:
    for cls, code in ERRNO_BY_ERROR:
        if isinstance(error, cls):
            return code
    return errno.EIO


def fuse_errors(
    handler: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """Answer the kernel with an errno for every failure, and log the ones that are EIO."""

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except TuskError as exc:
            code = errno_for(exc)
            if code == errno.EIO:
                log.error("%s failed, answering EIO: %s", handler.__name__, exc.message)
            else:
                log.debug("%s: %s (%s)", handler.__name__, exc.message, errno.errorcode[code])
            raise pyfuse3.FUSEError(code) from None
        except OSError as exc:
            log.error("%s failed on a local file: %s", handler.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            log.exception("%s failed unexpectedly, answering EIO", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


def _name(raw: bytes) -> str:
    return os.fsdecode(raw)


@dataclass
class Node:
    """An inode the kernel knows: ``path`` inside mount ``mount`` (None: the mount root)."""

    inode: int
    parent: int
    mount: str | None
    path: str
    lookups: int = 0
    opens: int = 0


@dataclass
class Handle:
    node: Node
    mount: Mount
    local: LocalFile | None
    reader: BaseReader | None
    writable: bool


class TuskFs(TuskOperations):
    """pyfuse3 operations over the mounts of ``manager``."""

    # Read-write mounts change it; read-only ones refuse with EROFS mount by mount.
    WRITABLE = True

    def __init__(self, manager: MountManager, *, list_window: int = 1000) -> None:
        super().__init__()
        self.manager = manager
        self.list_window = list_window
        self.uid = os.getuid()
        self.gid = os.getgid()
        root = Node(pyfuse3.ROOT_INODE, pyfuse3.ROOT_INODE, None, "/", lookups=1)
        self._nodes: dict[int, Node] = {root.inode: root}
        self._by_key: dict[tuple[str | None, str], int] = {(None, "/"): root.inode}
        self._next_inode = pyfuse3.ROOT_INODE + 1
        self._handles: dict[int, Handle] = {}
        self._dirs: dict[int, tuple[Node, DirListing[Stat]]] = {}
        self._next_fh = 1
        manager.on_change = self.invalidate

    # Inodes

    def _node(self, inode: int) -> Node:
        node = self._nodes.get(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _remember(self, parent: Node, mount: str, path: str) -> Node:
        key = (mount, path)
        inode = self._by_key.get(key)
        if inode is not None:
            return self._nodes[inode]
        node = Node(self._next_inode, parent.inode, mount, path)
        self._next_inode += 1
        self._nodes[node.inode] = node
        self._by_key[key] = node.inode
        return node

    def _drop_if_unused(self, node: Node) -> None:
        if node.inode == pyfuse3.ROOT_INODE or node.lookups > 0 or node.opens > 0:
            return
        del self._nodes[node.inode]
        if self._by_key.get((node.mount, node.path)) == node.inode:
            del self._by_key[(node.mount, node.path)]

    def _mount_of(self, node: Node) -> Mount:
        if node.mount is None:
            raise pyfuse3.FUSEError(errno.EACCES)
        mount = self.manager.mounts.get(node.mount)
        if mount is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return mount

    def _child(self, parent: Node, name: str) -> tuple[str, str]:
        if parent.mount is None:
            return name, "/"
        return parent.mount, join(parent.path, name)

    def _writable_child(self, parent_inode: int, raw: bytes) -> tuple[Node, Mount, str]:
        parent = self._node(parent_inode)
        if parent.mount is None:
            # The mount root lists mounts; they are made over HTTP, not with mkdir.
            raise pyfuse3.FUSEError(errno.EACCES)
        mount = self._mount_of(parent)
        if not mount.writable:
            raise pyfuse3.FUSEError(errno.EROFS)
        return parent, mount, join(parent.path, _name(raw))

    def _attrs(self, node: Node, stat: Stat, mount: Mount | None) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = node.inode
        attrs.generation = 0
        writable = mount is not None and mount.writable
        if stat.kind == "dir":
            attrs.st_mode = stat_mode.S_IFDIR | (0o755 if writable else 0o555)
            attrs.st_nlink = 2
        else:
            attrs.st_mode = stat_mode.S_IFREG | (0o644 if writable else 0o444)
            attrs.st_nlink = 1
        attrs.st_size = stat.size
        attrs.st_blksize = BLOCK_HINT
        attrs.st_blocks = (stat.size + 511) // 512
        attrs.st_atime_ns = attrs.st_mtime_ns = attrs.st_ctime_ns = stat.mtime_ns
        attrs.st_uid = self.uid
        attrs.st_gid = self.gid
        if mount is None or mount.writable:
            timeout = RW_TIMEOUT
        elif mount.follows_branch:
            timeout = BRANCH_TIMEOUT
        else:
            timeout = COMMIT_TIMEOUT
        attrs.entry_timeout = attrs.attr_timeout = timeout
        return attrs

    def _open_local(self, node: Node) -> LocalFile | None:
        for handle in self._handles.values():
            if handle.node is node and handle.local is not None:
                return handle.local
        return None

    async def _stat(self, node: Node) -> tuple[Stat, Mount | None]:
        if node.mount is None:
            return Stat("dir", 0, 0), None
        local = self._open_local(node) if node.opens else None
        mount = self._mount_of(node)
        if local is not None:
            return local.stat(), mount
        return await mount.stat(node.path), mount

    # Lookups and attributes

    @fuse_errors
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        text = _name(name)
        if text in (".", ".."):
            raise pyfuse3.FUSEError(errno.ENOENT)
        mount_name, path = self._child(parent, text)
        mount = self.manager.mounts.get(mount_name)
        if mount is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        stat = await mount.stat(path)
        node = self._remember(parent, mount_name, path)
        node.lookups += 1
        return self._attrs(node, stat, mount)

    async def forget(self, inode_list: Any) -> None:
        for inode, count in inode_list:
            node = self._nodes.get(inode)
            if node is not None:
                node.lookups -= count
                self._drop_if_unused(node)

    @fuse_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        stat, mount = await self._stat(node)
        return self._attrs(node, stat, mount)

    @fuse_errors
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        if node.mount is None:
            raise pyfuse3.FUSEError(errno.EACCES)
        mount = self._mount_of(node)
        if not mount.writable:
            raise pyfuse3.FUSEError(errno.EROFS)
        if fields.update_size:
            handle = self._handles.get(fh) if fh is not None else None
            local = handle.local if handle is not None else self._open_local(node)
            await mount.truncate(node.path, attr.st_size, local)
        # Modes, owners and times are not versioned: accepted (cp -p, touch) and not kept.
        stat, _ = await self._stat(node)
        return self._attrs(node, stat, mount)

    # Files

    def _new_handle(self, handle: Handle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = handle
        handle.node.opens += 1
        if handle.local is not None:
            handle.local.opens += 1
            if handle.writable:
                handle.local.writers += 1
        return fh

    def _file_info(self, fh: int, mount: Mount) -> pyfuse3.FileInfo:
        # A commit's bytes never change, so the kernel may keep its page cache across opens.
        keep = not mount.follows_branch and not mount.writable
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep)

    @fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._node(inode)
        mount = self._mount_of(node)
        writable = flags & os.O_ACCMODE != os.O_RDONLY
        if writable:
            if not mount.writable:
                raise pyfuse3.FUSEError(errno.EROFS)
            local = await mount.open_write(node.path, truncate=bool(flags & os.O_TRUNC))
            handle = Handle(node, mount, local, None, True)
        else:
            file = await mount.open_read(node.path)
            if isinstance(file, BaseFile):
                handle = Handle(node, mount, None, mount.reader(file), False)
            else:
                handle = Handle(node, mount, file, None, False)
        return self._file_info(self._new_handle(handle), mount)

    @fuse_errors
    async def create(
        self,
        parent_inode: int,
        name: bytes,
        mode: int,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent, mount, path = self._writable_child(parent_inode, name)
        local = await mount.create(path)
        node = self._remember(parent, mount.spec.name, path)
        node.lookups += 1
        fh = self._new_handle(Handle(node, mount, local, None, True))
        return self._file_info(fh, mount), self._attrs(node, local.stat(), mount)

    def _handle(self, fh: int) -> Handle:
        handle = self._handles.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        return handle

    @fuse_errors
    async def read(  # type: ignore[override]  # pyfuse3 replies from any contiguous buffer
        self, fh: int, off: int, size: int
    ) -> bytes | memoryview:
        handle = self._handle(fh)
        if handle.local is not None:
            return handle.local.read(off, size)
        assert handle.reader is not None
        return await handle.reader.read(off, size)

    @fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._handle(fh)
        if not handle.writable or handle.local is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        async with handle.local.lock:
            return handle.local.write(off, buf)

    @fuse_errors
    async def flush(self, fh: int) -> None:
        handle = self._handle(fh)
        local = handle.local
        # close() of the last writer stages the file, so close() reports upload errors.
        if handle.writable and local is not None and local.dirty and local.writers == 1:
            await handle.mount.upload(local)

    @fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        handle = self._handle(fh)
        if handle.writable and handle.local is not None and handle.local.dirty:
            await handle.mount.upload(handle.local)

    @fuse_errors
    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if handle is None:
            return
        handle.node.opens -= 1
        local = handle.local
        try:
            if local is not None and handle.writable:
                local.writers -= 1
                if local.writers == 0 and local.dirty:
                    await handle.mount.upload(local)
        finally:
            if local is not None:
                local.opens -= 1
                local.close_if_unused()
            self._drop_if_unused(handle.node)

    # Directories

    @fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self._node(inode)
        if node.mount is None:
            names = sorted(self.manager.mounts)

            async def mounts() -> Any:
                for name in names:
                    mount = self.manager.mounts.get(name)
                    if mount is not None:
                        yield name, Stat("dir", 0, mount.mtime_ns)

            listing: DirListing[Stat] = DirListing(mounts, window=self.list_window)
        else:
            mount = self._mount_of(node)
            stat = await mount.stat(node.path)
            if stat.kind != "dir":
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            listing = DirListing(lambda: mount.list_dir(node.path), window=self.list_window)
        fh = self._next_fh
        self._next_fh += 1
        self._dirs[fh] = (node, listing)
        node.opens += 1
        return fh

    @fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entry = self._dirs.get(fh)
        if entry is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        node, listing = entry
        position = start_id
        while batch := await listing.batch(position):
            for index, name, stat in batch:
                mount_name, path = self._child(node, name)
                mount = self.manager.mounts.get(mount_name)
                child = self._remember(node, mount_name, path)
                attrs = self._attrs(child, stat, mount)
                if not pyfuse3.readdir_reply(token, os.fsencode(name), attrs, index + 1):
                    self._drop_if_unused(child)
                    return
                # readdirplus: each entry the kernel took counts as a lookup.
                child.lookups += 1
                position = index + 1

    @fuse_errors
    async def releasedir(self, fh: int) -> None:
        entry = self._dirs.pop(fh, None)
        if entry is not None:
            node, listing = entry
            node.opens -= 1
            await listing.aclose()
            self._drop_if_unused(node)

    @fuse_errors
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent, mount, path = self._writable_child(parent_inode, name)
        await mount.mkdir(path)
        node = self._remember(parent, mount.spec.name, path)
        node.lookups += 1
        return self._attrs(node, await mount.stat(path), mount)

    @fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        _, mount, path = self._writable_child(parent_inode, name)
        await mount.rmdir(path)
        self._unkey(mount.spec.name, path)

    @fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        _, mount, path = self._writable_child(parent_inode, name)
        await mount.unlink(path)
        self._unkey(mount.spec.name, path)

    def _unkey(self, mount: str, path: str) -> None:
        """The path no longer names its inode (the kernel may still hold the inode)."""
        self._by_key.pop((mount, path), None)

    @fuse_errors
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        _, mount, old = self._writable_child(parent_inode_old, name_old)
        new_parent, new_mount, new = self._writable_child(parent_inode_new, name_new)
        if new_mount is not mount:
            raise pyfuse3.FUSEError(errno.EXDEV)
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        if flags & pyfuse3.RENAME_NOREPLACE and await mount.exists(new) is not None:
            raise pyfuse3.FUSEError(errno.EEXIST)
        await mount.rename(old, new)
        self._rekey(mount.spec.name, old, new, new_parent.inode)

    def _rekey(self, mount: str, old: str, new: str, new_parent: int) -> None:
        """Inodes under ``old`` now live under ``new`` (the kernel moved the dentries)."""
        self._unkey(mount, new)
        prefix = old + "/"
        for node in list(self._nodes.values()):
            if node.mount != mount or not (node.path == old or node.path.startswith(prefix)):
                continue
            self._by_key.pop((mount, node.path), None)
            node.path = new + node.path[len(old) :]
            if node.path == new:
                node.parent = new_parent
            self._by_key[(mount, node.path)] = node.inode

    # Symlinks, device nodes, hard links and extended attributes: TuskOperations
    # refuses them (EPERM: Tusk versions regular files and directories).

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        # No fixed capacity: report plenty free so tools that check space proceed.
        data.f_blocks = data.f_bfree = data.f_bavail = 1 << 40
        data.f_files = data.f_ffree = data.f_favail = 1 << 32
        data.f_namemax = 255
        return data

    # Cache invalidation

    async def invalidate(self, mount: Mount | None) -> None:
        """Drop the kernel's cached entries of ``mount`` (None: the list of mounts)."""
        for node in list(self._nodes.values()):
            if node.inode == pyfuse3.ROOT_INODE:
                continue
            if mount is None:
                if node.path == "/" and node.mount is not None:
                    pyfuse3.invalidate_entry_async(
                        pyfuse3.ROOT_INODE, os.fsencode(node.mount), ignore_enoent=True
                    )
            elif node.mount == mount.spec.name and node.path != "/":
                name = node.path.rpartition("/")[2]
                pyfuse3.invalidate_entry_async(node.parent, os.fsencode(name), ignore_enoent=True)
