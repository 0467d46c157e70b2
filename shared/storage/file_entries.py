"""A commit's file index holds, for each path, its ``FileEntry`` as compact JSON.

One codec for every reader and writer of commit trees: PFS, the scheduler's
planner and assembly, and the workers that store datum outputs.
"""

from __future__ import annotations

import json

from shared.storage.chunking import FileEntry
from shared.storage.file_index import IndexEntry


def to_index_entry(path: str, entry: FileEntry) -> IndexEntry:
    return IndexEntry(path, json.dumps(entry.to_json(), separators=(",", ":")).encode(), entry.size)


def from_index_entry(item: IndexEntry) -> FileEntry:
    return FileEntry.from_json(json.loads(item.value))


def dir_range(directory: str) -> tuple[str, str]:
    """The key range [start, end) of every path strictly under ``directory``."""
    if directory == "/":
        return "/", "0"  # '0' is the character after '/'
    return directory + "/", directory + "0"
