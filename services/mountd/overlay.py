"""The changes a read-write mount shows on top of its base commit, until they are committed.

PFS cannot show an open commit's files, so a rw mount keeps its own record of what
changed since the base commit: files written locally, committed files shown under a
new name (renames), files deleted from the base (whiteouts) and directories made by
``mkdir`` or removed by ``rmdir``. Pure bookkeeping, no I/O; ``Mount`` pairs each change
with the PFS call that stages it in the open commit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from services.mountd.files import BaseFile, LocalFile

OverlayFile = LocalFile | BaseFile


def parent_of(path: str) -> str:
    head, _, _ = path.rpartition("/")
    return head or "/"


def ancestors(path: str) -> Iterator[str]:
    """The directories above ``path``, nearest first, ending with "/"."""
    while path != "/":
        path = parent_of(path)
        yield path


def join(directory: str, name: str) -> str:
    return f"/{name}" if directory == "/" else f"{directory}/{name}"


def is_under(path: str, directory: str) -> bool:
    return directory == "/" or path.startswith(directory + "/")


class Overlay:
    """Paths changed since the base commit: files, whiteouts, and directory changes."""

    def __init__(self) -> None:
        self.files: dict[str, OverlayFile] = {}
        self.whiteouts: set[str] = set()
        self.dirs: set[str] = set()
        self.removed_dirs: set[str] = set()
        # Directory → overlay files and explicit dirs beneath it: directories are implicit.
        self._beneath: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.files) + len(self.whiteouts) + len(self.dirs) + len(self.removed_dirs)

    def _count(self, path: str, delta: int) -> None:
        for directory in ancestors(path):
            self._beneath[directory] += delta
            if self._beneath[directory] <= 0:
                del self._beneath[directory]

    def put(self, path: str, file: OverlayFile) -> None:
        """Show ``file`` at ``path`` (replacing what was there)."""
        if path not in self.files:
            self._count(path, 1)
        self.files[path] = file
        self.whiteouts.discard(path)
        for directory in ancestors(path):
            self.removed_dirs.discard(directory)

    def remove(self, path: str) -> OverlayFile | None:
        """Hide the file at ``path``: a whiteout hides the base's copy, if it has one."""
        file = self.files.pop(path, None)
        if file is not None:
            self._count(path, -1)
        self.whiteouts.add(path)
        return file

    def mkdir(self, path: str) -> None:
        if path not in self.dirs:
            self.dirs.add(path)
            self._count(path, 1)
        self.removed_dirs.discard(path)
        for directory in ancestors(path):
            self.removed_dirs.discard(directory)

    def rmdir(self, path: str) -> None:
        """Hide the (empty) directory ``path``, made here or in the base."""
        if path in self.dirs:
            self.dirs.discard(path)
            self._count(path, -1)
        self.removed_dirs.add(path)

    def has_dir(self, path: str) -> bool:
        """Whether the overlay itself makes ``path`` a directory."""
        return path in self.dirs or self._beneath.get(path, 0) > 0

    def hides(self, path: str) -> bool:
        """Whether a base entry at ``path`` is hidden (deleted or replaced by a directory removal)."""
        return path in self.whiteouts or path in self.removed_dirs

    def children(self, directory: str) -> dict[str, OverlayFile | None]:
        """Names directly in ``directory``: a file, or None for a subdirectory."""
        found: dict[str, OverlayFile | None] = {}
        for path, file in self.files.items():
            if parent_of(path) == directory:
                found[path.rpartition("/")[2]] = file
        for path in self._beneath:
            if path != "/" and parent_of(path) == directory:
                found.setdefault(path.rpartition("/")[2], None)
        for path in self.dirs:
            if parent_of(path) == directory:
                found.setdefault(path.rpartition("/")[2], None)
        return found

    def files_under(self, directory: str) -> list[tuple[str, OverlayFile]]:
        return [(p, f) for p, f in self.files.items() if is_under(p, directory)]

    def pending_files(self) -> int:
        """Files written or moved that are not in a finished commit yet."""
        return len(self.files)

    def after_commit(self) -> list[LocalFile]:
        """Drop what the finished commit now holds; return the local files dropped.

        Kept: local files written since their last upload or still open for writing
        (they belong to the next commit) and empty directories (PFS has none).
        """
        dropped: list[LocalFile] = []
        for path, file in list(self.files.items()):
            if isinstance(file, LocalFile) and (file.dirty or file.writers):
                continue
            del self.files[path]
            self._count(path, -1)
            if isinstance(file, LocalFile):
                dropped.append(file)
        self.whiteouts.clear()
        self.removed_dirs.clear()
        return dropped
