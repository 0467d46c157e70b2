"""Object store in a local directory: one file per key, written by temp file + fsync + rename.

A key ``a/b/c`` is the file ``<root>/a/b/c``. A put writes ``.tmp-*`` beside the target,
fdatasyncs it, renames it over the target and fsyncs the directory, so a crash at any point
leaves either the old object or the new one, plus at worst a stray ``.tmp-*`` file
that is never visible as a key (keys may not have a segment starting with ``.tmp-``).
Blocking file I/O runs in the store's own small thread pool, never on the event loop.

Limitation of a file system: a key cannot also be a directory of other keys (``a`` and
``a/b`` cannot both exist). Tusk's key scheme (``chunks/ab/<hash>``, …) never does that.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from shared.platform.errors import InvalidArgument, NotFound, Unavailable
from shared.storage.objstore import ObjectStat, check_range

_TEMP_PREFIX = ".tmp-"
T = TypeVar("T")


class LocalStore:
    """An ``ObjectStore`` over a directory of this machine."""

    def __init__(self, root: str | Path, *, threads: int = 8) -> None:
        root_path = Path(root)
        if not root_path.is_absolute():
            raise InvalidArgument(f"local object store root {str(root)!r} must be an absolute path")
        try:
            root_path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise Unavailable(f"cannot create object store directory {root_path}: {exc}") from None
        self.root = root_path
        # fsync waits on the disk, not the CPU, so more threads than cores keep it busy.
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tusk-localstore")

    def _path(self, key: str) -> Path:
        if not key or key.startswith("/") or "\\" in key or "\0" in key:
            raise InvalidArgument(f"invalid object key {key!r}")
        for part in key.split("/"):
            if part in ("", ".", "..") or part.startswith(_TEMP_PREFIX):
                raise InvalidArgument(f"invalid object key {key!r}: bad segment {part!r}")
        return self.root / key

    async def _run(self, func: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(func, *args))

    async def put(self, key: str, data: bytes) -> None:
        """Write ``data`` to a temp file, fsync, and rename it onto the key's path."""
        path = self._path(key)
        try:
            await self._run(_put_file, path, data)
        except (IsADirectoryError, NotADirectoryError):
            raise InvalidArgument(f"object key {key!r} collides with a key prefix") from None
        except OSError as exc:
            raise Unavailable(f"cannot write object {key!r} under {self.root}: {exc}") from None

    async def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """Read the key's file, or the range ``[start, end)`` of it."""
        path = self._path(key)
        first, end = check_range(start, end)
        try:
            return await self._run(_read_file, path, first, end)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"object {key!r} not found") from None
        except OSError as exc:
            raise Unavailable(f"cannot read object {key!r} under {self.root}: {exc}") from None

    async def exists(self, key: str) -> bool:
        """Return whether the key's file exists."""
        return await self._run(os.path.isfile, self._path(key))

    async def delete(self, key: str) -> None:
        """Unlink the key's file if present."""
        path = self._path(key)
        try:
            await self._run(_unlink_if_present, path)
        except OSError as exc:
            raise Unavailable(f"cannot delete object {key!r} under {self.root}: {exc}") from None

    async def list(self, prefix: str) -> AsyncIterator[str]:
        """Yield the keys starting with ``prefix``, sorted."""
        if ".." in prefix.split("/") or prefix.startswith("/"):
            raise InvalidArgument(f"invalid key prefix {prefix!r}")
        keys = await self._run(_list_keys, self.root, prefix)
        for key in keys:
            yield key

    async def list_stats(self, prefix: str) -> AsyncIterator[ObjectStat]:
        """Yield each key under ``prefix`` (sorted) with its size and modification time."""
        async for key in self.list(prefix):
            try:
                info = await self._run(os.stat, self._path(key))
            except FileNotFoundError:
                continue  # deleted since the listing
            yield ObjectStat(key, info.st_size, info.st_mtime)

    async def delete_many(self, keys: Sequence[str]) -> None:
        """Unlink each key's file if present."""
        for key in keys:
            await self.delete(key)

    async def close(self) -> None:
        """Stop the thread pool (waiting for running file operations)."""
        await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(self._pool.shutdown, wait=True)
        )


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _put_file(path: Path, data: bytes) -> None:
    directory = path.parent
    if not directory.is_dir():
        directory.mkdir(parents=True, exist_ok=True)
        # The new directory entry must itself be durable, or the renamed file can vanish.
        _fsync_dir(directory.parent)
    fd, temp_name = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            # fdatasync flushes the bytes and the size; the rest of the inode can wait.
            os.fdatasync(file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        _unlink_if_present(Path(temp_name))
        raise
    _fsync_dir(directory)


def _read_file(path: Path, start: int, end: int | None) -> bytes:
    with path.open("rb") as file:
        if start:
            file.seek(start)
        if end is None:
            return file.read()
        return file.read(end - start)


def _unlink_if_present(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _list_keys(root: Path, prefix: str) -> list[str]:
    # Walk only the deepest directory the prefix names; filter the rest by string prefix.
    directory_part = prefix.rpartition("/")[0]
    base = root / directory_part if directory_part else root
    keys = []
    for dirpath, _dirnames, filenames in os.walk(base):
        relative_dir = os.path.relpath(dirpath, root)
        for name in filenames:
            if name.startswith(_TEMP_PREFIX):
                continue
            key = name if relative_dir == "." else f"{relative_dir}/{name}"
            if key.startswith(prefix):
                keys.append(key)
    keys.sort()
    return keys
