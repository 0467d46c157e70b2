"""A commit's file index holds, for each path, its ``FileEntry`` as compact JSON.

One codec for every reader and writer of commit trees: PFS, the scheduler's
planner and assembly, and the workers that store datum outputs.
"""

from __future__ import annotations

import json

from shared.storage.chunking import FileEntry
from shared.storage.file_index import IndexEntry

_COMPACT = json.JSONEncoder(separators=(",", ":"))


def to_index_entry(path: str, entry: FileEntry) -> IndexEntry:
    return IndexEntry(path, encode_entry(entry), entry.size)


def encode_entry(entry: FileEntry) -> bytes:
    """``entry.to_json()`` as compact JSON, byte for byte what ``json.dumps`` writes.

    Hashes and chunk names are hex, which JSON writes as they are: formatted directly,
    that is ~3x faster than the JSON encoder, and a put of 10,000 small files encodes
    10,000 entries. Anything else (not alphanumeric ASCII) goes through the encoder.
    """
    file_hash = entry.hash
    if file_hash.isascii() and file_hash.isalnum():
        refs = []
        for ref in entry.chunks:
            chunk = ref.chunk
            if not (chunk.isascii() and chunk.isalnum()):
                break
            refs.append(f'["{chunk}",{ref.offset},{ref.length}]')
        else:
            chunks = ",".join(refs)
            return f'{{"size":{entry.size},"hash":"{file_hash}","chunks":[{chunks}]}}'.encode()
    return _COMPACT.encode(entry.to_json()).encode()


def from_index_entry(item: IndexEntry) -> FileEntry:
    return FileEntry.from_json(json.loads(item.value))


def dir_range(directory: str) -> tuple[str, str]:
    """The key range [start, end) of every path strictly under ``directory``."""
    if directory == "/":
        return "/", "0"  # '0' is the character after '/'
    return directory + "/", directory + "0"
