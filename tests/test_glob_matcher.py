"""The glob matcher: linear in the path, and answering as the regex translation it replaced.

Until issue #16 a glob became a Python regex; ``re`` backtracks, so one hostile pattern
froze PFS for seconds. The old translation is kept here, verbatim, as the oracle: a
seeded random differential test checks the automaton gives its answers (match and
capture groups) on small patterns and paths built to exercise stars, classes, braces,
nested groups and escapes.
"""

from __future__ import annotations

import random
import re
import threading
import time
import warnings

import pytest

from shared.pipeline.glob import MAX_GLOB_CHARS, Glob, Matcher, compile_glob
from shared.platform.errors import InvalidArgument

# --- the old regex translation (the oracle) -------------------------------------------------


def _old_translate(text: str) -> str:
    out: list[str] = []
    i = 0
    braces = 0
    parens = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "*":
            if i + 1 < n and text[i + 1] == "*":
                out.append(".*")
                i += 2
                continue
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            end = text.find("]", i + 2 if i + 1 < n and text[i + 1] in "!^" else i + 1)
            if end == -1:
                raise InvalidArgument("'[' without a closing ']'")
            body = text[i + 1 : end]
            if body.startswith(("!", "^")):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end
        elif ch == "{":
            braces += 1
            out.append("(?:")
        elif ch == "}":
            if not braces:
                raise InvalidArgument("'}' without '{'")
            braces -= 1
            out.append(")")
        elif ch == "," and braces:
            out.append("|")
        elif ch == "(":
            parens += 1
            out.append("(")
        elif ch == ")":
            if not parens:
                raise InvalidArgument("')' without '('")
            parens -= 1
            out.append(")")
        elif ch == "\\" and i + 1 < n:
            out.append(re.escape(text[i + 1]))
            i += 1
        else:
            out.append(re.escape(ch))
        i += 1
    if braces:
        raise InvalidArgument("'{' without '}'")
    if parens:
        raise InvalidArgument("'(' without ')'")
    return "".join(out)


def old_regex(pattern: str) -> re.Pattern[str]:
    text = pattern if pattern.startswith("/") else "/" + pattern
    if len(text) > 1:
        text = text.rstrip("/") or "/"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # '[[' and such: literal, as before
        return re.compile(_old_translate(text))


# --- random patterns, each with a path it matches -------------------------------------------

# (pattern text, a path text it matches)
_LITERALS = [
    ("a", "a"),
    ("b", "b"),
    ("/", "/"),
    (".", "."),
    (",", ","),
    ("-", "-"),
    ("!", "!"),
    ("^", "^"),
    ("\\*", "*"),
    ("\\(", "("),
    ("\\)", ")"),
    ("\\{", "{"),
    ("\\}", "}"),
    ("\\[", "["),
    ("\\a", "a"),
    ("\\\\", "\\"),
]
_CLASSES = [
    ("[ab]", "ab"),
    ("[!a]", "b/c"),
    ("[a-c]", "abc"),
    ("[^/]", "abc"),
    ("[-a]", "-a"),
    ("[a-]", "a-"),
    ("[/]", "/"),
    ("[\\]", "\\"),
    ("[.-b]", "ab."),
    ("[!ab/]", "c."),
]
_PATH_CHARS = "ab/c.,-"


def _run(rng: random.Random, chars: str) -> str:
    return "".join(rng.choice(chars) for _ in range(rng.choice([0, 0, 1, 1, 2, 3])))


