"""What a datum's ``/pfs/out`` holds, as the command left it, and storing it.

Read after the sandbox is gone, on the worker's side, without ever following a link
on the host: every symlink is resolved here, component by component, in the
*sandbox's* view of the file system, where ``/pfs/out`` is the datum's output
directory and ``/pfs/<name>`` is an input, known from the task's file entries
(``MountedInput``), not from disk. As in Pachyderm:

- a regular file is stored with its bytes;
- a symlink to a file of an input is stored as that file **by reference**: the same
  ``FileEntry`` (chunks) the task carries, no byte read or uploaded. That holds for
  ``empty_files`` inputs too, whose files the command saw empty: the link stores the
  real file (Pachyderm's "shuffle" example relies on it: it links fruit images into
  new folders without downloading one byte);
- a symlink to a directory of an input is that directory's whole subtree, by reference;
- a symlink to a file or directory inside ``/pfs/out`` is its target's content.

Relative targets (``../in/x``) resolve from the link's own directory, as the kernel
would. Anything else fails the datum, with one line naming the path: a symlink
leading outside the datum's inputs and ``/pfs/out`` (``/etc/passwd``, ``/tmp``,
``/``, ``/pfs``), a dangling symlink, a symlink loop (more than 40 hops, or a
directory link that contains itself), a FIFO, socket or device file, a name that is
not UTF-8, and a name PFS would refuse or that breaks line-oriented listings (see
``refused_name``). Nothing outside the datum's inputs and outputs is ever stored.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import stat
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from shared.api.names import normalize_path
from shared.platform.errors import Internal, InvalidArgument
from shared.storage.chunking import FileEntry, PackWriter
from shared.storage.file_entries import to_index_entry
from shared.storage.file_index import FileIndex
from shared.storage.objstore import ObjectStore

# Reads at least this big leave the event loop for a thread.
_THREAD_IO_MIN = 256 << 10
_READ_BLOCK = 1 << 20
# Symlinks followed while resolving one path before it counts as a loop (Linux: 40).
MAX_HOPS = 40
# Files reached through symlinked directories, at most: links to links can multiply a
# small tree without bound (each level doubling it), and a datum must not do that.
MAX_LINKED_FILES = 1_000_000
# Longest path component any Linux file system takes (NAME_MAX), and longest path (PATH_MAX).
_NAME_MAX = 255
_PATH_MAX = 4096
# Longest path shown in an error line, before its middle is cut.
_SHOWN_MAX = 200


@dataclass(frozen=True, slots=True)
class MountedInput:
    """One input as the command sees it at ``/pfs/<name>``: every file of the datum's
    parts of it, by path relative to ``/pfs/<name>`` (``a/b.txt``), sorted."""

    name: str
    files: Mapping[str, FileEntry]
    lazy: bool = False
    empty_files: bool = False
    _keys: list[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_keys", sorted(self.files))

    def entry(self, relative: str) -> FileEntry | None:
        """The stored file at ``relative`` (``empty_files`` or not: a link to it stores it)."""
        return self.files.get(relative)

    def is_dir(self, relative: str) -> bool:
        """Whether ``relative`` is a directory of this input ('' is its root)."""
        if not relative:
            return True
        prefix = relative + "/"
        at = bisect.bisect_left(self._keys, prefix)
        return at < len(self._keys) and self._keys[at].startswith(prefix)

    def under(self, relative: str) -> Iterator[tuple[str, FileEntry]]:
        """(path below ``relative`` with a leading '/', entry) of every file under it."""
        prefix = relative + "/" if relative else ""
        for key in self._keys[bisect.bisect_left(self._keys, prefix) :]:
            if not key.startswith(prefix):
                break
            entry = self.entry(key)
            assert entry is not None
            yield "/" + key[len(prefix) :], entry


Source = Path | FileEntry
"""Where an output file's content comes from: a host file under the output directory
(read and stored), or an input's entry (stored by reference)."""


