"""The file-index codec writes exactly what the JSON encoder would (issue #12).

Index nodes are content-addressed: an entry encoded any other way would give the same
tree a different hash. ``encode_entry`` formats hex names directly for speed, so it is
checked byte for byte against ``json.dumps``, including the entries it must hand back
to the encoder.
"""

from __future__ import annotations

import json

import pytest

from shared.storage.chunking import EMPTY_FILE, ChunkRef, FileEntry
from shared.storage.file_entries import encode_entry, from_index_entry, to_index_entry

HEX = "0123456789abcdef" * 4


@pytest.mark.parametrize(
    "entry",
    [
        FileEntry(1024, HEX, (ChunkRef(HEX[::-1], 12345, 1024),)),
        FileEntry(10, HEX, (ChunkRef(HEX, 0, 4), ChunkRef(HEX[::-1], 7, 6))),
        EMPTY_FILE,
        FileEntry(3, 'quote"d', (ChunkRef("back\\slash", 0, 3),)),
        FileEntry(3, HEX, (ChunkRef("\u00e9t\u00e9", 0, 3),)),
        FileEntry(3, HEX, (ChunkRef("line\nbreak", 0, 3),)),
        FileEntry(3, "\u0661\u0662", (ChunkRef(HEX, 0, 3),)),  # digits, but not ASCII
    ],
    ids=["one chunk", "two chunks", "empty", "escapes", "non-ascii", "control", "arabic digits"],
)
def test_entries_encode_byte_for_byte_as_json_dumps(entry: FileEntry) -> None:
    expected = json.dumps(entry.to_json(), separators=(",", ":")).encode()
    assert encode_entry(entry) == expected
    assert from_index_entry(to_index_entry("/p", entry)) == entry