def random_glob(rng: random.Random, in_braces: bool = False, depth: int = 0) -> tuple[str, str]:
    """A random well-formed pattern and a path it matches."""
    pattern: list[str] = []
    path: list[str] = []
    for _ in range(rng.randint(0, 5)):
        roll = rng.random()
        if roll < 0.35:
            text, sample = rng.choice(_LITERALS)
            if text == "," and in_braces:
                text = "\\,"
        elif roll < 0.5:
            text, sample = "*", _run(rng, "abc.-")
        elif roll < 0.6:
            text, sample = "**", _run(rng, "ab/c")
        elif roll < 0.67:
            text, sample = "?", rng.choice("abc")
        elif roll < 0.77:
            text, members = rng.choice(_CLASSES)
            sample = rng.choice(members)
        elif roll < 0.88 and depth < 3:
            alternatives = [random_glob(rng, True, depth + 1) for _ in range(rng.randint(1, 3))]
            text = "{" + ",".join(a for a, _ in alternatives) + "}"
            sample = rng.choice(alternatives)[1]
        elif depth < 3:
            inner, sample = random_glob(rng, in_braces, depth + 1)
            text = "(" + inner + ")"
        else:
            continue
        pattern.append(text)
        path.append(sample)
    return "".join(pattern), "".join(path)


def mutate(rng: random.Random, path: str) -> str:
    chars = list(path)
    for _ in range(rng.randint(1, 2)):
        roll = rng.random()
        i = rng.randint(0, len(chars))
        if roll < 0.4 or not chars:
            chars.insert(i, rng.choice(_PATH_CHARS))
        elif roll < 0.7:
            del chars[min(i, len(chars) - 1)]
        else:
            chars[min(i, len(chars) - 1)] = rng.choice(_PATH_CHARS)
    return "".join(chars)


def is_repo_path(path: str) -> bool:
    return path.startswith("/") and "" not in path[1:].split("/")


def segment_walk_matches(glob: Glob, path: str) -> bool:
    names = path[1:].split("/")
    if len(names) != len(glob.segments):
        return False
    for name, segment in zip(names, glob.segments, strict=True):
        if isinstance(segment, str) and name != segment:
            return False
        if isinstance(segment, Matcher) and not segment.match(name):
            return False
    return True


@pytest.mark.parametrize("seed", range(4))
def test_matches_and_groups_equal_the_old_regex_on_random_globs(seed: int) -> None:
    rng = random.Random(seed)
    cases = matched = captured = 0
    while cases < 6000:
        body, sample = random_glob(rng)
        pattern = "/" + body
        oracle = old_regex(pattern)
        glob = compile_glob(pattern)
        assert glob.group_count == oracle.groups, pattern
        for k in range(6):
            path = "/" + sample if k == 0 else mutate(rng, "/" + sample)
            found = oracle.fullmatch(path)
            expected = tuple(g or "" for g in found.groups()) if found else ()
            assert glob.match(path) is bool(found), (pattern, path)
            assert glob.groups(path) == expected, (pattern, path)
            if is_repo_path(path) and glob.segments and None not in glob.segments:
                # PFS walks such globs a directory level at a time: same answer (for
                # paths a repo can hold: no empty names).
                assert segment_walk_matches(glob, path) is bool(found), (pattern, path)
            cases += 1
            matched += bool(found)
            captured += any(expected)
    # The generator must really exercise matches and captures, not only failures.
    assert matched > cases // 4 and captured > cases // 20


@pytest.mark.parametrize(
    ("pattern", "path", "groups"),
    [
        # Greedy stars, as re: the first star takes as much as still lets the rest match.
        ("/(*)-(*).csv", "/a-b-c.csv", ("a-b", "c")),
        ("/(**)/(*)", "/x/y/z", ("x/y", "z")),
        ("/(*)(*)", "/abc", ("abc", "")),
        # Left alternatives first; a group on the branch not taken is ''.
        ("/{(a*),(ab*)}", "/abc", ("abc", "")),
        ("/{x(a,b)y,(c)}", "/xby", ("b", "")),
        ("/{x(a,b)y,(c)}", "/c", ("", "c")),
        ("/(a)?(b)", "/azb", ("a", "b")),
    ],
)
def test_groups_follow_backtracking_priority(
    pattern: str, path: str, groups: tuple[str, ...]
) -> None:
    assert compile_glob(pattern).groups(path) == groups
    found = old_regex(pattern).fullmatch(path)
    assert found is not None and tuple(g or "" for g in found.groups()) == groups


