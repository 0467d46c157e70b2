"""The incremental planner gives exactly the full planner's answer, at a cost counted in nodes.

Random histories of puts, deletes and moves over two inputs are stored in the real file
index over a real local object store. After every step each spec is planned both ways
where the engine would plan incrementally (one pfs input, same spec version): the datums
to run (ids, hashes, files), the removed ids and the counters must agree. Specs the
engine always plans in full (cross, union, join, group) are checked to be refused by
``can_plan_incrementally`` and to agree with a plan made from nothing. The incremental
plan reads its input tree through a cold index, and its node reads are bounded by the
change, not by the input's size (the way ``shared/storage/file_index/diff.py`` is tested).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from services.scheduler.planner import (
    Baseline,
    JobPlan,
    can_plan_incrementally,
    plan_full,
    plan_incremental,
)
from shared.api.pps_models import InputCommit
from shared.pipeline.spec import PipelineSpec, iter_inputs, parse_pipeline_spec
from shared.storage.chunking import ChunkRef, FileEntry, hash_bytes
from shared.storage.file_entries import to_index_entry
from shared.storage.file_index import FileIndex
from shared.storage.objstore.local import LocalStore
from tests.fixtures.counting_store import CountingStore

VERSION = 1
STEPS = 20
# A part of each input no step touches: it makes the tree tall and a full plan costly.
BACKGROUND = 2000
# Node reads allowed per changed path and tree level for an incremental plan.
READS_PER_CHANGE_LEVEL = 2

Current = dict[str, tuple[str, str | None]]


def file_entry(content: str) -> FileEntry:
    digest = hash_bytes(content.encode())
    size = len(content)
    return FileEntry(size, digest, (ChunkRef(digest, 0, size),))


def spec(name: str, input_: dict[str, Any]) -> PipelineSpec:
    return parse_pipeline_spec(
        {"pipeline": {"name": name}, "transform": {"cmd": ["true"]}, "input": input_}
    )


def pfs(repo: str, glob: str, **extra: Any) -> dict[str, Any]:
    return {"pfs": {"repo": repo, "glob": glob, **extra}}


# Single-input specs: the engine plans these incrementally after their first job.
SINGLE = [
    spec("files", pfs("a", "/*/*")),
    spec("dirs", pfs("a", "/*")),
    spec("some", pfs("a", "/d[0-2]/*")),
    spec("deep", pfs("b", "/**")),
    spec("csv", pfs("b", "/*/f1*.txt")),
]
# Multi-input specs: always planned in full.
MULTI = [
    spec("cross", {"cross": [pfs("a", "/d*"), pfs("b", "/t*")]}),
    spec("union", {"union": [pfs("a", "/d1/*"), pfs("b", "/d2/*")]}),
    spec(
        "join",
        {
            "join": [
                pfs("a", "/d*/f(*).txt", join_on="$1"),
                pfs("b", "/d*/f(*).txt", join_on="$1"),
            ]
        },
    ),
    spec(
        "group",
        {"group": [pfs("a", "/(d*)/*", group_by="$1"), pfs("b", "/(d*)/*", group_by="$1")]},
    ),
]


@dataclass
class Repo:
    """One input's files as a plain dict (the model) and as its index root (the real thing)."""

    name: str
    files: dict[str, str] = field(default_factory=dict)
    root: str | None = None
    commits: int = 0

    def commit(self) -> InputCommit:
        return InputCommit(self.name, self.name, "master", f"{self.name}-{self.commits}")


def random_ops(rng: random.Random, repo: Repo) -> list[tuple[str, str | None]]:
    """One commit's changes: 1–4 puts, overwrites, deletes or moves (path → content or None)."""
    changes: dict[str, str | None] = {}
    live = sorted(p for p in repo.files if not p.startswith("/bg/"))
    for _ in range(rng.randint(1, 4)):
        kind = rng.choice(["put", "put", "delete", "move"])
        path = f"/d{rng.randint(0, 5)}/f{rng.randint(0, 30)}.txt"
        if rng.random() < 0.2:
            path = f"/t{rng.randint(0, 9)}.txt"
        if kind == "put" or not live:
            changes[path] = f"{path} v{rng.randint(0, 3)}"
        elif kind == "delete":
            changes[rng.choice(live)] = None
        else:
            source = rng.choice(live)
            changes[source] = None
            changes[path] = repo.files[source]
    return sorted(changes.items())


async def apply(index: FileIndex, repo: Repo, changes: list[tuple[str, str | None]]) -> None:
    for path, content in changes:
        if content is None:
            repo.files.pop(path, None)
        else:
            repo.files[path] = content
    repo.root = await index.apply(
        repo.root,
        [
            (path, None if content is None else to_index_entry(path, file_entry(content)))
            for path, content in changes
        ],
    )
    repo.commits += 1


