"""Pachyderm's glob patterns over repo paths, matched in time linear in the path.

Syntax, as in Pachyderm (gobwas/glob with '/' as the separator):
``*`` any run of characters within one path segment, ``?`` one character
within a segment, ``**`` any run across segments, ``[abc]`` / ``[!abc]`` /
``[a-z]`` character classes, ``{a,b}`` alternatives, and ``( … )`` capture
groups that ``join_on`` / ``group_by`` refer to as ``$1``, ``$2`` … ``\\x`` is a
literal ``x``. Inside braces a ',' separates alternatives of the innermost
open group (so ``{x(a,b)}`` is ``x`` then a group capturing ``a`` or ``b``).

A pattern matches a whole path: ``/*`` matches every top-level file and
directory, ``/`` matches only the root. A leading '/' is implied. Pure: no I/O.

Why not Python's ``re``: it backtracks, so ``**a**a**a**a**a**c`` against a
100-character path ran 6.7 s — on PFS's event loop, freezing every request.
Here a pattern compiles to a small NFA (Thompson's construction, laid out so
every ε-edge points forward) and a path is read by that NFA's subset automaton
run *backwards*: state i is the exact set of NFA character steps from which
``path[i:]`` can still be matched. States and transitions are built on first
use and cached, so a match costs one dict lookup per character (O(NFA size)
on a cache miss) and never backtracks. Capture groups then need no search:
one forward walk takes, at each fork, the first branch in the order Python's
backtracking would try (greedy stars, left alternatives first) that can still
match — so ``groups`` returns exactly what ``re.fullmatch(...).groups()`` did,
in O(len(path)) steps. (Unlike ``re``'s ``.``, ``**`` also crosses '\\n'.)
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from shared.platform.errors import InvalidArgument

_SPECIAL = set("*?[{(")

# A glob longer than any path (PFS caps paths at 4096 bytes) can only be a mistake or an
# attack; the cap also bounds the automaton's per-step cost, which grows with the glob.
MAX_GLOB_CHARS = 4096

# --- parsing: pattern text → items ------------------------------------------------------

CharTest = Callable[[str], bool]


def _any_char(ch: str) -> bool:
    return True


_NOT_SLASH: CharTest = "/".__ne__


@dataclass(frozen=True, slots=True)
class _Char:
    """One character passing ``test``."""

    test: CharTest


@dataclass(frozen=True, slots=True)
class _Star:
    """Any run (greedy) of characters passing ``test``: '*' (no '/') or '**' (anything)."""

    test: CharTest


@dataclass(slots=True)
class _Group:
    """Alternatives, the first that can match preferred; ``slot`` ≥ 1 numbers a capture."""

    slot: int
    alternatives: list[list[_Char | _Star | _Group]] = field(default_factory=lambda: [[]])

    @property
    def capturing(self) -> bool:
        return self.slot > 0


_Item = _Char | _Star | _Group


def _invalid(original: str, reason: str) -> InvalidArgument:
    return InvalidArgument(f"invalid glob {original!r}: {reason}")


def _parse(text: str, original: str) -> tuple[list[_Item], int]:
    """The items of ``text`` and its number of capture groups; refuses malformed patterns."""
    top = _Group(0)
    stack = [top]  # open groups; the innermost is last
    braces = 0
    captures = 0
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        current = stack[-1].alternatives[-1]
        if ch == "*":
            if i + 1 < n and text[i + 1] == "*":
                current.append(_Star(_any_char))
                i += 2
                continue
            current.append(_Star(_NOT_SLASH))
        elif ch == "?":
            current.append(_Char(_NOT_SLASH))
        elif ch == "[":
            test, i = _parse_class(text, i, original)
            current.append(_Char(test))
        elif ch == "{":
            braces += 1
            stack.append(_Group(-1))
        elif ch == "}":
            if not braces:
                raise _invalid(original, "'}' without '{'")
            if stack[-1].capturing:
                raise _invalid(original, "'(' without ')'")
            braces -= 1
            group = stack.pop()
            stack[-1].alternatives[-1].append(group)
        elif ch == "," and braces:
            stack[-1].alternatives.append([])
        elif ch == "(":
            captures += 1
            stack.append(_Group(captures))
        elif ch == ")":
            if not any(g.capturing for g in stack):
                raise _invalid(original, "')' without '('")
            if not stack[-1].capturing:
                raise _invalid(original, "'{' without '}'")
            group = stack.pop()
            stack[-1].alternatives[-1].append(group)
        elif ch == "\\" and i + 1 < n:
            current.append(_Char(text[i + 1].__eq__))
            i += 1
        else:
            current.append(_Char(ch.__eq__))
        i += 1
    if braces:
        raise _invalid(original, "'{' without '}'")
    if len(stack) > 1:
        raise _invalid(original, "'(' without ')'")
    return top.alternatives[0], captures


def _parse_class(text: str, start: int, original: str) -> tuple[CharTest, int]:
    """The test of the class opening at ``start`` and the index of its closing ']'.

    As before this module stopped using ``re``: the class ends at the first ']' after
    its first member, '!' or '^' first negates it, 'a-z' is a range, a '-' first or
    last is itself, a backslash is a literal backslash. A negated class may match '/'.
    """
    negated = start + 1 < len(text) and text[start + 1] in "!^"
    end = text.find("]", start + 2 if negated else start + 1)
    if end == -1:
        raise _invalid(original, "'[' without a closing ']'")
    body = text[start + 2 if negated else start + 1 : end]
    if not body:
        raise _invalid(original, "empty character class '[]'")
    singles: set[str] = set()
    ranges: list[tuple[str, str]] = []
    p = 0
    while p < len(body):
        if p + 2 < len(body) and body[p + 1] == "-":
            low, high = body[p], body[p + 2]
            if high < low:
                raise _invalid(original, f"bad character range {low}-{high}")
            ranges.append((low, high))
            p += 3
        else:
            singles.add(body[p])
            p += 1
    members = frozenset(singles)
    spans = tuple(ranges)

    def test(ch: str) -> bool:
        inside = ch in members or any(low <= ch <= high for low, high in spans)
        return inside is not negated

    return test, end


# --- the NFA ------------------------------------------------------------------------------

_CHAR, _SPLIT, _SAVE, _JUMP, _MATCH = range(5)


class _Program:
    """Thompson code: CHAR consumes a character passing its test and goes to ``out``;
    SPLIT forks to ``out`` (preferred) and ``alt``; SAVE records the position in capture
    slot ``slot``; JUMP goes to ``out``; MATCH ends. Every ε-edge points forward."""

    def __init__(self) -> None:
        self.kind: list[int] = []
        self.out: list[int] = []
        self.alt: list[int] = []
        self.slot: list[int] = []
        self.test: list[CharTest | None] = []

    def add(self, kind: int, *, test: CharTest | None = None, slot: int = -1) -> int:
        pc = len(self.kind)
        self.kind.append(kind)
        self.out.append(pc + 1)
        self.alt.append(-1)
        self.slot.append(slot)
        self.test.append(test)
        return pc

    def emit(self, items: list[_Item]) -> None:
        for item in items:
            if isinstance(item, _Char):
                self.add(_CHAR, test=item.test)
            elif isinstance(item, _Star):
                fork = self.add(_SPLIT)
                step = self.add(_CHAR, test=item.test)
                self.out[step] = fork  # the loop back is a character edge, not an ε-edge
                self.alt[fork] = len(self.kind)
            else:
                self._emit_group(item)

    def _emit_group(self, group: _Group) -> None:
        if group.capturing:
            self.add(_SAVE, slot=2 * group.slot - 2)
        jumps = []
        last = len(group.alternatives) - 1
        for k, alternative in enumerate(group.alternatives):
            fork = self.add(_SPLIT) if k < last else -1
            self.emit(alternative)
            if k < last:
                jumps.append(self.add(_JUMP))
                self.alt[fork] = len(self.kind)
        for jump in jumps:
            self.out[jump] = len(self.kind)
        if group.capturing:
            self.add(_SAVE, slot=2 * group.slot - 1)


class _State:
    """A state of the backward automaton: ``live`` holds bit pc for each CHAR step (or the
    MATCH) from which the rest of the path can be matched; ``after`` caches transitions;
    ``ahead`` caches forward choices: entry pc → (pc after the chosen step, slots saved)."""

    __slots__ = ("after", "ahead", "live", "starts")

    def __init__(self, live: int, starts: bool) -> None:
        self.live = live
        self.starts = starts
        self.after: dict[str, _State] = {}
        self.ahead: dict[int, tuple[int, tuple[int, ...]]] = {}


# Cached states per matcher before the cache is dropped and rebuilt: bounds memory when
# hostile paths walk a pattern through many distinct state sets.
_MAX_STATES = 10_000


class Matcher:
    """A compiled pattern: ``match`` and ``groups`` in O(len(text)) cached steps.

    Safe to share between threads: the caches only grow under a lock.
    """

    def __init__(self, items: list[_Item], group_count: int) -> None:
        program = _Program()
        program.emit(items)
        self._match_pc = program.add(_MATCH)
        self._program = program
        self.group_count = group_count
        size = len(program.kind)
        # closure[pc]: bits of the CHAR steps and MATCH reachable from pc by ε-edges alone.
        closure = [0] * (size + 1)
        for pc in range(size - 1, -1, -1):
            kind = program.kind[pc]
            if kind in (_CHAR, _MATCH):
                closure[pc] = 1 << pc
            elif kind == _SPLIT:
                closure[pc] = closure[program.out[pc]] | closure[program.alt[pc]]
            else:
                closure[pc] = closure[program.out[pc]]
        self._closure = closure
        chars = [pc for pc in range(size) if program.kind[pc] == _CHAR]
        # preceding[t]: bits of the CHAR steps after which step t (or MATCH) can come next.
        preceding = [0] * size
        for pc in chars:
            reach = closure[program.out[pc]]
            while reach:
                low = reach & -reach
                preceding[low.bit_length() - 1] |= 1 << pc
                reach ^= low
        self._preceding = preceding
        self._tests = program.test
        # Whether some step can take a '/' ('**', or a class such as '[!a]'): a pattern
        # whose segment can cannot be matched one path segment at a time.
        self.crosses_slash = any(test is not None and test("/") for test in program.test)
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        end_live = 1 << self._match_pc
        self._end = _State(end_live, bool(self._closure[0] & end_live))
        self._dead = _State(0, False)
        self._states: dict[int, _State] = {0: self._dead, end_live: self._end}

    def _step(self, state: _State, ch: str) -> _State:
        """The state before ``ch`` when ``state`` holds after it (a cache miss)."""
        with self._lock:
            candidates = 0
            live = state.live
            while live:
                low = live & -live
                candidates |= self._preceding[low.bit_length() - 1]
                live ^= low
            before = 0
            while candidates:
                low = candidates & -candidates
                pc = low.bit_length() - 1
                test = self._tests[pc]
                if test is not None and test(ch):
                    before |= low
                candidates ^= low
            found = self._states.get(before)
            if found is None:
                found = _State(before, bool(self._closure[0] & before))
                self._states[before] = found
            state.after[ch] = found
            return found

    def _entry(self) -> _State:
        if len(self._states) > _MAX_STATES:
            with self._lock:
                if len(self._states) > _MAX_STATES:
                    self._reset()
        return self._end

    def match(self, text: str) -> bool:
        """Whether the pattern matches all of ``text``."""
        state = self._entry()
        dead = self._dead
        for ch in reversed(text):
            state = state.after.get(ch) or self._step(state, ch)
            if state is dead:
                return False
        return state.starts

    def groups(self, text: str) -> tuple[str, ...] | None:
        """The capture groups of a match ('' for a group on a branch not taken); None if
        the pattern does not match ``text``."""
        state = self._entry()
        dead = self._dead
        n = len(text)
        # states[i]: knows the steps from which text[i:] can still be matched.
        states = [state] * (n + 1)
        for i in range(n - 1, -1, -1):
            state = state.after.get(text[i]) or self._step(state, text[i])
            if state is dead:
                return None
            states[i] = state
        if not state.starts:
            return None
        marks = [-1] * (2 * self.group_count)
        pc = 0
        for i in range(n + 1):
            here = states[i]
            pc, saved = here.ahead.get(pc) or self._ahead(here, pc)
            for slot in saved:
                marks[slot] = i
        return tuple(
            text[marks[2 * g] : marks[2 * g + 1]] if marks[2 * g + 1] >= 0 else ""
            for g in range(self.group_count)
        )

    def _ahead(self, state: _State, pc: int) -> tuple[int, tuple[int, ...]]:
        """From ``pc``, follow ε-edges to the first step (in backtracking order) that can
        still match from ``state``'s position; the pc after it and the slots saved on the
        way (a cache miss: the result depends only on ``pc`` and ``state``)."""
        program = self._program
        kind, out, alt = program.kind, program.out, program.alt
        closure = self._closure
        live = state.live
        entry = pc
        saved: list[int] = []
        while True:
            k = kind[pc]
            if k == _SPLIT:
                pc = out[pc] if closure[out[pc]] & live else alt[pc]
            elif k == _SAVE:
                saved.append(program.slot[pc])
                pc = out[pc]
            elif k == _JUMP:
                pc = out[pc]
            else:
                break  # a CHAR step taking the next character, or MATCH at the end
        step = (out[pc], tuple(saved))
        state.ahead[entry] = step
        return step


def compile_matcher(text: str, original: str | None = None) -> Matcher:
    """A matcher for ``text`` (a whole pattern or one segment of it)."""
    items, groups = _parse(text, text if original is None else original)
    return Matcher(items, groups)


# --- globs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Glob:
    """A compiled pattern: ``match``/``groups`` test whole paths; ``segments`` drive a tree walk."""

    pattern: str
    # The pattern as matched: a leading '/', no trailing '/'.
    normalized: str
    matcher: Matcher = field(repr=False, compare=False)
    # Per path segment: a literal name, a single-segment matcher, or None for '**'.
    # Empty when the pattern cannot be split by segment (a group or brace spans a '/').
    segments: tuple[str | Matcher | None, ...]
    segmentable: bool

    def match(self, path: str) -> bool:
        """Whether the glob matches the whole of ``path``."""
        return self.matcher.match(path)

    def groups(self, path: str) -> tuple[str, ...]:
        """The capture groups' text for ``path`` ('' for one not taken); () if no match."""
        return self.matcher.groups(path) or ()

    @property
    def group_count(self) -> int:
        """How many capture groups (``$1`` …) the pattern has."""
        return self.matcher.group_count

    @property
    def selects_root(self) -> bool:
        """True for the glob '/', the only one matching the root ('*' never matches '')."""
        return self.normalized == "/"

    @property
    def literal_prefix(self) -> str:
        """The directory every match lies under ('/' when the first segment has a wildcard)."""
        parts: list[str] = []
        for seg in self.segments:
            if not isinstance(seg, str):
                break
            parts.append(seg)
        if not self.segmentable:
            head = self.pattern
            cut = min((i for i, ch in enumerate(head) if ch in _SPECIAL), default=len(head))
            head = head[:cut]
            return head[: head.rfind("/")] or "/"
        return "/" + "/".join(parts) if parts else "/"