# --- cost ---------------------------------------------------------------------------------

PATHOLOGICAL = ["**a**a**a**a**a**c", "/*a*a*a*a*a*c", "/(**a)(**a)(**a)(**a)(**a)**c"]


def hostile_paths(n: int) -> list[str]:
    """Paths of ``n`` characters that make a backtracking matcher try every split."""
    return [
        "/" + "a" * (n - 1),  # no 'c' at all
        "/" + "a" * (n - 2) + "c",  # matches
        "/" + "x" * (n - 2) + "c",  # the 'c' is there, the 'a's are not
        "/" + "a" * (n - 3) + "bc",
        "/" + ("ab/" * n)[: n - 2] + "c",
    ]


@pytest.mark.parametrize("pattern", PATHOLOGICAL)
@pytest.mark.parametrize("length", [100, 10_000])
def test_pathological_globs_match_in_linear_time(pattern: str, length: int) -> None:
    glob = compile_glob(pattern)
    glob.match("/warm-up")
    for path in hostile_paths(length):
        assert len(path) == length
        # CPU time of this thread: a loaded machine's wait for a core is not matching.
        started = time.thread_time()
        glob.match(path)
        glob.groups(path)
        elapsed = time.thread_time() - started
        print(f"{pattern} on {length} chars: {elapsed * 1000:.2f} ms")
        # The regex took 6.7 s on 100 characters; a linear matcher takes well under 1 ms.
        assert elapsed < 0.05, f"{pattern} on a {length}-character path took {elapsed:.3f}s"


def test_segment_matchers_are_linear_too() -> None:
    glob = compile_glob("/data/*a*a*a*a*a*c/x")
    segment = glob.segments[1]
    assert isinstance(segment, Matcher)
    started = time.thread_time()
    assert not segment.match("a" * 4000)
    assert segment.match("a" * 4000 + "c")
    assert time.thread_time() - started < 0.05


def test_the_state_cache_stays_bounded_and_answers_stay_right() -> None:
    glob = compile_glob("/**a*?[a-c]{x,y*}b**")
    oracle = old_regex("/**a*?[a-c]{x,y*}b**")
    rng = random.Random(7)
    for _ in range(3000):
        path = "/" + "".join(rng.choice("abcxy/") for _ in range(rng.randint(0, 60)))
        assert glob.match(path) is bool(oracle.fullmatch(path))
    assert len(glob.matcher._states) <= 10_001


def test_one_glob_is_safe_to_share_between_threads() -> None:
    glob = compile_glob("/(*)/**/(*).{csv,tsv}")
    rng = random.Random(3)
    paths = [
        "/" + "/".join("".join(rng.choice("ab.c") for _ in range(4)) for _ in range(3)) + ".csv"
        for _ in range(500)
    ]
    oracle = old_regex(glob.pattern)
    expected = [tuple(m.groups()) if (m := oracle.fullmatch(p)) else () for p in paths]
    failures: list[str] = []

    def check() -> None:
        for path, want in zip(paths, expected, strict=True):
            if glob.groups(path) != want:
                failures.append(path)

    threads = [threading.Thread(target=check) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


# --- syntax -------------------------------------------------------------------------------


def test_globstar_crosses_every_character() -> None:
    # re's '.' stopped at '\n', so '**' did too; a path may hold one.
    assert compile_glob("/**").match("/a\nb/c")


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("/[]", "empty character class"),
        ("/[!]", "empty character class"),
        ("/[z-a]", "bad character range z-a"),
        ("/{(a}", "'(' without ')'"),
        ("/({a)}", "'{' without '}'"),
        ("/a" * (MAX_GLOB_CHARS // 2 + 1), "longer than"),
    ],
)
def test_malformed_globs_are_refused_with_the_reason(pattern: str, reason: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(reason)):
        compile_glob(pattern)
