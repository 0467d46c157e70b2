"""``lazy: true`` inputs: a read-only FUSE tree in the worker that serves datums' input files
straight from the chunk store, so a datum pays only for the bytes it reads.

The worker mounts one tree for its whole life (pyfuse3 allows one session per process)
and, around each datum, registers that datum's lazy files under a directory of their
own::

    <mount>/<datum dir>/<input name>/<path in the input repo>

``datum_runner`` binds ``<mount>/<datum dir>/<input name>`` read-only at
``/pfs/<input name>`` in the sandbox, and the directory is dropped when the datum ends.
Nothing is written to disk: a FUSE read of bytes ``[off, off + size)`` becomes
``read_range`` over the file's ``FileEntry``, which fetches only the chunks holding
those bytes, through the worker's ``ChunkCache`` (so neighbouring reads, and datums
sharing chunks, fetch a chunk once).

Choices, and why:

- **Immutable while registered**: a datum's files never change, so entries below a
  datum directory are cached by the kernel for minutes and opened with ``keep_cache``.
  Inode numbers are never reused, so nothing cached for one datum can show in another.
- **Datum directories are never cached** (entry timeout 0): a path through a removed
  datum directory is looked up again and answers ``ENOENT`` at once. Inside the
  sandbox the bind's root is the input directory, so the sandbox never pays for it.
- **Read-only twice**: the tree is mounted ``ro`` and every changing request answers
  ``EROFS``; the sandbox's read-only bind is a third wall.
- ``forget`` keeps nothing to free: a datum's inodes are dropped with its directory,
  and a late request for one answers ``ENOENT``.

The worker's loop serves the tree, so the worker must never touch it with blocking
calls from that loop (see ``shared/platform/fuse_session.py``); the sandboxed command is a
subprocess, which is why this works.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import stat as stat_mode
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pyfuse3

from shared.platform.errors import InvalidArgument, TuskError
from shared.platform.fuse_base import TuskOperations
from shared.platform.fuse_session import fuse_session
from shared.storage.chunking import ChunkCache, FileEntry, read_range
from shared.storage.objstore import ObjectStore

log = logging.getLogger("tusk.worker.lazy")

P = ParamSpec("P")
R = TypeVar("R")

# The file-system type the tree shows as (fuse.tusk-lazy): not mountd's "tusk", so
# `tusk unmount --all` leaves workers' trees alone.
FS_NAME = "tusk-lazy"
# Kernel cache lifetime (seconds) of what is inside a datum directory: it cannot change.
DATUM_TIMEOUT = 300.0
# What stat() reports as the preferred I/O size: cp and friends size their buffers by it.
BLOCK_HINT = 128 << 10


def _answer_errors(
    handler: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """Answer every failure with an errno: pyfuse3 would otherwise leave the caller hanging."""

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except TuskError as exc:
            # The store down or a chunk missing: the datum's read fails, the worker lives.
            log.error("%s failed, answering EIO: %s", handler.__name__, exc.message)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            log.exception("%s failed unexpectedly, answering EIO", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


@dataclass(slots=True)
class _Node:
    """A file (``entry`` set) or a directory (``children`` set) of the tree."""

    inode: int
    mtime_ns: int
    entry: FileEntry | None = None
    children: dict[bytes, _Node] | None = None
    # Entry timeout of this node's name in its parent.
    timeout: float = DATUM_TIMEOUT


@dataclass(slots=True)
class LazyDatum:
    """One datum's directory in the tree, and how many bytes its command has read."""

    name: str
    directory: _Node
    inodes: set[int] = field(default_factory=set)
    bytes_read: int = 0


@dataclass(slots=True)
class _Handle:
    entry: FileEntry
    datum: LazyDatum


