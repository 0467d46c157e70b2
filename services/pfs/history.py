"""Taking a commit out of history (squash, delete) without breaking merge commits.

A commit has at most two parents: ``parent`` (the line it was made on) and
``second_parent`` (the line merged into it). When commit X leaves, every child that
named X in either slot gets X's own parents in its place, in order, so both lines a merge
joined stay reachable: the merge base of later merges and the "is this commit in the
branch's history" check of a revert still see them. If that would give a child three
distinct parents (X and the child are both merge commits, on different lines), the
removal is refused: dropping a line silently would make its commits vanish from history.
"""

from __future__ import annotations

from shared.platform.errors import FailedPrecondition

Parents = tuple[str | None, str | None]


def parents_without(child: str, parents: Parents, removed: str, replacement: Parents) -> Parents:
    """``child``'s (parent, second_parent) once ``removed``, whose own parents are
    ``replacement``, leaves history. ``FailedPrecondition`` when three would remain."""
    kept: list[str] = []
    for parent in parents:
        for name in replacement if parent == removed else (parent,):
            if name is not None and name not in kept:
                kept.append(name)
    if len(kept) > 2:
        raise FailedPrecondition(
            f"commit {removed} and its child {child} are both merge commits of different "
            f"lines: without {removed}, {child} would need three parents ({', '.join(kept)}); "
            "a commit has at most two parents, so it is kept"
        )
    return (kept[0] if kept else None, kept[1] if len(kept) > 1 else None)
