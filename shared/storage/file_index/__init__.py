"""The file index: a commit's files as a content-addressed prolly tree.

A commit's files are a sorted map path → ``IndexEntry`` (opaque value bytes — PFS
stores its JSON file entry there — and the file's size). The map is stored as a
B-tree-like tree of immutable nodes in the object store, whose node boundaries are
chosen by content (a "prolly tree", as in Dolt; lakeFS' ranges are the same idea):

- **Boundaries** (``builder``): a leaf ends after an entry whose *key* hashes
  (xxh3-64) under ``2**64 / fanout``; a level-L node ends after a child whose last
  key hashes under the same threshold with seed L. The value is not hashed, so
  editing a file never moves a boundary. Hard caps (``8 × fanout`` items, 1 MiB of
  leaf keys+values) bound pathological inputs. A root with one child is replaced by
  that child. So the tree's shape is a pure function of its contents (history
  independence): building from scratch and applying changes give the same root.
  ``fanout`` and the caps are part of the format: modify a tree with the settings
  it was built with, or the result is correct but no longer canonical.
- **Nodes** (``node``): a compact binary layout, named by BLAKE3-256 hex of those
  plain bytes, stored zstd-compressed at ``index/<first 2 hex>/<hash>``, written
  only if not already present. Internal nodes keep each child's last key, hash,
  entry count and total size, so range counts and sizes cost O(log N).
- **Apply** (``FileIndex.apply``): a streaming rebuild over the old tree that pushes
  an unchanged old subtree by reference whenever the levels below are at a cut and
  the subtree ended at a real cut (not at the end of the old data), so k changes
  into N entries read and write O(k log N) nodes. Runs of unchanged siblings (and
  of leaf entries) go in as one slice: only a node's last item can be a natural cut.
  Writes start as soon as a node closes, run concurrently, and are shared between
  operations writing the same node; a node is cached only once it is stored, so a
  returned root is always fully readable.
- **Diff** (``diff``): one sorted walk over both trees dropping subtrees whose
  hashes match: O(k log N) node reads for k differing keys.
- **Reads**: an LRU cache of decoded nodes, bounded in bytes (nodes never change,
  so a cached node is always valid); concurrent reads of one node are fetched once;
  a scan reads ahead the next leaves of its range; every fetched node is checked
  against its hash.
- **Listing** (``listing``): directories are implicit; ``list_dir`` seeks past each
  subdirectory and sizes it with ``stats``; ``scan_prefix`` lists keys by string prefix
  and delimiter (S3's listing) and seeks past each rolled-up range.

Keys are sorted by Python ``str`` order, which equals UTF-8 byte order.
"""

from shared.storage.file_index.listing import (
    DirChild,
    dir_prefix,
    key_successor,
    list_dir,
    scan_prefix,
)
from shared.storage.file_index.node import IndexEntry
from shared.storage.file_index.tree import Change, FileIndex

__all__ = [
    "Change",
    "DirChild",
    "FileIndex",
    "IndexEntry",
    "dir_prefix",
    "key_successor",
    "list_dir",
    "scan_prefix",
]
