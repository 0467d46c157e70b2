"""The base of Tusk's FUSE trees (mountd's ``TuskFs``, the worker's ``LazyTree``): one
place for what both answer alike.

A change to a read-only tree is refused with ``EROFS`` (as the kernel answers for a
read-only mount); a kind of entry Tusk does not version (symlinks, device nodes, hard
links) with ``EPERM`` where the tree is writable, ``EROFS`` where it is not. Trees
have no extended attributes. A subclass that writes overrides the calls it serves.

Importing this module needs pyfuse3.
"""

from __future__ import annotations

import errno
from typing import ClassVar, NoReturn

import pyfuse3


class TuskOperations(pyfuse3.Operations):
    """pyfuse3 ``Operations`` with Tusk's refusals; ``WRITABLE`` says whether the tree
    can change at all."""

    WRITABLE: ClassVar[bool] = False

    def refuse_change(self) -> NoReturn:
        raise pyfuse3.FUSEError(errno.EROFS)

    def refuse_kind(self) -> NoReturn:
        """A symlink, device node or hard link: Tusk versions files and directories."""
        raise pyfuse3.FUSEError(errno.EPERM if self.WRITABLE else errno.EROFS)

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return []

    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self.refuse_kind()

    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self.refuse_kind()

    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self.refuse_kind()

    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        self.refuse_change()

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        self.refuse_change()

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self.refuse_change()

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self.refuse_change()

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.refuse_change()

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.refuse_change()

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        self.refuse_change()