class OutputProblem(NamedTuple):
    """Why ``/pfs/out`` cannot be stored: the index key it concerns and one line."""

    key: str
    line: str


@dataclass
class Gathered:
    """``/pfs/out`` as files to store, sorted by key, and the problems found instead."""

    files: list[tuple[str, Source]]
    problems: list[OutputProblem]


# -- names ------------------------------------------------------------------------------


def refused_name(key: str) -> str | None:
    """Why ``key`` (an output path like ``/a/b``) cannot be stored, or ``None``.

    PFS's own rule (``normalize_path``: no NUL, no ``.``/``..``, at most 4096 bytes),
    UTF-8 (index keys are text), no line breaks (every listing, ``tusk glob file`` and
    the logs are line-oriented, so such a name cannot be told apart from two) and no
    component longer than 255 bytes (no Linux file system could hold it, so a
    downstream pipeline could not materialise it).
    """
    try:
        encoded = key.encode()
    except UnicodeEncodeError:
        return "its name is not UTF-8"
    if "\n" in key or "\r" in key:
        return "its name contains a line break"
    if any(len(part) > _NAME_MAX for part in encoded.split(b"/")):
        return f"a component of its name is longer than {_NAME_MAX} bytes"
    try:
        normalize_path(key)
    except InvalidArgument as exc:
        return exc.message
    return None


def shown(path: str) -> str:
    """``path`` printable on one short line, whatever bytes its name holds."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    if len(text) <= _SHOWN_MAX:
        return text
    half = _SHOWN_MAX // 2
    return f"{text[:half]}...{text[-half:]}"


# -- resolving links in the sandbox's view ------------------------------------------------


class _Outside(NamedTuple):
    pass


class _Missing(NamedTuple):
    why: str


class _OutFile(NamedTuple):
    host: Path


class _OutDir(NamedTuple):
    host: Path


class _InputFile(NamedTuple):
    entry: FileEntry


class _InputDir(NamedTuple):
    input: MountedInput
    relative: str


_Resolved = _Outside | _Missing | _OutFile | _OutDir | _InputFile | _InputDir


class _Resolver:
    """Follows paths as the command would have, over the sandbox's view: ``/pfs/out``
    is ``out`` on the host (only ``lstat`` and ``readlink`` are used, each on a path
    whose directories are already known to be real directories), ``/pfs/<name>`` is
    the input's entries, and everything else is outside."""

    def __init__(self, out: Path, inputs: Mapping[str, MountedInput]) -> None:
        self.out = out
        self.inputs = inputs

    def resolve(self, link: Path) -> _Resolved:
        """Where the symlink ``link`` (a host path under ``out``) leads."""
        parent = ["pfs", "out", *link.parent.relative_to(self.out).parts]
        return self._walk(parent, os.readlink(link))

    def _walk(self, current: list[str], path: str) -> _Resolved:
        hops = 1
        if path.startswith("/"):
            current = []
        pending = deque(path.split("/"))
        while pending:
            part = pending.popleft()
            if part in ("", "."):
                continue
            if part == "..":
                if current:
                    current.pop()
                continue
            current.append(part)
            found = self._step(current, rest=any(pending))
            if isinstance(found, str):  # a symlink inside /pfs/out: follow it
                hops += 1
                if hops > MAX_HOPS:
                    return _Missing(f"more than {MAX_HOPS} symlinks deep (a loop)")
                current.pop()
                if found.startswith("/"):
                    current = []
                pending.extendleft(reversed(found.split("/")))
            elif found is not None:
                return found
        return self._final(current)

    def _step(self, current: list[str], *, rest: bool) -> _Resolved | str | None:
        """What ``current`` (no symlinks in its directories) is, one component at a time:
        a link's target to follow, ``None`` to go on (a directory), or an end."""
        if len(current) < 2:
            return None if current == ["pfs"] else _Outside()
        if current[0] != "pfs":
            return _Outside()
        name, relative = current[1], "/".join(current[2:])
        if name == "out":
            return self._step_out(self.out.joinpath(*current[2:]), rest=rest)
        mounted = self.inputs.get(name)
        if mounted is None:
            return _Outside()
        entry = mounted.entry(relative) if relative else None
        if entry is not None:
            return _Missing("a file is used as a directory") if rest else _InputFile(entry)
        return None if mounted.is_dir(relative) else _Missing("it does not exist")

    def _step_out(self, host: Path, *, rest: bool) -> _Resolved | str | None:
        try:
            mode = host.lstat().st_mode
        except FileNotFoundError:
            return _Missing("it does not exist")
        except NotADirectoryError:
            return _Missing("a file is used as a directory")
        if stat.S_ISLNK(mode):
            return os.readlink(host)
        if stat.S_ISDIR(mode):
            return None
        if rest:
            return _Missing("a file is used as a directory")
        if stat.S_ISREG(mode):
            return _OutFile(host)
        return _Missing("it is not a regular file")

    def _final(self, current: list[str]) -> _Resolved:
        # Only directories get here: '/', '/pfs', an input's or one inside /pfs/out.
        if len(current) < 2 or current[0] != "pfs":
            return _Outside()
        if current[1] == "out":
            return _OutDir(self.out.joinpath(*current[2:]))
        return _InputDir(self.inputs[current[1]], "/".join(current[2:]))


