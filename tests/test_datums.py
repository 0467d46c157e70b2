"""Datum planning: glob shapes, cross/union/join/group, ids, hashes, and cost at 100k files."""

from __future__ import annotations

import time
from collections.abc import Iterable

import pytest

from shared.pipeline import datums as datums_module
from shared.pipeline.datums import (
    Datum,
    Listing,
    datum_id,
    glob_matches_for_file,
    match_listing,
    plan_datums,
)
from shared.pipeline.glob import Glob, compile_glob
from shared.pipeline.spec import (
    CronInput,
    CrossInput,
    GroupInput,
    Input,
    JoinInput,
    PfsInput,
    Transform,
    UnionInput,
    transform_fingerprint,
)
from shared.platform.errors import Internal
from shared.storage.chunking import FileEntry, hash_bytes

FP = transform_fingerprint(Transform(cmd=("sh",)))


def entry(content: str) -> FileEntry:
    return FileEntry(len(content), hash_bytes(content.encode()), ())


def listing(*paths: str, content: str = "") -> Listing:
    return sorted((p, entry(content or p)) for p in paths)


TREE = listing("/a.txt", "/b.txt", "/dir/x.csv", "/dir/sub/y.csv", "/other/z.csv")


def plan(input: Input, **listings: Listing) -> list[Datum]:
    return plan_datums(input, listings, {name: f"commit-{name}" for name in listings})


def shapes(datums: Iterable[Datum]) -> set[tuple[tuple[str, str, tuple[str, ...]], ...]]:
    """Each datum as ((input, match, (file paths…)), …): what a worker would see."""
    return {
        tuple((p.input, p.match, tuple(f.path for f in p.files)) for p in d.inputs) for d in datums
    }


# --- glob shapes ---------------------------------------------------------------------------


def test_root_glob_makes_the_whole_input_one_datum() -> None:
    datums = plan(PfsInput("in", "repo", "/"), **{"in": TREE})
    assert shapes(datums) == {(("in", "/", tuple(p for p, _ in TREE)),)}
    only = datums[0].inputs[0]
    assert (only.repo, only.branch, only.commit) == ("repo", "master", "commit-in")


def test_star_makes_each_top_level_entry_a_datum_and_a_directory_brings_its_subtree() -> None:
    datums = plan(PfsInput("in", "repo", "/*"), **{"in": TREE})
    assert shapes(datums) == {
        (("in", "/a.txt", ("/a.txt",)),),
        (("in", "/b.txt", ("/b.txt",)),),
        (("in", "/dir", ("/dir/sub/y.csv", "/dir/x.csv")),),
        (("in", "/other", ("/other/z.csv",)),),
    }


def test_star_star_at_depth_two() -> None:
    datums = plan(PfsInput("in", "repo", "/*/*"), **{"in": TREE})
    assert shapes(datums) == {
        (("in", "/dir/sub", ("/dir/sub/y.csv",)),),
        (("in", "/dir/x.csv", ("/dir/x.csv",)),),
        (("in", "/other/z.csv", ("/other/z.csv",)),),
    }


def test_double_star_makes_every_file_and_directory_at_any_depth_a_datum() -> None:
    datums = plan(PfsInput("in", "repo", "/**"), **{"in": TREE})
    matches = sorted(d.inputs[0].match for d in datums)
    assert matches == [
        "/a.txt",
        "/b.txt",
        "/dir",
        "/dir/sub",
        "/dir/sub/y.csv",
        "/dir/x.csv",
        "/other",
        "/other/z.csv",
    ]
    by_match = {d.inputs[0].match: [f.path for f in d.inputs[0].files] for d in datums}
    assert by_match["/dir"] == ["/dir/sub/y.csv", "/dir/x.csv"]


def test_file_pattern_at_any_depth() -> None:
    datums = plan(PfsInput("in", "repo", "/**.csv"), **{"in": TREE})
    assert sorted(d.inputs[0].match for d in datums) == [
        "/dir/sub/y.csv",
        "/dir/x.csv",
        "/other/z.csv",
    ]


