"""Output-commit assembly: the union of the datums' outputs, applied as a change.

The output commit starts from the output branch's head — the outputs of the
pipeline's current datums. A job replaces the outputs of the datums it ran or
that vanished, and nothing else, so assembly costs O(the outputs that changed).
Two datums writing one path fail the job, and the error names the path and both
datum ids (Pachyderm names neither).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from shared.storage.chunking import FileEntry
from shared.storage.file_entries import from_index_entry
from shared.storage.file_index import FileIndex

OutputChanges = dict[str, FileEntry | None]


@dataclass(frozen=True)
class DatumOutcome:
    """A processed datum as the results recorded it."""

    id: str
    hash: str
    state: str
    output_root: str | None
    error: str | None = None


@dataclass
class Assembly:
    """The change to the output commit and the bookkeeping that goes with it."""

    changes: OutputChanges = field(default_factory=dict)
    new_paths: dict[str, str] = field(default_factory=dict)  # path → datum id
    conflict: str | None = None


async def assemble(
    index: FileIndex,
    processed: Sequence[DatumOutcome],
    removed: Sequence[str],
    old_outputs: Mapping[str, str | None],
) -> Assembly:
    """Changes that drop the old outputs of ``processed`` + ``removed`` and add the new ones.

    ``old_outputs`` maps a replaced datum id to its previous output root. Conflicts among
    the new outputs are found here; conflicts with untouched datums need the owners table
    (``check_owners``).
    """
    result = Assembly()
    for datum_id in [*(d.id for d in processed), *removed]:
        root = old_outputs.get(datum_id)
        if root is None:
            continue
        async for item in index.scan(root):
            result.changes[item.key] = None
    for datum in processed:
        if datum.state != "SUCCESS" or datum.output_root is None:
            continue
        async for item in index.scan(datum.output_root):
            other = result.new_paths.get(item.key)
            if other is not None:
                result.conflict = _conflict(item.key, other, datum.id)
                return result
            result.new_paths[item.key] = datum.id
            result.changes[item.key] = from_index_entry(item)
    return result


def check_owners(assembly: Assembly, owners: Mapping[str, str], replaced: set[str]) -> None:
    """Record a conflict if a new path is still owned by a datum this job did not replace."""
    for path, owner in sorted(owners.items()):
        if owner not in replaced:
            assembly.conflict = _conflict(path, owner, assembly.new_paths[path])
            return


def _conflict(path: str, first: str, second: str) -> str:
    a, b = sorted((first, second))
    return f"datums {a} and {b} both wrote {path}; each output path must come from one datum"