class LazyTree(TuskOperations):
    """The read-only tree of the lazy inputs of the datums running on this worker."""

    def __init__(self, store: ObjectStore, cache: ChunkCache) -> None:
        super().__init__()
        self.store = store
        self.cache = cache
        self.uid = os.getuid()
        self.gid = os.getgid()
        self._root = _Node(pyfuse3.ROOT_INODE, time.time_ns(), children={}, timeout=0.0)
        self._nodes: dict[int, _Node] = {self._root.inode: self._root}
        self._datums: dict[str, LazyDatum] = {}
        # Never reused: a stale kernel reference to an old inode can only get ENOENT.
        self._inodes = itertools.count(pyfuse3.ROOT_INODE + 1)
        self._names = itertools.count(1)
        self._files: dict[int, _Handle] = {}
        self._dirs: dict[int, list[tuple[bytes, _Node]]] = {}
        self._handles = itertools.count(1)

    # The worker's side: registering and dropping datums

    def add_datum(self, inputs: Mapping[str, Sequence[tuple[str, FileEntry]]]) -> LazyDatum:
        """Show ``inputs`` (input name → (relative path, entry) pairs) under a new datum
        directory. Raises ``InvalidArgument`` for a path that is both a file and a
        directory, or given twice, and adds nothing then."""
        name = f"datum-{next(self._names)}"
        now = time.time_ns()
        datum = LazyDatum(name, self._new_node(now, children={}, timeout=0.0, inodes=None))
        datum.inodes.add(datum.directory.inode)
        try:
            for input_name, files in inputs.items():
                top = self._child_dir(datum, datum.directory, input_name, now)
                for path, entry in files:
                    self._add_file(datum, top, input_name, path, entry, now)
        except BaseException:
            self._forget_inodes(datum)
            raise
        assert self._root.children is not None
        self._root.children[os.fsencode(name)] = datum.directory
        self._datums[name] = datum
        return datum

    def remove_datum(self, name: str) -> None:
        """Drop a datum directory and everything under it."""
        datum = self._datums.pop(name, None)
        if datum is None:
            return
        assert self._root.children is not None
        raw = os.fsencode(name)
        self._root.children.pop(raw, None)
        self._forget_inodes(datum)
        # Lets the kernel evict the datum's dentries, inodes and cached pages now rather
        # than under memory pressure; lookups already answer ENOENT without it.
        pyfuse3.invalidate_entry_async(pyfuse3.ROOT_INODE, raw, ignore_enoent=True)

    def _forget_inodes(self, datum: LazyDatum) -> None:
        for inode in datum.inodes:
            self._nodes.pop(inode, None)

    def _new_node(
        self,
        now: int,
        *,
        inodes: set[int] | None,
        entry: FileEntry | None = None,
        children: dict[bytes, _Node] | None = None,
        timeout: float = DATUM_TIMEOUT,
    ) -> _Node:
        node = _Node(next(self._inodes), now, entry, children, timeout)
        self._nodes[node.inode] = node
        if inodes is not None:
            inodes.add(node.inode)
        return node

    def _child_dir(self, datum: LazyDatum, parent: _Node, name: str, now: int) -> _Node:
        assert parent.children is not None
        raw = os.fsencode(name)
        existing = parent.children.get(raw)
        if existing is not None:
            if existing.children is None:
                raise InvalidArgument(f"{name!r} is both a file and a directory")
            return existing
        node = self._new_node(now, children={}, inodes=datum.inodes)
        parent.children[raw] = node
        return node

    def _add_file(
        self, datum: LazyDatum, top: _Node, input_name: str, path: str, entry: FileEntry, now: int
    ) -> None:
        parts = path.split("/")
        if any(part in ("", ".", "..") or "\0" in part for part in parts):
            raise InvalidArgument(f"input file path {path!r} is not a clean relative path")
        directory = top
        for part in parts[:-1]:
            directory = self._child_dir(datum, directory, part, now)
        assert directory.children is not None
        raw = os.fsencode(parts[-1])
        if raw in directory.children:
            raise InvalidArgument(f"input {input_name!r} has {path!r} twice, or as a directory")
        directory.children[raw] = self._new_node(now, entry=entry, inodes=datum.inodes)

    # The kernel's side

    def _node(self, inode: int) -> _Node:
        node = self._nodes.get(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _attrs(self, node: _Node) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = node.inode
        attrs.generation = 0
        if node.entry is None:
            attrs.st_mode = stat_mode.S_IFDIR | 0o555
            attrs.st_nlink = 2
            size = 0
        else:
            attrs.st_mode = stat_mode.S_IFREG | 0o444
            attrs.st_nlink = 1
            size = node.entry.size
        attrs.st_size = size
        attrs.st_blksize = BLOCK_HINT
        attrs.st_blocks = (size + 511) // 512
        attrs.st_atime_ns = attrs.st_mtime_ns = attrs.st_ctime_ns = node.mtime_ns
        attrs.st_uid = self.uid
        attrs.st_gid = self.gid
        attrs.entry_timeout = node.timeout
        attrs.attr_timeout = node.timeout
        return attrs

    @_answer_errors
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        if parent.children is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        node = parent.children.get(name)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(node)

    async def forget(self, inode_list: Any) -> None:
        # Nothing to free: a datum's inodes go when its directory does (module docstring).
        return None

    @_answer_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attrs(self._node(inode))

    @_answer_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise pyfuse3.FUSEError(errno.EROFS)
        if node.entry is None:
            raise pyfuse3.FUSEError(errno.EISDIR)
        fh = next(self._handles)
        # The handle holds the entry, so a file opened before its datum ended still reads.
        self._files[fh] = _Handle(node.entry, self._owner(inode))
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    def _owner(self, inode: int) -> LazyDatum:
        # Datums are few (one per running datum); their inode sets answer at once.
        for datum in self._datums.values():
            if inode in datum.inodes:
                return datum
        raise pyfuse3.FUSEError(errno.ENOENT)

    @_answer_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self._files.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        pieces = [
            piece
            async for piece in read_range(self.store, handle.entry, off, off + size, self.cache)
        ]
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        handle.datum.bytes_read += len(data)
        return data

    async def release(self, fh: int) -> None:
        self._files.pop(fh, None)

    @_answer_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self._node(inode)
        if node.children is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        fh = next(self._handles)
        # A snapshot: readdir continues by position, which must not shift under it.
        self._dirs[fh] = sorted(node.children.items())
        return fh

    @_answer_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = self._dirs.get(fh)
        if entries is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        for index in range(start_id, len(entries)):
            name, node = entries[index]
            if not pyfuse3.readdir_reply(token, name, self._attrs(node), index + 1):
                return

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        data.f_namemax = 255
        return data


class LazyInputs:
    """The mounted tree as the datum runner uses it: one ``datum()`` block per datum."""

    def __init__(self, tree: LazyTree, mountpoint: Path) -> None:
        self.tree = tree
        self.mountpoint = mountpoint

    def path(self, datum: LazyDatum) -> Path:
        """The datum's directory on this machine: ``<mount>/<datum dir>``."""
        return self.mountpoint / datum.name

    @contextmanager
    def datum(self, inputs: Mapping[str, Sequence[tuple[str, FileEntry]]]) -> Iterator[LazyDatum]:
        """Serve ``inputs`` (input name → (relative path, entry) pairs) for the block;
        ``path(datum) / <input name>`` holds an input's files."""
        datum = self.tree.add_datum(inputs)
        try:
            yield datum
        finally:
            self.tree.remove_datum(datum.name)


@asynccontextmanager
async def mount_lazy_inputs(
    store: ObjectStore, cache: ChunkCache, mountpoint: Path
) -> AsyncIterator[LazyInputs]:
    """Mount an empty lazy-input tree at ``mountpoint`` for the block; unmount after.

    Raises ``Unavailable`` when FUSE cannot mount here (``fuse_unavailable_reason``).
    """
    tree = LazyTree(store, cache)
    async with fuse_session(tree, mountpoint, name=FS_NAME, read_only=True):
        yield LazyInputs(tree, mountpoint)


__all__ = [
    "FS_NAME",
    "LazyDatum",
    "LazyInputs",
    "LazyTree",
    "mount_lazy_inputs",
]