def test_literal_directory_glob_selects_that_subtree_only() -> None:
    datums = plan(PfsInput("in", "repo", "/dir/*.csv"), **{"in": TREE})
    assert shapes(datums) == {(("in", "/dir/x.csv", ("/dir/x.csv",)),)}


def test_glob_matches_for_file() -> None:
    assert glob_matches_for_file(compile_glob("/"), "/a/b") == ["/"]
    assert glob_matches_for_file(compile_glob("/*"), "/a/b/c") == ["/a"]
    assert glob_matches_for_file(compile_glob("/*/*"), "/a") == []
    assert glob_matches_for_file(compile_glob("/**"), "/a/b/c") == ["/a", "/a/b", "/a/b/c"]
    assert glob_matches_for_file(compile_glob("/a/*"), "/b/c") == []
    assert glob_matches_for_file(compile_glob("/(*)/(*)"), "/x/y/z") == ["/x/y"]


def test_star_does_not_select_the_root() -> None:
    assert match_listing(compile_glob("/*"), []) == {}
    assert "/" not in match_listing(compile_glob("/**"), TREE)


@pytest.mark.parametrize("glob", ["/", "/*", "/**", "/nothing/*"])
def test_an_empty_input_yields_no_datums(glob: str) -> None:
    assert plan(PfsInput("in", "repo", glob), **{"in": []}) == []


def test_a_glob_matching_nothing_yields_no_datums() -> None:
    assert plan(PfsInput("in", "repo", "/*.parquet"), **{"in": TREE}) == []


# --- combinations ----------------------------------------------------------------------------


def test_cross_is_the_cartesian_product() -> None:
    cross = CrossInput((PfsInput("a", "a", "/*"), PfsInput("b", "b", "/*")))
    datums = plan(cross, a=listing("/1", "/2"), b=listing("/x", "/y", "/z"))
    assert len(datums) == 6
    assert {tuple(p.match for p in d.inputs) for d in datums} == {
        (m, n) for m in ("/1", "/2") for n in ("/x", "/y", "/z")
    }
    assert all([p.input for p in d.inputs] == ["a", "b"] for d in datums)


def test_cross_with_an_empty_side_yields_nothing() -> None:
    cross = CrossInput((PfsInput("a", "a", "/*"), PfsInput("b", "b", "/*")))
    assert plan(cross, a=listing("/1", "/2"), b=[]) == []


def test_union_lists_each_inputs_datums() -> None:
    union = UnionInput((PfsInput("a", "a", "/*"), PfsInput("b", "b", "/")))
    datums = plan(union, a=listing("/1", "/2"), b=listing("/x", "/y"))
    assert shapes(datums) == {
        (("a", "/1", ("/1",)),),
        (("a", "/2", ("/2",)),),
        (("b", "/", ("/x", "/y")),),
    }


def test_same_path_in_two_union_inputs_gives_two_datums() -> None:
    union = UnionInput((PfsInput("a", "r", "/*"), PfsInput("b", "r", "/*")))
    datums = plan(union, a=listing("/1"), b=listing("/1"))
    assert len({d.id for d in datums}) == 2


def test_nested_cross_of_union_and_pfs() -> None:
    spec_input = CrossInput(
        (
            UnionInput((PfsInput("a", "a", "/*"), PfsInput("b", "b", "/*"))),
            PfsInput("c", "c", "/"),
        )
    )
    datums = plan(spec_input, a=listing("/1", "/2"), b=listing("/x"), c=listing("/cfg"))
    assert shapes(datums) == {
        (("a", "/1", ("/1",)), ("c", "/", ("/cfg",))),
        (("a", "/2", ("/2",)), ("c", "/", ("/cfg",))),
        (("b", "/x", ("/x",)), ("c", "/", ("/cfg",))),
    }


