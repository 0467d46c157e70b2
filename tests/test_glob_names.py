"""Pure cores: Pachyderm globs, names, paths and refs."""

from __future__ import annotations

import pytest

from shared.api.names import Ref, normalize_path, parse_ref, parse_repo_ref
from shared.pipeline.glob import compile_glob
from shared.platform.errors import InvalidArgument


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/", "/", True),
        ("/*", "/a", True),
        ("/*", "/a/b", False),
        ("*", "/a", True),
        ("/*/*", "/a/b", True),
        ("/**", "/a/b/c", True),
        ("/a/*.csv", "/a/x.csv", True),
        ("/a/*.csv", "/a/b/x.csv", False),
        ("/a/?.txt", "/a/1.txt", True),
        ("/a/?.txt", "/a/12.txt", False),
        ("/[ab]*", "/apple", True),
        ("/[!ab]*", "/apple", False),
        ("/[a-c]x", "/bx", True),
        ("/{foo,bar}/*", "/bar/1", True),
        ("/{foo,bar}/*", "/baz/1", False),
        ("/dir/", "/dir", True),
    ],
)
def test_glob_matches_like_pachyderm(pattern: str, path: str, matches: bool) -> None:
    assert bool(compile_glob(pattern).match(path)) is matches


def test_glob_capture_groups_feed_join_keys() -> None:
    glob = compile_glob("/(*)-(*).csv")
    assert glob.groups("/2024-sales.csv") == ("2024", "sales")


def test_glob_segments_and_prefix() -> None:
    glob = compile_glob("/data/*/x")
    assert glob.segmentable and glob.segments[0] == "data" and glob.segments[2] == "x"
    assert glob.literal_prefix == "/data"
    assert compile_glob("/a/**").segments[-1] is None


@pytest.mark.parametrize("pattern", ["/[abc", "/{a,b", "/a}", "/(a", "/a)"])
def test_bad_globs_are_refused_with_the_reason(pattern: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid glob"):
        compile_glob(pattern)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("master", Ref("master", 0)),
        ("master^", Ref("master", 1)),
        ("master^^", Ref("master", 2)),
        ("master~3", Ref("master", 3)),
        ("a" * 32 + "^2", Ref("a" * 32, 2)),
    ],
)
def test_refs_parse(text: str, expected: Ref) -> None:
    assert parse_ref(text) == expected


@pytest.mark.parametrize("text", ["", "mas ter", "master^x", "~1", "a@b"])
def test_bad_refs_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_ref(text)


def test_paths_normalize_and_refuse_escapes() -> None:
    assert normalize_path("a/b/") == "/a/b"
    assert normalize_path("/") == "/"
    for bad in ["/a/../b", "/a//b", "/./a", "a\x00"]:
        with pytest.raises(InvalidArgument):
            normalize_path(bad)


def test_repo_ref_grammar() -> None:
    assert parse_repo_ref("images@master:/a/b.png").path == "/a/b.png"
    assert parse_repo_ref("images").ref is None
    with pytest.raises(InvalidArgument):
        parse_repo_ref("images@:/x")
    with pytest.raises(InvalidArgument):
        parse_repo_ref("bad name@master")
