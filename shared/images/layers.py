"""Applying an image layer (a tar, plain, gzip or zstd) to a root directory.

A layer is untrusted input written to this machine's disk by a process that may run as
root, so every member is placed by resolving its path *inside* the root: ``..`` never
climbs out, and a symlink met on the way (a lower layer's ``/lib -> usr/lib``, or an
absolute ``/etc -> /host``) is followed as the sandbox will see it, relative to the root,
never on the host. Device nodes are skipped (an unprivileged sandbox cannot use them and
a root one must not get them); setuid and setgid bits are dropped (the root lies on the
host's disk, owned by whoever pulled it). Whiteouts follow the OCI image spec:
``.wh.NAME`` removes ``NAME`` of the lower layers, ``.wh..wh..opq`` empties its
directory of what the lower layers put there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

import zstandard

from shared.platform.errors import InvalidArgument

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_GZIP = b"\x1f\x8b"
_ZSTD = b"\x28\xb5\x2f\xfd"
_MAX_LINKS = 40
_COPY = 1 << 20


@dataclass
class LayerStats:
    files: int = 0
    bytes: int = 0
    skipped: int = 0  # device nodes and other members not made


class _Escape(InvalidArgument):
    pass


def apply_layer(stream: IO[bytes], root: Path) -> LayerStats:
    """Apply the layer read from ``stream`` to ``root`` (which holds the lower layers)."""
    stats = LayerStats()
    made: set[PurePosixPath] = set()
    with _tar(stream) as archive:
        for member in archive:
            parts = _clean(member.name)
            if parts is None:
                continue  # the root itself ("./")
            name = parts.name
            parent = parts.parent
            if name == OPAQUE:
                _empty(resolve_in_root(root, parent), parent, made)
            elif name.startswith(WHITEOUT):
                gone = parent / name.removeprefix(WHITEOUT)
                _remove(resolve_in_root(root, parent) / gone.name)
            else:
                _place(archive, member, root, parts, stats)
                made.add(parts)
    return stats


def _tar(stream: IO[bytes]) -> tarfile.TarFile:
    head = stream.read(4)
    source: Any = _Prefixed(head, stream)
    if head.startswith(_ZSTD):
        source = zstandard.ZstdDecompressor().stream_reader(source)
    try:
        return tarfile.open(fileobj=source, mode="r|gz" if head.startswith(_GZIP) else "r|")
    except tarfile.TarError as exc:
        raise InvalidArgument(f"layer is not a tar archive: {exc}") from None


def _clean(name: str) -> PurePosixPath | None:
    """The member's path relative to the root; ``..`` that would leave it is refused."""
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise _Escape(f"layer member {name!r} points outside the image root")
            parts.pop()
        else:
            parts.append(part)
    return PurePosixPath(*parts) if parts else None


def resolve_in_root(root: Path, relative: PurePosixPath, depth: int = 0) -> Path:
    """The host path of directory ``relative`` in ``root``, following symlinks as the
    sandbox would see them (relative to ``root``, never leaving it)."""
    current = PurePosixPath()
    pending = list(relative.parts)
    links = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            current = current.parent
            continue
        candidate = root.joinpath(*current.parts, part)
        if candidate.is_symlink():
            links += 1
            if links > _MAX_LINKS:
                raise _Escape(f"too many symlinks under {relative}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = PurePosixPath()
            pending = [p for p in target.split("/") if p not in ("", ".")] + pending
            continue
        current = current / part
    return root.joinpath(*current.parts)


def _place(
    archive: tarfile.TarFile, member: tarfile.TarInfo, root: Path, parts: PurePosixPath,
    stats: LayerStats,
) -> None:  # fmt: skip
    if member.ischr() or member.isblk():
        stats.skipped += 1
        return
    directory = resolve_in_root(root, parts.parent)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / parts.name
    mode = member.mode & 0o1777  # no setuid/setgid
    if member.isdir():
        if not target.is_dir() or target.is_symlink():
            _remove(target)
            target.mkdir()
        # The owner keeps write access so later layers can change the directory.
        target.chmod(mode | 0o700)
        return
    _remove(target)
    if member.issym():
        os.symlink(member.linkname, target)
    elif member.islnk():
        link = _clean(member.linkname)
        if link is None:
            raise _Escape(f"layer member {member.name!r} links to the root")
        source = resolve_in_root(root, link.parent) / link.name
        if source.is_symlink() or not source.is_file():
            raise _Escape(f"layer member {member.name!r} links to {member.linkname!r}, "
                          "not a file of the image")  # fmt: skip
        os.link(source, target)
    elif member.isfifo():
        os.mkfifo(target, mode)
    elif member.isreg():
        data = archive.extractfile(member)
        assert data is not None
        with open(target, "xb") as out:
            shutil.copyfileobj(data, out, _COPY)
        os.chmod(target, mode | 0o400)
        stats.files += 1
        stats.bytes += member.size
    else:
        stats.skipped += 1


def _remove(path: Path) -> None:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        _writable_tree(path)
        shutil.rmtree(path)
    else:
        path.unlink()


def _empty(directory: Path, relative: PurePosixPath, made: set[PurePosixPath]) -> None:
    """Remove what lower layers put in ``directory``, keeping what this layer made."""
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        if relative / entry.name not in made:
            _remove(entry)


def _writable_tree(path: Path) -> None:
    # A lower layer's read-only directory must become writable before rmtree empties it.
    for current, dirs, _ in os.walk(path):
        for name in dirs:
            with contextlib.suppress(OSError):
                child = Path(current) / name
                if not child.is_symlink():
                    child.chmod(child.stat().st_mode | 0o700)
    with contextlib.suppress(OSError):
        path.chmod(path.stat().st_mode | 0o700)


class _Prefixed:
    """A stream with bytes already read put back in front (for sniffing compression)."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = head
        self._rest = rest

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size < 0:
                data, self._head = self._head + self._rest.read(), b""
                return data
            data, self._head = self._head[:size], self._head[size:]
            if len(data) < size:
                data += self._rest.read(size - len(data))
            return data
        return self._rest.read(size)