def test_union_of_crosses() -> None:
    spec_input = UnionInput(
        (
            CrossInput((PfsInput("a", "a", "/*"), PfsInput("b", "b", "/*"))),
            PfsInput("c", "c", "/*"),
        )
    )
    datums = plan(spec_input, a=listing("/1", "/2"), b=listing("/x"), c=listing("/q"))
    assert len(datums) == 3


def join_input(left_outer: bool = False, right_outer: bool = False) -> JoinInput:
    return JoinInput(
        (
            PfsInput("readings", "readings", "/(*)/*.csv", join_on="$1", outer_join=left_outer),
            PfsInput("parts", "parts", "/(*).json", join_on="$1", outer_join=right_outer),
        )
    )


READINGS = listing("/p1/a.csv", "/p1/b.csv", "/p2/a.csv", "/p3/a.csv")
PARTS = listing("/p1.json", "/p2.json", "/p4.json")


def test_inner_join_combines_matches_with_equal_keys() -> None:
    datums = plan(join_input(), readings=READINGS, parts=PARTS)
    assert {tuple(p.match for p in d.inputs) for d in datums} == {
        ("/p1/a.csv", "/p1.json"),
        ("/p1/b.csv", "/p1.json"),
        ("/p2/a.csv", "/p2.json"),
    }


def test_outer_join_keeps_the_unmatched_matches_of_the_outer_input_only() -> None:
    left = plan(join_input(left_outer=True), readings=READINGS, parts=PARTS)
    assert {tuple(p.match for p in d.inputs) for d in left} == {
        ("/p1/a.csv", "/p1.json"),
        ("/p1/b.csv", "/p1.json"),
        ("/p2/a.csv", "/p2.json"),
        ("/p3/a.csv",),
    }
    right = plan(join_input(right_outer=True), readings=READINGS, parts=PARTS)
    assert ("/p4.json",) in {tuple(p.match for p in d.inputs) for d in right}
    assert ("/p3/a.csv",) not in {tuple(p.match for p in d.inputs) for d in right}
    both = plan(join_input(True, True), readings=READINGS, parts=PARTS)
    assert len(both) == 5


def test_join_on_several_groups_and_three_inputs() -> None:
    join = JoinInput(
        (
            PfsInput("a", "a", "/(*)-(*).txt", join_on="$1$2"),
            PfsInput("b", "b", "/(*)/(*)", join_on="$1$2"),
            PfsInput("c", "c", "/(*)", join_on="$1"),
        )
    )
    datums = plan(
        join,
        a=listing("/x-1.txt", "/y-2.txt"),
        b=listing("/x/1/f", "/y/3/f"),
        c=listing("/x1", "/y2"),
    )
    assert shapes(datums) == {
        (("a", "/x-1.txt", ("/x-1.txt",)), ("b", "/x/1", ("/x/1/f",)), ("c", "/x1", ("/x1",))),
    }


def test_group_puts_all_matches_with_one_key_in_one_datum() -> None:
    group = GroupInput(
        (
            PfsInput("sales", "sales", "/(*)-*.csv", group_by="$1"),
            PfsInput("returns", "returns", "/(*)/*", group_by="$1"),
        )
    )
    datums = plan(
        group,
        sales=listing("/s1-jan.csv", "/s1-feb.csv", "/s2-jan.csv"),
        returns=listing("/s1/r.csv", "/s3/r.csv"),
    )
    assert shapes(datums) == {
        (
            ("sales", "/s1-feb.csv", ("/s1-feb.csv",)),
            ("sales", "/s1-jan.csv", ("/s1-jan.csv",)),
            ("returns", "/s1/r.csv", ("/s1/r.csv",)),
        ),
        (("sales", "/s2-jan.csv", ("/s2-jan.csv",)),),
        (("returns", "/s3/r.csv", ("/s3/r.csv",)),),
    }