# -- gathering --------------------------------------------------------------------------


_Walk = list[tuple[Path, str, tuple[Path, ...]]]
"""Directories still to read: (host directory, its key, the directories walked into to
reach it, itself included). A directory link whose target is among them contains itself."""


class _Gatherer:
    def __init__(self, out: Path, inputs: Mapping[str, MountedInput]) -> None:
        self.out = out
        self.resolver = _Resolver(out, inputs)
        self.files: list[tuple[str, Source]] = []
        self.problems: list[OutputProblem] = []
        self.linked = 0

    def gather(self) -> Gathered:
        walk: _Walk = [(self.out, "", (self.out,))]
        while walk and self.linked <= MAX_LINKED_FILES:
            directory, prefix, active = walk.pop()
            try:
                with os.scandir(directory) as entries:
                    for item in entries:
                        self._visit(item, f"{prefix}/{item.name}", active, walk)
            except OSError as exc:  # the command made something the worker cannot read
                self._problem(prefix, f"cannot be read: {exc.strerror}")
        self.files.sort(key=lambda pair: pair[0])
        self.problems.sort()
        return Gathered(self.files, self.problems)

    def _problem(self, key: str, why: str) -> None:
        self.problems.append(OutputProblem(key, f"/pfs/out{shown(key)}: {why}"))

    def _visit(
        self, item: os.DirEntry[str], key: str, active: tuple[Path, ...], walk: _Walk
    ) -> None:
        refused = refused_name(key)
        if refused is not None:
            self._problem(key, refused)
        elif len(os.fsencode(item.path)) >= _PATH_MAX:
            # Deep trees made with relative paths: the worker could not open it by name.
            self._problem(key, "its path is too long for the worker to read")
        elif item.is_symlink():
            self._follow(Path(item.path), key, active, walk)
        elif item.is_file(follow_symlinks=False):
            self.files.append((key, Path(item.path)))
        elif item.is_dir(follow_symlinks=False):
            path = Path(item.path)
            walk.append((path, key, (*active, path)))
        else:
            mode = item.stat(follow_symlinks=False).st_mode
            self._problem(key, f"{_kind(mode)} is not a regular file")

    def _follow(self, link: Path, key: str, active: tuple[Path, ...], walk: _Walk) -> None:
        target = shown(os.readlink(link))
        found = self.resolver.resolve(link)
        if isinstance(found, _Outside):
            self._problem(key, f"symlink to {target}, outside the datum's inputs and /pfs/out")
        elif isinstance(found, _Missing):
            self._problem(key, f"symlink to {target}, which cannot be followed: {found.why}")
        elif isinstance(found, _OutFile):
            self.files.append((key, found.host))
        elif isinstance(found, _InputFile):
            self.files.append((key, found.entry))
        elif isinstance(found, _OutDir):
            if found.host in active:
                self._problem(key, f"symlink to {target} contains itself (a loop)")
            else:
                walk.append((found.host, key, (*active, found.host)))
                self._count_linked(key)
        else:
            for below, entry in found.input.under(found.relative):
                refused = refused_name(key + below)
                if refused is not None:
                    self._problem(key + below, refused)
                    return
                self.files.append((key + below, entry))
                if not self._count_linked(key):
                    return

    def _count_linked(self, key: str) -> bool:
        """Count one more file (or directory) reached through a link; ``False`` once past
        ``MAX_LINKED_FILES``, with the problem recorded."""
        self.linked += 1
        if self.linked <= MAX_LINKED_FILES:
            return True
        if self.linked == MAX_LINKED_FILES + 1:
            self._problem(
                key, f"more than {MAX_LINKED_FILES} files reached through symlinked directories"
            )
        return False


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    return "a special file"


