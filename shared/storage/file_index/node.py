"""Index nodes: the in-memory records and their canonical byte encoding.

A node is immutable and named by the BLAKE3-256 hex of its *plain* encoding (before
zstd), so a name never depends on the compressor's version and equal content always
has one name. Layout (little-endian), chosen so that encoding and decoding are a few
C-level ``struct``/``bytes.join`` calls per node instead of a Python loop per byte:

    header   u8 format version, u8 level, u32 n
    leaf     n×u32 key length, n×u32 value length, n×u64 size, keys blob, values blob
    internal n×u32 key length, n×u64 count, n×u64 size, n×32 raw child hashes, keys blob

Keys are UTF-8. In an internal node, item i describes child i: the child's last key,
its hash, and the number of entries and total file size in its subtree.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from itertools import accumulate

import blake3

from shared.platform.errors import Internal

FORMAT_VERSION = 1
_HEADER = struct.Struct("<BBI")
HASH_BYTES = 32
STORE_PREFIX = "index/"


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One file of a commit: its path, an opaque value (the file entry) and its size in bytes."""

    key: str
    value: bytes
    size: int


@dataclass(frozen=True, slots=True)
class ChildRef:
    """What a parent knows of one child: last key, hash and the subtree's aggregates."""

    last_key: str
    hash: str
    count: int
    size: int


@dataclass(frozen=True, slots=True)
class LeafNode:
    """Level 0: sorted entries. ``keys`` parallels ``entries`` for bisection."""

    keys: list[str]
    entries: list[IndexEntry]

    @property
    def level(self) -> int:
        """Leaves are level 0."""
        return 0


@dataclass(frozen=True, slots=True)
class InternalNode:
    """Level >= 1: sorted child references. ``keys`` are the children's last keys."""

    level: int
    keys: list[str]
    children: list[ChildRef]


Node = LeafNode | InternalNode


def node_hash(plain: bytes) -> str:
    """The name of a node: BLAKE3-256 hex of its plain encoding."""
    return blake3.blake3(plain).hexdigest()


def store_key(node_hash_hex: str) -> str:
    """Where a node lives in the object store."""
    return f"{STORE_PREFIX}{node_hash_hex[:2]}/{node_hash_hex}"


def encode_leaf(entries: list[IndexEntry]) -> bytes:
    """Canonical bytes of a leaf holding ``entries`` (already sorted)."""
    n = len(entries)
    keys = [e.key.encode() for e in entries]
    values = [e.value for e in entries]
    return b"".join(
        (
            _HEADER.pack(FORMAT_VERSION, 0, n),
            struct.pack(f"<{n}I", *map(len, keys)),
            struct.pack(f"<{n}I", *map(len, values)),
            struct.pack(f"<{n}Q", *[e.size for e in entries]),
            *keys,
            *values,
        )
    )


def encode_internal(level: int, children: list[ChildRef]) -> bytes:
    """Canonical bytes of an internal node at ``level`` over ``children``."""
    n = len(children)
    keys = [c.last_key.encode() for c in children]
    return b"".join(
        (
            _HEADER.pack(FORMAT_VERSION, level, n),
            struct.pack(f"<{n}I", *map(len, keys)),
            struct.pack(f"<{n}Q", *[c.count for c in children]),
            struct.pack(f"<{n}Q", *[c.size for c in children]),
            bytes.fromhex("".join([c.hash for c in children])),
            *keys,
        )
    )


def _split_keys(blob: bytes, lengths: tuple[int, ...]) -> list[str]:
    starts = accumulate(lengths, initial=0)
    text = blob.decode()
    if len(text) == len(blob):
        # ASCII (the common case): byte offsets are character offsets, slice the str.
        return [text[s : s + n] for s, n in zip(starts, lengths, strict=False)]
    return [blob[s : s + n].decode() for s, n in zip(starts, lengths, strict=False)]


def decode_node(plain: bytes) -> Node:
    """Parse a node's plain encoding; raise ``Internal`` if it is malformed."""
    try:
        version, level, n = _HEADER.unpack_from(plain, 0)
        if version != FORMAT_VERSION:
            raise Internal(f"index node has unknown format version {version}")
        off = _HEADER.size
        key_lens = struct.unpack_from(f"<{n}I", plain, off)
        off += 4 * n
        if level == 0:
            value_lens = struct.unpack_from(f"<{n}I", plain, off)
            off += 4 * n
            sizes = struct.unpack_from(f"<{n}Q", plain, off)
            off += 8 * n
            keys_end = off + sum(key_lens)
            keys = _split_keys(plain[off:keys_end], key_lens)
            starts = accumulate(value_lens, initial=keys_end)
            entries = [
                IndexEntry(k, plain[s : s + vn], size)
                for k, s, vn, size in zip(keys, starts, value_lens, sizes, strict=False)
            ]
            if keys_end + sum(value_lens) != len(plain):
                raise Internal("index leaf node has trailing or missing bytes")
            return LeafNode(keys, entries)
        counts = struct.unpack_from(f"<{n}Q", plain, off)
        off += 8 * n
        sizes = struct.unpack_from(f"<{n}Q", plain, off)
        off += 8 * n
        hashes = plain[off : off + HASH_BYTES * n].hex()
        off += HASH_BYTES * n
        keys = _split_keys(plain[off:], key_lens)
        if off + sum(key_lens) != len(plain):
            raise Internal("index internal node has trailing or missing bytes")
        children = [
            ChildRef(k, hashes[2 * HASH_BYTES * i : 2 * HASH_BYTES * (i + 1)], count, size)
            for i, (k, count, size) in enumerate(zip(keys, counts, sizes, strict=True))
        ]
        return InternalNode(level, keys, children)
    except (struct.error, UnicodeDecodeError) as exc:
        raise Internal(f"index node is malformed: {exc}") from None