def test_cron_input_is_its_tick_repo_as_one_datum() -> None:
    cron = CronInput("tick", "p_tick", "@every 10s")
    datums = plan(cron, tick=listing("/2024-01-01T00:00:00Z", "/2024-01-01T00:00:10Z"))
    assert shapes(datums) == {
        (("tick", "/", ("/2024-01-01T00:00:00Z", "/2024-01-01T00:00:10Z")),),
    }
    assert datums[0].inputs[0].repo == "p_tick"


def test_a_missing_listing_is_a_caller_bug() -> None:
    with pytest.raises(Internal, match="'b'"):
        plan_datums(
            CrossInput((PfsInput("a", "a", "/"), PfsInput("b", "b", "/"))),
            {"a": TREE},
            {"a": "c1"},
        )


# --- ids and hashes --------------------------------------------------------------------------


def test_datums_are_sorted_by_id_and_ids_are_unique() -> None:
    datums = plan(PfsInput("in", "repo", "/**"), **{"in": TREE})
    ids = [d.id for d in datums]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(len(i) == 64 for i in ids)


def test_datum_ids_are_stable_across_runs_commits_and_other_datums() -> None:
    first = plan(PfsInput("in", "repo", "/*"), **{"in": TREE})
    more = listing(*(p for p, _ in TREE), "/new.txt")
    second = plan_datums(PfsInput("in", "repo", "/*"), {"in": more}, {"in": "another-commit"})
    by_match_1 = {d.inputs[0].match: d.id for d in first}
    by_match_2 = {d.inputs[0].match: d.id for d in second}
    assert all(by_match_2[m] == i for m, i in by_match_1.items())
    # The id is a pure function of its parts: computable without planning.
    assert by_match_1["/a.txt"] == datum_id([("in", "repo", "master", "/a.txt")])


def test_datum_id_depends_on_input_name_repo_branch_and_match() -> None:
    base = ("in", "repo", "master", "/a")
    ids = {
        datum_id([base]),
        datum_id([("in2", "repo", "master", "/a")]),
        datum_id([("in", "repo2", "master", "/a")]),
        datum_id([("in", "repo", "dev", "/a")]),
        datum_id([("in", "repo", "master", "/b")]),
        datum_id([base, base]),
        # Field boundaries cannot be shifted to collide.
        datum_id([("in", "repo", "master/", "a")]),
    }
    assert len(ids) == 7


def hash_of(content_by_path: dict[str, str], fingerprint: str = FP) -> dict[str, str]:
    items = sorted((p, entry(c)) for p, c in content_by_path.items())
    datums = plan(PfsInput("in", "repo", "/*"), **{"in": items})
    return {d.inputs[0].match: d.hash(fingerprint) for d in datums}


def test_datum_hash_changes_with_a_files_content_only_for_that_datum() -> None:
    before = hash_of({"/a": "1", "/b": "2", "/d/x": "3", "/d/y": "4"})
    after = hash_of({"/a": "1", "/b": "changed", "/d/x": "3", "/d/y": "changed"})
    assert before["/a"] == after["/a"]
    assert before["/b"] != after["/b"]
    assert before["/d"] != after["/d"]


def test_datum_hash_changes_when_a_file_is_added_or_removed_inside_a_directory_match() -> None:
    before = hash_of({"/d/x": "3", "/d/y": "4"})
    assert before["/d"] != hash_of({"/d/x": "3"})["/d"]
    assert before["/d"] != hash_of({"/d/x": "3", "/d/y": "4", "/d/z": ""})["/d"]


def test_datum_hash_changes_with_the_transform_not_with_parallelism_or_commit() -> None:
    files = {"/a": "1"}
    other = transform_fingerprint(Transform(cmd=("bash",)))
    assert hash_of(files)["/a"] != hash_of(files, other)["/a"]
    # Parallelism is not part of the fingerprint: a spec differing only there hashes alike.
    assert transform_fingerprint(Transform(cmd=("sh",))) == FP
    a = plan_datums(PfsInput("in", "r", "/*"), {"in": listing("/a")}, {"in": "c1"})
    b = plan_datums(PfsInput("in", "r", "/*"), {"in": listing("/a")}, {"in": "c2"})
    assert a[0].hash(FP) == b[0].hash(FP)


