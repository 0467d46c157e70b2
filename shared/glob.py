"""Pachyderm's glob patterns over repo paths.

Syntax, as in Pachyderm (gobwas/glob with '/' as the separator):
``*`` any run of characters within one path segment, ``?`` one character
within a segment, ``**`` any run across segments, ``[abc]`` / ``[!abc]`` /
``[a-z]`` character classes, ``{a,b}`` alternatives, and ``( … )`` capture
groups that ``join_on`` / ``group_by`` refer to as ``$1``, ``$2`` …

A pattern matches a whole path: ``/*`` matches every top-level file and
directory, ``/`` matches only the root. A leading '/' is implied. Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.errors import InvalidArgument

_SPECIAL = set("*?[{(")


@dataclass(frozen=True)
class Glob:
    """A compiled pattern: ``regex`` matches whole paths; ``segments`` drive a tree walk."""

    pattern: str
    regex: re.Pattern[str]
    # Per path segment: a literal name, a compiled single-segment regex, or None for '**'.
    # Empty when the pattern cannot be split by segment (a group or brace spans a '/').
    segments: tuple[str | re.Pattern[str] | None, ...]
    segmentable: bool

    def match(self, path: str) -> re.Match[str] | None:
        return self.regex.fullmatch(path)

    def groups(self, path: str) -> tuple[str, ...]:
        m = self.regex.fullmatch(path)
        return tuple(g or "" for g in m.groups()) if m else ()

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
    text = pattern if pattern.startswith("/") else "/" + pattern
    if len(text) > 1:
        text = text.rstrip("/") or "/"
    regex_src = _translate(text, pattern)
    try:
        regex = re.compile(regex_src)
    except re.error as exc:
        raise InvalidArgument(f"invalid glob {pattern!r}: {exc}") from None
    segments: list[str | re.Pattern[str] | None] = []
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
                segments.append(re.compile(_translate(seg, pattern)))
            else:
                segments.append(seg)
    return Glob(pattern, regex, tuple(segments), segmentable)


def _split_segments(body: str) -> list[str | None]:
    """Split on '/' outside brackets/braces/parens; [None] if a group spans a '/'."""
    segments: list[str | None] = []
    depth = 0
    in_class = False
    current = ""
    for ch in body:
        if in_class:
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


def _translate(text: str, original: str) -> str:
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
                raise InvalidArgument(f"invalid glob {original!r}: '[' without a closing ']'")
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
                raise InvalidArgument(f"invalid glob {original!r}: '}}' without '{{'")
            braces -= 1
            out.append(")")
        elif ch == "," and braces:
            out.append("|")
        elif ch == "(":
            parens += 1
            out.append("(")
        elif ch == ")":
            if not parens:
                raise InvalidArgument(f"invalid glob {original!r}: ')' without '('")
            parens -= 1
            out.append(")")
        elif ch == "\\" and i + 1 < n:
            out.append(re.escape(text[i + 1]))
            i += 1
        else:
            out.append(re.escape(ch))
        i += 1
    if braces:
        raise InvalidArgument(f"invalid glob {original!r}: '{{' without '}}'")
    if parens:
        raise InvalidArgument(f"invalid glob {original!r}: '(' without ')'")
    return "".join(out)
