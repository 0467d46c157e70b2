"""Job planning: which datums a job must run, which it skips, which vanished.

Two paths give the same answer:

- **Incremental** (one pfs input, a previous successful job of the same spec
  version): diff the input commit against the one the last successful job read
  — equal subtrees skipped by hash, O(change · log N) — and re-plan only the
  datums those changed paths belong to. A job after a one-file change costs
  O(1) datums, whatever the size of the input.
- **Full** (first job, a new spec version, ``--reprocess``, or cross/union/join/
  group inputs): list every input file, plan every datum, and compare each
  datum's hash with the pipeline's current datums.

A datum runs when its hash (its files' content hashes + the transform) is not
the hash of the pipeline's current datum of that id; otherwise it is skipped
and its output reused. A datum that failed is never current, so it runs again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from shared.api.pps_models import InputCommit
from shared.pipeline.datums import (
    Datum,
    DatumFile,
    DatumInput,
    datum_id,
    glob_matches_for_file,
    plan_datums,
)
from shared.pipeline.glob import compile_glob
from shared.pipeline.spec import PfsInput, PipelineSpec, iter_inputs, transform_fingerprint
from shared.storage.chunking import FileEntry
from shared.storage.file_entries import dir_range, from_index_entry
from shared.storage.file_index import FileIndex

# Current datums (id → (hash, output root)) of the given ids, from the pipeline's state.
CurrentLookup = Callable[[list[str]], Awaitable[dict[str, tuple[str, str | None]]]]


@dataclass(frozen=True)
class JobPlan:
    """What a job does: ``to_run`` (with hashes), ``removed`` datum ids, and its counters."""

    to_run: list[tuple[Datum, str]]
    removed: list[str]
    skipped: int
    total: int
    incremental: bool


@dataclass(frozen=True)
class Baseline:
    """The pipeline's state the plan compares against: its last successful job."""

    spec_version: int
    input_roots: Mapping[str, str | None]  # input name → index root the baseline job read
    current: Mapping[str, tuple[str, str | None]]  # datum id → (hash, output root); may be partial
    current_count: int


async def _listing(index: FileIndex, root: str | None) -> list[tuple[str, FileEntry]]:
    return [(item.key, from_index_entry(item)) async for item in index.scan(root)]


async def _files_under(
    index: FileIndex, root: str | None, match: str
) -> list[tuple[str, FileEntry]]:
    if match == "/":
        return await _listing(index, root)
    item = await index.get(root, match)
    if item is not None:
        return [(match, from_index_entry(item))]
    start, end = dir_range(match)
    return [(i.key, from_index_entry(i)) async for i in index.scan(root, start, end)]


def can_plan_incrementally(
    spec: PipelineSpec, version: int, baseline: Baseline | None, reprocess: bool
) -> bool:
    return (
        baseline is not None
        and not reprocess
        and spec.reprocess_spec != "every_job"
        and baseline.spec_version == version
        and isinstance(spec.input, PfsInput)
        and spec.input.name in baseline.input_roots
    )


async def changed_matches(
    index: FileIndex, leaf: PfsInput, old_root: str | None, new_root: str | None
) -> set[str]:
    """The glob matches (datum paths) whose files differ between two input commits."""
    glob = compile_glob(leaf.glob)
    matches: set[str] = set()
    async for key, _old, _new in index.diff(old_root, new_root):
        matches.update(glob_matches_for_file(glob, key))
    return matches


async def plan_incremental(
    index: FileIndex,
    spec: PipelineSpec,
    inputs: Sequence[InputCommit],
    roots: Mapping[str, str | None],
    baseline: Baseline,
    current_of: CurrentLookup,
) -> JobPlan:
    leaf = spec.input
    assert isinstance(leaf, PfsInput)
    commit = inputs[0]
    fingerprint = transform_fingerprint(spec.transform)
    new_root = roots[leaf.name]
    matches = await changed_matches(index, leaf, baseline.input_roots[leaf.name], new_root)
    ids = {m: datum_id([(leaf.name, leaf.repo, leaf.branch, m)]) for m in matches}
    current = await current_of(list(ids.values()))
    to_run: list[tuple[Datum, str]] = []
    removed: list[str] = []
    added = 0
    for match in sorted(matches):
        files = await _files_under(index, new_root, match)
        did = ids[match]
        if not files:
            if did in current:
                removed.append(did)
            continue
        datum = Datum(
            id=did,
            inputs=(
                DatumInput(
                    input=leaf.name,
                    repo=leaf.repo,
                    branch=leaf.branch,
                    commit=commit.id,
                    match=match,
                    files=tuple(DatumFile(leaf.name, path, entry) for path, entry in files),
                ),
            ),
        )
        digest = datum.hash(fingerprint)
        if did not in current:
            added += 1
        if current.get(did, ("", None))[0] != digest:
            to_run.append((datum, digest))
    total = baseline.current_count - len(removed) + added
    return JobPlan(to_run, removed, total - len(to_run), total, incremental=True)


async def plan_full(
    index: FileIndex,
    spec: PipelineSpec,
    inputs: Sequence[InputCommit],
    roots: Mapping[str, str | None],
    current: Mapping[str, tuple[str, str | None]],
    *,
    reprocess: bool,
) -> JobPlan:
    listings = {
        leaf.name: await _listing(index, roots[leaf.name]) for leaf in iter_inputs(spec.input)
    }
    commits = {c.name: c.id for c in inputs}
    datums = plan_datums(spec.input, listings, commits)
    fingerprint = transform_fingerprint(spec.transform)
    every = reprocess or spec.reprocess_spec == "every_job"
    to_run: list[tuple[Datum, str]] = []
    planned: set[str] = set()
    for datum in datums:
        digest = datum.hash(fingerprint)
        planned.add(datum.id)
        if every or current.get(datum.id, ("", None))[0] != digest:
            to_run.append((datum, digest))
    removed = sorted(d for d in current if d not in planned)
    return JobPlan(to_run, removed, len(datums) - len(to_run), len(datums), incremental=False)


def datum_summary(datum: Datum) -> list[dict[str, object]]:
    """What ``list datum`` shows of a datum's inputs (paths, not entries)."""
    return [
        {
            "input": i.input,
            "repo": i.repo,
            "commit": i.commit,
            "match": i.match,
            "files": [f.path for f in i.files[:100]],
            "file_count": len(i.files),
        }
        for i in datum.inputs
    ]