def test_moving_content_between_files_of_one_datum_changes_its_hash() -> None:
    before = hash_of({"/d/x": "1", "/d/y": "2"})["/d"]
    assert before != hash_of({"/d/x": "2", "/d/y": "1"})["/d"]


# --- cost ---------------------------------------------------------------------------------


def counting_glob(pattern: str) -> tuple[Glob, list[int]]:
    """The compiled glob with its ``match`` wrapped to count the paths it tests."""
    glob = compile_glob(pattern)
    calls = [0]
    real = glob.match

    def match(path: str) -> bool:
        calls[0] += 1
        return real(path)

    object.__setattr__(glob, "match", match)  # this instance only (Glob is frozen)
    return glob, calls


def test_planning_100k_files_with_star_is_fast_and_tests_each_candidate_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    files = [(f"/f{i:06d}", entry(str(i))) for i in range(100_000)]
    glob, calls = counting_glob("/*")
    assert len(match_listing(glob, files)) == 100_000
    assert calls[0] == 100_000

    # Planning itself tests each file once too (the glob it compiles, counted).
    monkeypatch.setattr(datums_module, "compile_glob", lambda pattern: glob)
    calls[0] = 0
    # CPU time of this thread, not wall time: on a loaded machine (the suite runs on two
    # workers beside other work) waiting for a core is not planning. ~0.5-1 s here even
    # at load 20, where wall time reached 7 s; anything worse than linear is far past 3 s.
    started = time.thread_time()
    datums = plan_datums(PfsInput("in", "repo", "/*"), {"in": files}, {"in": "c"})
    cpu = time.thread_time() - started
    assert len(datums) == 100_000
    assert calls[0] == 100_000
    assert cpu < 3.0, f"planning took {cpu:.2f} s of CPU"


def test_directory_matches_test_each_directory_once_not_once_per_file() -> None:
    files = sorted((f"/d{i % 10}/sub/f{i:05d}", entry(str(i))) for i in range(20_000))
    glob, calls = counting_glob("/*")
    matches = match_listing(glob, files)
    assert len(matches) == 10 and calls[0] == 10
    assert sum(len(v) for v in matches.values()) == 20_000
    # '/**' has no fixed depth: each directory is tested once, each file once.
    glob, calls = counting_glob("/**")
    matches = match_listing(glob, files)
    assert calls[0] == 10 + 10 + 20_000
    assert len(matches["/d3"]) == 2_000 and len(matches["/d3/sub"]) == 2_000


def test_combined_datum_ids_equal_datum_id_of_their_parts() -> None:
    cross = CrossInput((PfsInput("a", "ra", "/*"), PfsInput("b", "rb", "/", branch="dev")))
    for datum in plan(cross, a=listing("/1", "/2"), b=listing("/x")):
        parts = [(p.input, p.repo, p.branch, p.match) for p in datum.inputs]
        assert datum.id == datum_id(parts)


@pytest.mark.parametrize(
    "glob", ["/", "/*", "/*/*", "/**", "/**.csv", "/dir/*", "/(*)/(*)", "/{dir,other}/*", "/*/sub"]
)
def test_glob_matches_for_file_agrees_with_planning(glob: str) -> None:
    """The incremental planner maps changed files to matches with glob_matches_for_file;
    it must name exactly the datums that contain the file."""
    compiled = compile_glob(glob)
    planned = match_listing(compiled, TREE)
    for path, _entry in TREE:
        expected = sorted(m for m, files in planned.items() if path in [p for p, _ in files])
        assert sorted(glob_matches_for_file(compiled, path)) == expected, path