def compile_glob(pattern: str) -> Glob:
    """Compile a Pachyderm glob; a malformed one raises ``InvalidArgument`` naming the problem."""
    if "\x00" in pattern:
        raise InvalidArgument("invalid glob: NUL character")
    if len(pattern) > MAX_GLOB_CHARS:
        raise InvalidArgument(f"invalid glob: longer than {MAX_GLOB_CHARS} characters")
    text = pattern if pattern.startswith("/") else "/" + pattern
    if len(text) > 1:
        text = text.rstrip("/") or "/"
    matcher = compile_matcher(text, pattern)
    segments: list[str | Matcher | None] = []
    segmentable = True
    if text != "/":
        for seg in _split_segments(text[1:]):
            if seg is None or ("**" in seg and seg != "**"):
                # A group spanning '/' or a '**' inside a name: match whole paths instead.
                segmentable = False
                segments = []
                break
            if seg == "**":
                segments.append(None)
            elif any(ch in _SPECIAL for ch in seg) or "\\" in seg:
                part = compile_matcher(seg, pattern)
                if part.crosses_slash:
                    segmentable = False  # e.g. '/a[!x]b' matches '/a/b' as a whole path
                    segments = []
                    break
                segments.append(part)
            else:
                segments.append(seg)
    return Glob(pattern, text, matcher, tuple(segments), segmentable)


def _split_segments(body: str) -> list[str | None]:
    """Split on '/' outside brackets/braces/parens; [None] if a group spans a '/' (or a
    '/' is escaped, which no segment can hold)."""
    segments: list[str | None] = []
    depth = 0
    in_class = False
    escaped = False
    current = ""
    for ch in body:
        if escaped:
            if ch == "/":
                return [None]
            escaped = False
        elif ch == "\\" and not in_class:
            escaped = True
        elif in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
        elif ch in "{(":
            depth += 1
        elif ch in "})":
            depth -= 1
        elif ch == "/":
            if depth:
                return [None]
            segments.append(current)
            current = ""
            continue
        current += ch
    segments.append(current)
    return segments
