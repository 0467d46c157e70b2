"""The pure core of the tree: a streaming builder that cuts sorted entries into nodes.

No I/O happens here. Entries go in at level 0; a node closes *after* an item whose
boundary hash falls under ``2**64 / fanout``, or when it reaches the hard limits;
closing a node pushes a ``ChildRef`` one level up, where the same rule applies.
Closed nodes wait in ``pending`` until the caller writes them.

Boundary hashes:
- leaf level: xxh3-64 of the entry's key (seed 0) — the value is not hashed, so
  editing a file's content never moves a boundary;
- level L >= 1: xxh3-64 of the child's last key with seed L, so a key that ends a
  leaf is not thereby more likely to end its parent (the levels are independent).

Hard limits keep pathological inputs bounded: a node closes at ``max_items`` items,
and a leaf also once its keys and values exceed ``max_bytes``. These forced cuts
depend only on the items since the previous cut, so the shape is still a pure
function of the content.

Reuse (what makes ``apply`` cost O(k log N)): pushing an unchanged old node N at level
h via ``add_child(h + 1, ref)`` is equivalent to re-adding all of N's entries when
``empty_below(h + 1)`` holds (the lower levels are at a cut, as they were when N was
built) and N ended at a real cut rather than at the end of the old data; the caller
checks the latter.
"""

from __future__ import annotations

from xxhash import xxh3_64_intdigest

from shared.platform.errors import InvalidArgument
from shared.storage.file_index.node import (
    ChildRef,
    IndexEntry,
    InternalNode,
    LeafNode,
    Node,
    encode_internal,
    encode_leaf,
    node_hash,
)


class TreeBuilder:
    """Streams strictly increasing entries (and reused subtrees) into immutable nodes."""

    def __init__(self, *, fanout: int, max_items: int, max_bytes: int) -> None:
        if fanout < 2 or max_items < 2:
            raise InvalidArgument("index fanout and max node items must be at least 2")
        self._threshold = (1 << 64) // fanout
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._leaf: list[IndexEntry] = []
        self._leaf_bytes = 0
        # _levels[L] holds the open node of level L >= 1; index 0 is unused.
        self._levels: list[list[ChildRef]] = [[]]
        self._last_key: str | None = None
        self.pending: dict[str, tuple[bytes, Node]] = {}
        """Closed nodes not yet handed to the writer: hash → (plain bytes, decoded node)."""

    def add_entry(self, entry: IndexEntry) -> None:
        """Append an entry; its key must be greater than every key added so far."""
        key = entry.key
        if self._last_key is not None and key <= self._last_key:
            raise InvalidArgument(
                f"index keys must be sorted and unique: {key!r} after {self._last_key!r}"
            )
        if entry.size < 0:
            raise InvalidArgument(f"index entry {key!r} has a negative size {entry.size}")
        self._last_key = key
        leaf = self._leaf
        leaf.append(entry)
        self._leaf_bytes += len(key) + len(entry.value)
        if (
            xxh3_64_intdigest(key.encode()) < self._threshold
            or len(leaf) >= self._max_items
            or self._leaf_bytes >= self._max_bytes
        ):
            self._close_leaf()

    def add_leaf_run(self, entries: list[IndexEntry]) -> None:
        """Append consecutive entries of one old leaf, excluding its last.

        Those keys cannot be natural cuts (the leaf would have closed there), so only
        the item and byte caps need checking, and a run is appended in one step.
        """
        if not entries:
            return
        first = entries[0].key
        if self._last_key is not None and first <= self._last_key:
            raise InvalidArgument(
                f"index keys must be sorted and unique: {first!r} after {self._last_key!r}"
            )
        run_bytes = sum([len(e.key) + len(e.value) for e in entries])
        leaf = self._leaf
        if (
            len(leaf) + len(entries) < self._max_items
            and self._leaf_bytes + run_bytes < self._max_bytes
        ):
            leaf.extend(entries)
            self._leaf_bytes += run_bytes
            self._last_key = entries[-1].key
        else:
            for entry in entries:
                self.add_entry(entry)

    def add_child(self, level: int, ref: ChildRef) -> None:
        """Append a finished subtree (a node of ``level - 1``) to the open node of ``level``."""
        if self._last_key is not None and ref.last_key <= self._last_key:
            raise InvalidArgument(
                f"index keys must be sorted and unique: {ref.last_key!r} after {self._last_key!r}"
            )
        self._last_key = ref.last_key
        self._push(level, ref)

    def add_siblings(self, level: int, refs: list[ChildRef]) -> None:
        """Append consecutive children of one old node of ``level``, excluding its last.

        Those children cannot be natural cuts (the node would have closed there), so
        only the item cap needs checking, and a run is appended in one step.
        """
        if not refs:
            return
        if self._last_key is not None and refs[0].last_key <= self._last_key:
            raise InvalidArgument(
                f"index keys must be sorted and unique: {refs[0].last_key!r} after "
                f"{self._last_key!r}"
            )
        while len(self._levels) <= level:
            self._levels.append([])
        items = self._levels[level]
        if len(items) + len(refs) < self._max_items:
            items.extend(refs)
            self._last_key = refs[-1].last_key
        else:
            for ref in refs:
                self.add_child(level, ref)

    def empty_below(self, level: int) -> bool:
        """True when every level under ``level`` is at a cut (no open items)."""
        if self._leaf:
            return False
        return not any(self._levels[1:level])

    def finish(self) -> str | None:
        """Close every open node and return the root hash (``None`` for an empty tree).

        An internal root with one child is replaced by that child, repeatedly: the
        canonical root is the lowest node holding everything. (``FileIndex`` finishes
        the collapse for a root that is a reused old node, which is not in ``pending``.)
        """
        if self._leaf:
            self._close_leaf()
        root: str | None = None
        level = 1
        while level < len(self._levels):
            items = self._levels[level]
            top = not any(self._levels[level + 1 :])
            if top and len(items) == 1:
                root = items[0].hash
                break
            if items:
                self._close_internal(level)
            level += 1
        while root is not None and root in self.pending:
            node = self.pending[root][1]
            if not isinstance(node, InternalNode) or len(node.children) != 1:
                break
            del self.pending[root]
            root = node.children[0].hash
        return root

    def _close_leaf(self) -> None:
        entries = self._leaf
        self._leaf = []
        self._leaf_bytes = 0
        plain = encode_leaf(entries)
        digest = node_hash(plain)
        self.pending[digest] = (plain, LeafNode([e.key for e in entries], entries))
        self._push(1, ChildRef(entries[-1].key, digest, len(entries), sum(e.size for e in entries)))

    def _push(self, level: int, ref: ChildRef) -> None:
        while len(self._levels) <= level:
            self._levels.append([])
        items = self._levels[level]
        items.append(ref)
        if (
            xxh3_64_intdigest(ref.last_key.encode(), level) < self._threshold
            or len(items) >= self._max_items
        ):
            self._close_internal(level)

    def _close_internal(self, level: int) -> None:
        children = self._levels[level]
        self._levels[level] = []
        plain = encode_internal(level, children)
        digest = node_hash(plain)
        node = InternalNode(level, [c.last_key for c in children], children)
        self.pending[digest] = (plain, node)
        self._push(
            level + 1,
            ChildRef(
                children[-1].last_key,
                digest,
                sum(c.count for c in children),
                sum(c.size for c in children),
            ),
        )
