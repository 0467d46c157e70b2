"""mountd's read path without a mount: the chunks under a byte range, and blocks cut
from loaded parts copy only where a block spans two parts."""

from __future__ import annotations

import random

from services.mountd.files import ChunkMap, cut_blocks
from shared.storage.chunking import ChunkRef, FileEntry, slice_refs


def test_chunk_map_finds_the_same_parts_as_a_walk_of_every_chunk() -> None:
    rng = random.Random(1)
    refs = tuple(
        ChunkRef(f"{i:064x}", rng.randrange(0, 100), rng.randrange(1, 5000)) for i in range(300)
    )
    entry = FileEntry(sum(ref.length for ref in refs), "0" * 64, refs)
    chunk_map = ChunkMap(entry)
    for _ in range(500):
        start = rng.randrange(0, entry.size)
        end = rng.randrange(start, entry.size + 10)
        assert tuple(chunk_map.refs(start, end)) == slice_refs(entry, start, end)


def test_blocks_inside_one_part_are_views_and_only_spanning_blocks_are_copied() -> None:
    data = random.Random(2).randbytes(10_000)
    parts = [data[:4000], data[4000:10_000]]
    blocks = cut_blocks(parts, 1000)
    assert b"".join(bytes(block) for block in blocks) == data
    assert [len(block) for block in blocks] == [1000] * 10
    assert all(isinstance(block, memoryview) for block in blocks)  # 4000 and 6000 are block edges
    spanning = cut_blocks([data[:4500], data[4500:]], 1000)
    assert [type(block).__name__ for block in spanning].count("bytes") == 1
    assert b"".join(bytes(block) for block in spanning) == data
    assert cut_blocks([], 1000) == [b""]
