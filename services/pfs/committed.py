"""Committed files: reads of a finished commit's file index (get, list, glob, diff, stats).

A thin layer over ``shared.storage.file_index`` that speaks paths and ``FileInfo``
records; the index itself is path → JSON ``FileEntry``.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Sequence

from shared.api.pfs_models import FileChange, FileInfo
from shared.pipeline.glob import Glob, compile_glob
from shared.platform.errors import InvalidArgument, NotFound
from shared.storage.chunking import FileEntry
from shared.storage.file_entries import dir_range, from_index_entry, to_index_entry
from shared.storage.file_index import FileIndex, IndexEntry, list_dir, scan_prefix

Change = tuple[str, FileEntry | None]

# Glob tests run this many paths at a time away from the event loop (or between yields to
# it): each test is linear in its path, but a scan of a million paths is seconds of work.
GLOB_SLICE = 1024


def file_info(path: str, entry: FileEntry, commit: str | None) -> FileInfo:
    return FileInfo(
        path=path, type="file", size_bytes=entry.size, hash=entry.hash, file_count=1, commit=commit
    )


class CommittedFiles:
    """Path-level reads and writes of file indexes."""

    def __init__(self, index: FileIndex) -> None:
        self.index = index

    async def apply(self, root: str | None, changes: Sequence[Change]) -> str | None:
        """A new root with ``changes`` (sorted by path) applied to ``root``."""
        return await self.index.apply(
            root, [(p, to_index_entry(p, e) if e is not None else None) for p, e in changes]
        )

    async def totals(self, root: str | None) -> tuple[int, int]:
        """(file count, total bytes) of a whole commit."""
        return await self.index.stats(root)

    async def get_entry(self, root: str | None, path: str) -> FileEntry | None:
        item = await self.index.get(root, path)
        return from_index_entry(item) if item else None

    async def dir_stats(self, root: str | None, directory: str) -> tuple[int, int]:
        start, end = dir_range(directory)
        return await self.index.stats(root, start, end)

    async def inspect(self, root: str | None, path: str, commit: str | None) -> FileInfo:
        """A file's info, or a directory's (size and count of what it holds)."""
        if path != "/":
            entry = await self.get_entry(root, path)
            if entry is not None:
                return file_info(path, entry, commit)
        count, size = await self.dir_stats(root, path)
        if count == 0 and path != "/":
            raise NotFound(f"file {path} not found")
        return FileInfo(path=path, type="dir", size_bytes=size, file_count=count, commit=commit)

    async def require_file(self, root: str | None, path: str, where: str) -> FileEntry:
        entry = await self.get_entry(root, path) if path != "/" else None
        if entry is not None:
            return entry
        count, _ = await self.dir_stats(root, path)
        if count:
            raise InvalidArgument(f"{where}:{path} is a directory; use -r to get it recursively")
        raise NotFound(f"file {path} not found in {where}")

    async def files_under(
        self, root: str | None, path: str
    ) -> AsyncIterator[tuple[str, FileEntry]]:
        """The file at ``path`` or every file under the directory ``path``, in path order."""
        if path != "/":
            entry = await self.get_entry(root, path)
            if entry is not None:
                yield path, entry
                return
        start, end = dir_range(path)
        async for item in self.index.scan(root, start, end):
            yield item.key, from_index_entry(item)

    async def list_page(
        self, root: str | None, path: str, commit: str | None, *, after: str | None, limit: int
    ) -> tuple[list[FileInfo], str | None]:
        """One page of a directory's children (files and implicit dirs), or the file itself.

        ``after`` is the opaque cursor a previous page returned (the key to resume at).
        """
        if path != "/":
            entry = await self.get_entry(root, path)
            if entry is not None:
                return [file_info(path, entry, commit)], None
        base = "" if path == "/" else path
        start, end = dir_range(path)
        after = decode_cursor(after) if after is not None else None
        if after is not None and not (start <= after < end):
            raise InvalidArgument("paging cursor does not belong to this directory")
        out: list[FileInfo] = []
        cursor: str | None = None
        async for child in list_dir(self.index, root, path, start=after):
            if len(out) == limit:
                break
            child_path = f"{base}/{child.name}"
            if child.kind == "file" and child.entry is not None:
                out.append(file_info(child_path, from_index_entry(child.entry), commit))
                cursor = child_path + "\x00"  # the next key after this file
            else:
                out.append(
                    FileInfo(
                        child_path, "dir", child.size, None, file_count=child.count, commit=commit
                    )
                )
                cursor = dir_range(child_path)[1]  # the next key after everything under it
        else:
            cursor = None
        if not out and path != "/" and after is None:
            raise NotFound(f"file or directory {path} not found")
        return out, encode_cursor(cursor) if cursor is not None else None

    async def paths_page(
        self,
        root: str | None,
        prefix: str,
        commit: str | None,
        *,
        after: str | None,
        delimiter: str | None,
        limit: int,
    ) -> tuple[list[FileInfo], list[str], bool]:
        """Up to ``limit`` files and rolled-up prefixes whose paths start with the string
        ``prefix`` (not only a directory), after ``after``: S3's listing, O(page · log N).
        The last item (file path or prefix) of a truncated page is the next page's ``after``."""
        files: list[FileInfo] = []
        prefixes: list[str] = []
        truncated = False
        items = scan_prefix(self.index, root, prefix, after=after, delimiter=delimiter)
        try:
            async for item in items:
                if len(files) + len(prefixes) == limit:
                    truncated = True
                    break
                if isinstance(item, str):
                    prefixes.append(item)
                else:
                    files.append(file_info(item.key, from_index_entry(item), commit))
        finally:
            await items.aclose()
        return files, prefixes, truncated

    async def glob(self, root: str | None, pattern: str, commit: str | None) -> list[FileInfo]:
        """Files and directories matching a Pachyderm glob, in path order."""
        glob = compile_glob(pattern)
        if glob.pattern.strip("/") == "":
            return [await self.inspect(root, "/", commit)]
        matches: list[FileInfo] = []
        if glob.segmentable and None not in glob.segments:
            await self._walk(root, glob, "/", 0, commit, matches)
        else:
            await self._scan_match(root, glob, commit, matches)
        return matches

    async def _walk(
        self,
        root: str | None,
        glob: Glob,
        directory: str,
        depth: int,
        commit: str | None,
        out: list[FileInfo],
    ) -> None:
        # Walks only the directories the pattern can reach: cost grows with the matches.
        segment = glob.segments[depth]
        last = depth == len(glob.segments) - 1
        base = "" if directory == "/" else directory
        if isinstance(segment, str):
            path = f"{base}/{segment}"
            try:
                info = await self.inspect(root, path, commit)
            except NotFound:
                return
            if last:
                out.append(info)
            elif info.type == "dir":
                await self._walk(root, glob, path, depth + 1, commit, out)
            return
        assert segment is not None
        tested = 0
        async for child in list_dir(self.index, root, directory):
            tested += 1
            if tested % GLOB_SLICE == 0:
                await asyncio.sleep(0)  # let other requests run during a huge directory
            if not segment.match(child.name):
                continue
            path = f"{base}/{child.name}"
            if last:
                if child.kind == "file" and child.entry is not None:
                    out.append(file_info(path, from_index_entry(child.entry), commit))
                else:
                    out.append(FileInfo(path, "dir", child.size, None, child.count, commit))
            elif child.kind == "dir":
                await self._walk(root, glob, path, depth + 1, commit, out)

    async def _scan_match(
        self, root: str | None, glob: Glob, commit: str | None, out: list[FileInfo]
    ) -> None:
        # '**' patterns: scan under the literal prefix, testing each file and its directories,
        # a slice at a time in a worker thread so the event loop keeps serving meanwhile.
        start, end = dir_range(glob.literal_prefix)
        seen_dirs: set[str] = set()
        batch: list[IndexEntry] = []
        async for item in self.index.scan(root, start, end):
            batch.append(item)
            if len(batch) == GLOB_SLICE:
                await self._collect_matches(root, glob, commit, batch, seen_dirs, out)
                batch = []
        await self._collect_matches(root, glob, commit, batch, seen_dirs, out)
        out.sort(key=lambda f: f.path)

    async def _collect_matches(
        self,
        root: str | None,
        glob: Glob,
        commit: str | None,
        items: list[IndexEntry],
        seen_dirs: set[str],
        out: list[FileInfo],
    ) -> None:
        if not items:
            return
        dirs, files = await asyncio.to_thread(_glob_slice, glob, items, seen_dirs)
        for d in dirs:
            out.append(await self.inspect(root, d, commit))
        out.extend(file_info(item.key, from_index_entry(item), commit) for item in files)

    async def diff(
        self, old_root: str | None, new_root: str | None, path: str, old_path: str | None = None
    ) -> list[FileChange]:
        """What changed from ``old_root`` to ``new_root`` under ``path`` (equal subtrees skipped)."""
        if old_path is not None and old_path != path:
            return await self._diff_moved(old_root, new_root, path, old_path)
        start, end = dir_range(path) if path != "/" else ("", None)
        changes: list[FileChange] = []
        if path != "/":
            # The path itself may be a file.
            old_e = await self.get_entry(old_root, path)
            new_e = await self.get_entry(new_root, path)
            change = _change(path, old_e, new_e)
            if change:
                changes.append(change)
        async for key, old, new in self.index.diff(old_root, new_root, start, end):
            change = _change(
                key,
                from_index_entry(old) if old else None,
                from_index_entry(new) if new else None,
            )
            if change:
                changes.append(change)
        return changes

    async def _diff_moved(
        self, old_root: str | None, new_root: str | None, path: str, old_path: str
    ) -> list[FileChange]:
        # Different paths on each side (pachctl diff file A:/x B:/y): compare by relative name.
        old_files = {
            k[len(old_path) :] or "": e async for k, e in self.files_under(old_root, old_path)
        }
        new_files = {k[len(path) :] or "": e async for k, e in self.files_under(new_root, path)}
        changes = []
        for rel in sorted(set(old_files) | set(new_files)):
            change = _change(path + rel, old_files.get(rel), new_files.get(rel))
            if change:
                changes.append(change)
        return changes