def as_comparable(plan: JobPlan) -> tuple[Any, ...]:
    to_run = sorted(
        (d.id, digest, tuple((i.input, i.match, i.commit, i.files) for i in d.inputs))
        for d, digest in plan.to_run
    )
    return to_run, sorted(plan.removed), plan.skipped, plan.total


def after_job(current: Current, plan: JobPlan) -> Current:
    """The pipeline's current datums once ``plan``'s job succeeded."""
    out = dict(current)
    for datum_id in plan.removed:
        out.pop(datum_id, None)
    for datum, digest in plan.to_run:
        out[datum.id] = (digest, None)
    return out


@dataclass
class Pipeline:
    spec: PipelineSpec
    current: Current = field(default_factory=dict)
    roots: dict[str, str | None] = field(default_factory=dict)  # what its last job read
    jobs: int = 0


@pytest.fixture
async def objects(tmp_path: Path) -> AsyncIterator[CountingStore]:
    store = CountingStore(LocalStore(tmp_path / "objects"))
    yield store
    await store.close()


def inputs_of(spec_: PipelineSpec, repos: Mapping[str, Repo]) -> list[InputCommit]:
    return [
        InputCommit(leaf.name, leaf.repo, leaf.branch, repos[leaf.repo].commit().id)
        for leaf in iter_inputs(spec_.input)
    ]


def roots_of(spec_: PipelineSpec, repos: Mapping[str, Repo]) -> dict[str, str | None]:
    return {leaf.name: repos[leaf.repo].root for leaf in iter_inputs(spec_.input)}


async def tree_height(index: FileIndex, root: str | None) -> int:
    return 0 if root is None else (await index.node(root)).level + 1


@pytest.mark.parametrize("seed", [1])
async def test_incremental_plan_equals_full_plan_on_random_histories(
    objects: CountingStore, seed: int
) -> None:
    rng = random.Random(seed)
    writer = FileIndex(objects)
    repos = {name: Repo(name) for name in ("a", "b")}
    for repo in repos.values():
        background = [
            (f"/bg/part{i // 500:02d}/f{i:05d}.txt", f"bg {i}") for i in range(BACKGROUND)
        ]
        first = [(f"/d{i % 6}/f{i % 31}.txt", f"{repo.name} {i}") for i in range(40)]
        await apply(writer, repo, sorted(dict(background + first).items()))
    pipelines = [Pipeline(s) for s in SINGLE + MULTI]
    incremental_plans = 0
    for step in range(STEPS):
        repo = repos[rng.choice(["a", "b"])]
        old_files = dict(repo.files)
        await apply(writer, repo, random_ops(rng, repo))
        changed = {
            p for p in old_files.keys() | repo.files.keys() if old_files.get(p) != repo.files.get(p)
        }
        for pipeline in pipelines:
            s = pipeline.spec
            inputs, roots = inputs_of(s, repos), roots_of(s, repos)
            full = await plan_full(writer, s, inputs, roots, pipeline.current, reprocess=False)
            baseline = (
                Baseline(VERSION, pipeline.roots, {}, len(pipeline.current))
                if pipeline.jobs
                else None
            )
            fresh = await plan_full(writer, s, inputs, roots, {}, reprocess=False)
            # The full plan runs exactly the datums whose hash is new, skips the others.
            assert {d.id: h for d, h in fresh.to_run} == {
                **{i: pipeline.current[i][0] for i in pipeline.current if i not in full.removed},
                **{d.id: h for d, h in full.to_run},
            }
            if s in MULTI:
                assert not can_plan_incrementally(s, VERSION, baseline, False)
            elif baseline is not None:
                assert can_plan_incrementally(s, VERSION, baseline, False)
                current = pipeline.current

                async def current_of(
                    ids: list[str], current: Current = current
                ) -> dict[str, tuple[str, str | None]]:
                    return {i: current[i] for i in ids if i in current}

                cold = FileIndex(objects)
                reads_before = objects.count_gets("index/")
                incremental = await plan_incremental(cold, s, inputs, roots, baseline, current_of)
                reads = objects.count_gets("index/") - reads_before
                assert as_comparable(incremental) == as_comparable(full), (seed, step, s.name)
                incremental_plans += 1
                leaf_repo = next(iter(inputs)).repo
                touched = len(changed) if leaf_repo == repo.name else 0
                height = await tree_height(writer, repos[leaf_repo].root)
                bound = READS_PER_CHANGE_LEVEL * height * (touched + 1)
                assert reads <= bound, (seed, step, s.name, reads, bound)
            pipeline.current = after_job(pipeline.current, full)
            pipeline.roots = roots
            pipeline.jobs += 1
            assert pipeline.current == {d.id: (h, None) for d, h in fresh.to_run}
    assert incremental_plans == STEPS * len(SINGLE) - len(SINGLE)
