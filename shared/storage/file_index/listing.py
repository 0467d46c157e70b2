"""Directory listings over the flat path index: directories are implicit in the keys.

The children of directory ``/a`` are the keys in ``["/a/", "/a0")`` ('0' is the
character after '/'). A key ``/a/x`` is a file child; a key ``/a/d/...`` makes ``d``
a directory child, whose size and file count come from ``FileIndex.stats`` on
``["/a/d/", "/a/d0")`` — and the listing then seeks past that whole range instead
of reading it, so a directory of D subdirectories costs O(D log N) node visits no
matter how many files lie below them.

Keys must be normalized paths (``shared.api.names.normalize_path``). Children come in
key order; a directory sorts where its first descendant does (``b.txt`` < ``b/``
because '.' < '/').
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Literal

from shared.storage.file_index.node import IndexEntry
from shared.storage.file_index.tree import FileIndex


@dataclass(frozen=True, slots=True)
class DirChild:
    """One child of a listed directory: a file (with its entry) or an implicit directory."""

    name: str
    kind: Literal["file", "dir"]
    entry: IndexEntry | None
    size: int
    count: int  # files below (1 for a file)


def dir_prefix(dir_path: str) -> tuple[str, str]:
    """The key range ``[prefix, end)`` holding everything under ``dir_path``."""
    prefix = dir_path.rstrip("/") + "/"
    return prefix, prefix[:-1] + "0"


async def list_dir(
    index: FileIndex, root: str | None, dir_path: str, *, start: str | None = None
) -> AsyncGenerator[DirChild, None]:
    """Yield the direct children of ``dir_path`` ("/" is the top) in tree ``root``.

    ``start`` resumes a paged listing at that key (a child's key, or the end of a
    child directory's range).
    """
    prefix, end = dir_prefix(dir_path)
    cursor = max(prefix, start) if start else prefix
    while True:
        entries = index.scan(root, cursor, end, read_ahead=0)
        try:
            async for entry in entries:
                rest = entry.key[len(prefix) :]
                slash = rest.find("/")
                if slash < 0:
                    yield DirChild(rest, "file", entry, entry.size, 1)
                    continue
                name = rest[:slash]
                sub_prefix, sub_end = dir_prefix(prefix + name)
                count, size = await index.stats(root, sub_prefix, sub_end)
                yield DirChild(name, "dir", None, size, count)
                cursor = sub_end
                break
            else:
                return
        finally:
            await entries.aclose()


def key_successor(prefix: str) -> str | None:
    """The least key greater than every key that starts with ``prefix`` (None: no bound)."""
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            return prefix[:-1] + chr(last + 1)
        prefix = prefix[:-1]
    return None


async def scan_prefix(
    index: FileIndex,
    root: str | None,
    prefix: str,
    *,
    after: str | None = None,
    delimiter: str | None = None,
) -> AsyncGenerator[IndexEntry | str, None]:
    """Yield the keys starting with ``prefix`` after ``after``, in key order, as S3 lists
    them: with a ``delimiter``, every key whose rest (past the prefix) holds it is rolled
    up into one common prefix (a ``str``, ending with the delimiter), and the scan seeks
    past that whole range — a page costs O(page · log N) node visits wherever it starts.

    ``after`` is exclusive; inside a rolled-up range it resumes past the whole range (that
    common prefix was already yielded).
    """
    end = key_successor(prefix)
    cursor = prefix
    if after is not None and after >= prefix:
        cursor = after + "\x00"  # the least key after ``after``
        rest = after[len(prefix) :] if after.startswith(prefix) else ""
        cut = rest.find(delimiter) if delimiter else -1
        if delimiter and cut >= 0:
            skip = key_successor(prefix + rest[: cut + len(delimiter)])
            if skip is None:
                return
            cursor = skip
    while end is None or cursor < end:
        entries = index.scan(root, cursor, end, read_ahead=0)
        try:
            async for entry in entries:
                rest = entry.key[len(prefix) :]
                cut = rest.find(delimiter) if delimiter else -1
                if not delimiter or cut < 0:
                    yield entry
                    continue
                common = prefix + rest[: cut + len(delimiter)]
                yield common
                skip = key_successor(common)
                if skip is None:
                    return
                cursor = skip
                break
            else:
                return
        finally:
            await entries.aclose()