def _glob_slice(
    glob: Glob, items: list[IndexEntry], seen_dirs: set[str]
) -> tuple[list[str], list[IndexEntry]]:
    """The directories (not in ``seen_dirs``, which grows) and files of ``items`` that
    ``glob`` matches. Pure, so it can run in a worker thread."""
    dirs: list[str] = []
    files: list[IndexEntry] = []
    for item in items:
        parts = item.key.split("/")
        for i in range(2, len(parts)):
            d = "/".join(parts[:i])
            if d not in seen_dirs:
                seen_dirs.add(d)
                if glob.match(d):
                    dirs.append(d)
        if glob.match(item.key):
            files.append(item)
    return dirs, files


def _change(path: str, old: FileEntry | None, new: FileEntry | None) -> FileChange | None:
    if old is None and new is None:
        return None
    if old is not None and new is not None:
        if old.hash == new.hash and old.size == new.size:
            return None
        return FileChange(path, "modified", file_info(path, old, None), file_info(path, new, None))
    if new is not None:
        return FileChange(path, "added", None, file_info(path, new, None))
    assert old is not None
    return FileChange(path, "deleted", file_info(path, old, None), None)


def encode_cursor(key: str) -> str:
    """A paging cursor as clients carry it: the resume key, base64url without padding.

    The key itself may hold a NUL (the key right after a file's path), which no request
    may carry, so clients get it encoded and hand it back unchanged.
    """
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The resume key of a cursor ``encode_cursor`` made; anything else is refused."""
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument("paging cursor is not one this service returned") from None
