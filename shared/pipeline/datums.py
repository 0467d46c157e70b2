"""Datums as Pachyderm defines them: the slices of a pipeline's input that run one at a time.

Pure: no I/O. The scheduler lists each input commit, calls ``plan_datums`` and compares
each datum's ``hash`` with the previous job's to skip unchanged work.

- A **match** is a path the input's glob selects: a file, or a directory (which brings
  every file under it). ``/`` selects the root, i.e. the whole input.
- ``pfs`` (and ``cron``, read as a pfs input with glob ``/``): one datum per match.
- ``cross``: every combination of one datum of each input; ``union``: the datums of each
  input one after another; ``join``: matches whose ``join_on`` keys are equal, combined
  (one datum per combination); ``group``: all matches with one ``group_by`` key, as ONE datum.
- A datum's **id** says which paths it covers (input name, repo, branch, match path of each
  part), so the same paths keep the same id from commit to commit. Its **hash** adds the
  content hash of every file and the transform's fingerprint: equal hash, same output.

docs/pipeline-spec.md shows each rule on an example.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import blake3

from shared.pipeline.glob import Glob, compile_glob
from shared.pipeline.spec import (
    CronInput,
    CrossInput,
    GroupInput,
    Input,
    JoinInput,
    PfsInput,
    UnionInput,
    expand_template,
)
from shared.platform.errors import Internal
from shared.storage.chunking import FileEntry

Listing = Sequence[tuple[str, FileEntry]]
"""All files of one input commit as (path, entry), sorted by path."""


@dataclass(frozen=True, slots=True)
class DatumFile:
    """One file of a datum; ``path`` is its path in the input repo (``/pfs/<input><path>``)."""

    input: str
    path: str
    entry: FileEntry


@dataclass(frozen=True, slots=True)
class DatumInput:
    """The part of a datum that one input contributes: one glob match and its files.

    A datum may hold several parts of one input (a ``group`` gathers every match with
    one key; a ``join`` or ``cross`` may combine an input's matches). ``join_on`` /
    ``group_by`` is the key that brought the match into the datum, for the worker's
    ``PACH_DATUM_<name>_JOIN_ON`` / ``_GROUP_BY``; neither is part of the datum's id
    or hash (the key follows from the match path and the spec, which those cover).
    """

    input: str
    repo: str
    branch: str
    commit: str
    match: str
    files: tuple[DatumFile, ...]
    join_on: str | None = None
    group_by: str | None = None


@dataclass(frozen=True, slots=True)
class Datum:
    """A unit of work: ``id`` names the paths it covers, ``inputs`` hold its files."""

    id: str
    inputs: tuple[DatumInput, ...]

    def hash(self, transform_fingerprint: str) -> str:
        """BLAKE3 hex over the id, every file's (path, content hash) and the transform.

        Commits, chunk layout and parallelism are left out: the same bytes under the same
        paths through the same transform give the same output, whichever commit holds them.
        """
        hasher = blake3.blake3()
        hasher.update(_encode((self.id, transform_fingerprint)))
        for part in self.inputs:
            hasher.update(_encode((part.input, part.match, str(len(part.files)))))
            for file in part.files:
                hasher.update(_encode((file.path, file.entry.hash)))
        return hasher.hexdigest()


def _encode(fields: Iterable[str]) -> bytes:
    # Length-prefixed, so no choice of names or paths can make two field lists collide.
    return "".join(f"{len(text)}:{text}," for text in fields).encode()


def datum_id(parts: Sequence[tuple[str, str, str, str]]) -> str:
    """BLAKE3 hex naming a datum by its (input name, repo, branch, match path) parts, in order."""
    return blake3.blake3(_encode(itertools.chain.from_iterable(parts))).hexdigest()


def _make_datum(inputs: tuple[DatumInput, ...]) -> Datum:
    # datum_id's encoding, written out: this runs once per datum (100,000s per job).
    text = "".join(
        [
            f"{len(p.input)}:{p.input},{len(p.repo)}:{p.repo},"
            f"{len(p.branch)}:{p.branch},{len(p.match)}:{p.match},"
            for p in inputs
        ]
    )
    return Datum(blake3.blake3(text.encode()).hexdigest(), inputs)


# --- glob matching --------------------------------------------------------------------------


def _selects_root(glob: Glob) -> bool:
    # Only the glob '/' selects the root: '*' and '**' never match the root's empty name.
    return glob.selects_root


def _fixed_depth(glob: Glob) -> int | None:
    """How many segments every match has, when the glob says (no '**', split by segment)."""
    if glob.segmentable and glob.segments and None not in glob.segments:
        return len(glob.segments)
    return None


def _ancestor_at_depth(path: str, depth: int) -> str | None:
    """The first ``depth`` segments of ``path`` ('/a/b/c', 2 → '/a/b'); None if shallower."""
    pos = 0
    for i in range(depth):
        nxt = path.find("/", pos + 1)
        if nxt == -1:
            return path if i == depth - 1 else None
        pos = nxt
    return path[:pos]


def _candidates(path: str) -> list[str]:
    """Every path a file can be matched under: each ancestor directory, then the file."""
    out = []
    pos = path.find("/", 1)
    while pos != -1:
        out.append(path[:pos])
        pos = path.find("/", pos + 1)
    out.append(path)
    return out


def glob_matches_for_file(glob: Glob, path: str) -> list[str]:
    """The matches (the file itself and/or ancestor directories, shallowest first) that
    bring the file at ``path`` into a datum."""
    if _selects_root(glob):
        return ["/"]
    depth = _fixed_depth(glob)
    if depth is not None:
        candidate = _ancestor_at_depth(path, depth)
        return [candidate] if candidate is not None and glob.match(candidate) else []
    return [c for c in _candidates(path) if glob.match(c)]


def match_listing(glob: Glob, listing: Listing) -> dict[str, list[tuple[str, FileEntry]]]:
    """Group a sorted listing by glob match: match path → its files, matches sorted.

    Each distinct candidate is tested once, so a listing of N files costs O(N) string
    work plus one glob test (linear in the path) per distinct directory or file that
    could match.
    """
    if _selects_root(glob):
        return {"/": list(listing)} if listing else {}
    out: dict[str, list[tuple[str, FileEntry]]] = {}
    verdicts: dict[str, bool] = {}
    matches = glob.match
    depth = _fixed_depth(glob)
    for item in listing:
        path = item[0]
        candidates: Sequence[str]
        if depth is not None:
            candidate = _ancestor_at_depth(path, depth)
            candidates = () if candidate is None else (candidate,)
        else:
            candidates = _candidates(path)
        for candidate in candidates:
            verdict = verdicts.get(candidate)
            if verdict is None:
                verdict = verdicts[candidate] = matches(candidate)
            if verdict:
                files = out.get(candidate)
                if files is None:
                    files = out[candidate] = []
                files.append(item)
    return {match: out[match] for match in sorted(out)}


# --- planning -------------------------------------------------------------------------------


def plan_datums(
    input: Input, listings: Mapping[str, Listing], commits: Mapping[str, str]
) -> list[Datum]:
    """Every datum of a job, sorted by id. ``listings``/``commits`` are keyed by input name
    (a cron input's name for its tick repo); an empty listing gives that input no matches."""
    with _gc_paused():
        datums = [_make_datum(parts) for parts in _plan(input, listings, commits)]
    datums.sort(key=lambda datum: datum.id)
    return datums


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    # Planning allocates several objects per file and creates no reference cycles; left on,
    # the cycle collector rescans the growing heap again and again and doubles the time.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


_Parts = tuple[DatumInput, ...]


def _plan(
    input: Input, listings: Mapping[str, Listing], commits: Mapping[str, str]
) -> list[_Parts]:
    if isinstance(input, PfsInput | CronInput):
        return [(part,) for part in _leaf_parts(input, listings, commits)]
    if isinstance(input, UnionInput):
        return [parts for child in input.inputs for parts in _plan(child, listings, commits)]
    if isinstance(input, CrossInput):
        sides = [_plan(child, listings, commits) for child in input.inputs]
        return [tuple(itertools.chain.from_iterable(combo)) for combo in itertools.product(*sides)]
    if isinstance(input, JoinInput):
        return _plan_join(input, listings, commits)
    return _plan_group(input, listings, commits)


def _leaf_parts(
    leaf: PfsInput | CronInput, listings: Mapping[str, Listing], commits: Mapping[str, str]
) -> list[DatumInput]:
    if leaf.name not in listings or leaf.name not in commits:
        raise Internal(f"datum planning: no listing or commit given for input {leaf.name!r}")
    # A cron input is its tick repo read whole, as Pachyderm gives it one datum per tick.
    glob = compile_glob(leaf.glob if isinstance(leaf, PfsInput) else "/")
    commit = commits[leaf.name]
    name = leaf.name
    return [
        DatumInput(
            name,
            leaf.repo,
            leaf.branch,
            commit,
            match,
            tuple([DatumFile(name, path, entry) for path, entry in files]),
        )
        for match, files in match_listing(glob, listings[leaf.name]).items()
    ]


def _keyed_parts(
    pfs: PfsInput,
    kind: Literal["join_on", "group_by"],
    listings: Mapping[str, Listing],
    commits: Mapping[str, str],
) -> dict[str, list[DatumInput]]:
    """The input's matches grouped by their ``join_on``/``group_by`` key, in match order;
    each part carries its key in the field named by ``kind``."""
    glob = compile_glob(pfs.glob)
    template = getattr(pfs, kind) or ""
    by_key: dict[str, list[DatumInput]] = {}
    for part in _leaf_parts(pfs, listings, commits):
        key = expand_template(template, glob.groups(part.match))
        keyed = replace(part, join_on=key) if kind == "join_on" else replace(part, group_by=key)
        by_key.setdefault(key, []).append(keyed)
    return by_key


def _plan_join(
    join: JoinInput, listings: Mapping[str, Listing], commits: Mapping[str, str]
) -> list[_Parts]:
    keyed = [_keyed_parts(pfs, "join_on", listings, commits) for pfs in join.inputs]
    keys = sorted(set().union(*keyed))
    out: list[_Parts] = []
    for key in keys:
        present = [i for i, by_key in enumerate(keyed) if key in by_key]
        # Inner join: the key must be in every input. An input marked outer_join keeps its
        # matches that some other input lacks, combined with whichever inputs do have the key.
        if len(present) < len(keyed) and not any(join.inputs[i].outer_join for i in present):
            continue
        out.extend(itertools.product(*(keyed[i][key] for i in present)))
    return out


def _plan_group(
    group: GroupInput, listings: Mapping[str, Listing], commits: Mapping[str, str]
) -> list[_Parts]:
    keyed = [_keyed_parts(pfs, "group_by", listings, commits) for pfs in group.inputs]
    keys = sorted(set().union(*keyed))
    return [tuple(part for by_key in keyed for part in by_key.get(key, ())) for key in keys]
