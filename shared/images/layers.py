"""Applying an image layer (a tar, plain, gzip or zstd) to a root directory.

A layer is untrusted input written to this machine's disk by a process that may run as
root, so every member is placed by resolving its path *inside* the root: ``..`` never
climbs out, and a symlink met on the way (a lower layer's ``/lib -> usr/lib``, or an
absolute ``/etc -> /host``) is followed as the sandbox will see it, relative to the root,
never on the host. A layer is read once (``unpack_layer``: its files into a directory of
their own, the rest as entries) and applied to any number of roots (``apply_entries``)
by hard links. Device nodes are skipped (an unprivileged sandbox cannot use them and
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
import tempfile
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


@dataclass(frozen=True, slots=True)
class Entry:
    """One member of a layer, as it will be applied: its cleaned path, its kind (``dir``,
    ``file``, ``symlink``, ``hardlink``, ``fifo``, ``whiteout``, ``opaque``, ``skip``),
    mode, link target and size. A ``file``'s bytes are in the layer's unpacked directory
    under the entry's number."""

    path: str
    kind: str
    mode: int = 0
    link: str = ""
    size: int = 0


def unpack_layer(stream: IO[bytes], files: Path) -> list[Entry]:
    """Read a layer once: each regular file's bytes into ``files/<number>``, every member
    as an ``Entry`` in tar order (what ``apply_entries`` needs, without the tar)."""
    files.mkdir(parents=True, exist_ok=True)
    entries: list[Entry] = []
    with _tar(stream) as archive:
        for member in archive:
            parts = _clean(member.name)
            if parts is None:
                continue  # the root itself ("./")
            path, mode = str(parts), member.mode & 0o1777  # no setuid/setgid
            if parts.name == OPAQUE:
                entries.append(Entry(path, "opaque"))
            elif parts.name.startswith(WHITEOUT):
                entries.append(Entry(path, "whiteout"))
            elif member.isdir():
                entries.append(Entry(path, "dir", mode))
            elif member.issym():
                entries.append(Entry(path, "symlink", link=member.linkname))
            elif member.islnk():
                link = _clean(member.linkname)
                if link is None:
                    raise _Escape(f"layer member {member.name!r} links to the root")
                entries.append(Entry(path, "hardlink", link=str(link)))
            elif member.isfifo():
                entries.append(Entry(path, "fifo", mode))
            elif member.isreg():
                data = archive.extractfile(member)
                assert data is not None
                target = files / str(len(entries))
                with open(target, "xb") as out:
                    shutil.copyfileobj(data, out, _COPY)
                os.chmod(target, mode | 0o400)
                entries.append(Entry(path, "file", mode, size=member.size))
            else:  # device nodes and the like
                entries.append(Entry(path, "skip"))
    return entries


def apply_entries(entries: list[Entry], files: Path, root: Path) -> LayerStats:
    """Apply an unpacked layer to ``root`` (which holds the lower layers). Regular files
    are hard links to ``files`` where the file system allows (one copy on disk however
    many roots hold the layer), copies where it does not."""
    stats = LayerStats()
    made: set[PurePosixPath] = set()
    for number, entry in enumerate(entries):
        parts = PurePosixPath(entry.path)
        parent = parts.parent
        if entry.kind == "opaque":
            _empty(resolve_in_root(root, parent), parent, made)
        elif entry.kind == "whiteout":
            _remove(resolve_in_root(root, parent) / parts.name.removeprefix(WHITEOUT))
        elif entry.kind == "skip":
            stats.skipped += 1
        else:
            _place(entry, files / str(number), root, parts, stats)
            made.add(parts)
    return stats


def apply_layer(stream: IO[bytes], root: Path, files: Path | None = None) -> LayerStats:
    """Unpack the layer from ``stream`` and apply it to ``root``; its files are kept in
    ``files`` (for other roots to link) or, without it, in a scratch directory removed
    after."""
    if files is not None:
        return apply_entries(unpack_layer(stream, files), files, root)
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=".layer-") as scratch:
        return apply_entries(unpack_layer(stream, Path(scratch)), Path(scratch), root)


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


def _place(entry: Entry, data: Path, root: Path, parts: PurePosixPath, stats: LayerStats) -> None:
    directory = resolve_in_root(root, parts.parent)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / parts.name
    if entry.kind == "dir":
        if not target.is_dir() or target.is_symlink():
            _remove(target)
            target.mkdir()
        # The owner keeps write access so later layers can change the directory.
        target.chmod(entry.mode | 0o700)
        return
    _remove(target)
    if entry.kind == "symlink":
        os.symlink(entry.link, target)
    elif entry.kind == "hardlink":
        link = PurePosixPath(entry.link)
        source = resolve_in_root(root, link.parent) / link.name
        if source.is_symlink() or not source.is_file():
            raise _Escape(f"layer member {entry.path!r} links to {entry.link!r}, "
                          "not a file of the image")  # fmt: skip
        os.link(source, target)
    elif entry.kind == "fifo":
        os.mkfifo(target, entry.mode)
    elif entry.kind == "file":
        try:
            os.link(data, target)
        except OSError:  # another file system, or too many links: a copy
            shutil.copy2(data, target)
        stats.files += 1
        stats.bytes += entry.size


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