def gather_output(out: Path, inputs: Mapping[str, MountedInput]) -> Gathered:
    """What to store of ``out`` (the host directory the command saw as ``/pfs/out``)."""
    return _Gatherer(out, inputs).gather()


# -- storing ----------------------------------------------------------------------------


class Stored(NamedTuple):
    """The stored output: index root (``None`` if empty), files, bytes, bytes uploaded."""

    root: str | None
    files: int
    size: int
    upload: int


NOTHING_STORED = Stored(None, 0, 0, 0)


async def store_output(
    store: ObjectStore, files: Sequence[tuple[str, Source]], index: FileIndex | None
) -> Stored:
    """Write the host files through one ``PackWriter`` (small outputs share chunks), keep
    input entries as they are, and index all of them in one ``FileIndex`` tree."""
    if not files:
        return NOTHING_STORED
    if len({key for key, _ in files}) != len(files):
        raise Internal("datum output: one path gathered twice")
    written, upload = await _write_host_files(
        store, [source for _, source in files if isinstance(source, Path)]
    )
    entries = _in_order(files, written)
    index = index if index is not None else FileIndex(store)
    root = await index.build(to_index_entry(key, entry) for key, entry in entries)
    return Stored(root, len(entries), sum(entry.size for _, entry in entries), upload)


async def _write_host_files(
    store: ObjectStore, paths: Sequence[Path]
) -> tuple[list[FileEntry], int]:
    if not paths:
        return [], 0
    async with PackWriter(store) as writer:
        for path in paths:
            writer.start_file()
            # O_NOFOLLOW: the gatherer found a regular file here; never read through a link.
            with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as source:
                if os.fstat(source.fileno()).st_size < _THREAD_IO_MIN:
                    # Read what is there, not what stat said: the file is ours now.
                    await writer.write(source.read())
                else:
                    while block := await asyncio.to_thread(source.read, _READ_BLOCK):
                        await writer.write(block)
            writer.end_file()
        entries = await writer.close()
    return entries, writer.bytes_written


def _in_order(
    files: Iterable[tuple[str, Source]], written: Sequence[FileEntry]
) -> list[tuple[str, FileEntry]]:
    """Every file with its entry: host files take the next written entry, in order."""
    pending = iter(written)
    return [(key, next(pending) if isinstance(source, Path) else source) for key, source in files]


__all__ = [
    "MAX_HOPS",
    "MAX_LINKED_FILES",
    "NOTHING_STORED",
    "Gathered",
    "MountedInput",
    "OutputProblem",
    "Source",
    "Stored",
    "gather_output",
    "refused_name",
    "shown",
    "store_output",
]
