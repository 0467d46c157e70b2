"""A changed text file's diff, line by line, as an HTML table with both sides' line numbers.
Pure: the caller reads the two versions (bounded) and runs this off the event loop.

Bounded on both ends: the reader passes at most ``SIDE_BYTES`` of each version, and at most
``MAX_ROWS`` rows are drawn; what was cut is said on the page, with downloads of both
versions for the rest.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from services.console.markup import Markup, e, join

# Bytes of each version compared; difflib is quadratic at worst, so a cap keeps one page's
# work bounded whatever the file (a line diff of 20 MiB is a download's job).
SIDE_BYTES = 512 * 1024
MAX_ROWS = 5000
CONTEXT = 3


@dataclass(frozen=True)
class Side:
    """One version of the file: its first bytes as text (None: absent or not text)."""

    text: str | None
    cut: bool = False  # only the first SIDE_BYTES were read


def decode(data: bytes, cut: bool) -> str | None:
    """``data`` as text, or None when it is binary (a NUL, or not UTF-8)."""
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A read cut mid-character is still text.
        if cut and exc.start >= len(data) - 3:
            return data[: exc.start].decode("utf-8")
        return None


def _lines(side: Side) -> list[str]:
    if not side.text:
        return []
    lines = side.text.splitlines()
    if side.cut and lines:
        lines.pop()  # the last line may be cut short
    return lines


def render(old: Side, new: Side) -> Markup:
    """The line diff of ``old`` → ``new``: changed runs with ``CONTEXT`` lines around them."""
    a, b = _lines(old), _lines(new)
    rows: list[Markup] = []
    shown = 0
    changed = {"add": 0, "del": 0}
    groups = difflib.SequenceMatcher(None, a, b, autojunk=False).get_grouped_opcodes(CONTEXT)
    truncated = False
    for group in groups:
        first, last = group[0], group[-1]
        header = f"@@ -{first[1] + 1},{last[2] - first[1]} +{first[3] + 1},{last[4] - first[3]} @@"
        rows.append(Markup(f'<tr class="hunk"><td colspan="3">{e(header)}</td></tr>'))
        for tag, i1, i2, j1, j2 in group:
            for kind, sign, number_a, number_b, text in _rows(tag, a, b, i1, i2, j1, j2):
                if shown >= MAX_ROWS:
                    truncated = True
                    break
                shown += 1
                if kind in changed:
                    changed[kind] += 1
                rows.append(
                    Markup(
                        f'<tr class="{kind}"><td class="ln">{e(number_a)}</td>'
                        f'<td class="ln">{e(number_b)}</td>'
                        f'<td class="code"><span class="sign">{sign}</span>{e(text)}</td></tr>'
                    )
                )
        if truncated:
            break
    if not rows:
        return Markup('<p class="empty">No differences in the lines compared.</p>')
    notes = []
    if old.cut or new.cut:
        notes.append(
            f"Only the first {SIDE_BYTES // 1024} KiB of each version were compared; "
            "download both for the rest."
        )
    if truncated:
        notes.append(f"Only the first {MAX_ROWS} lines of the diff are shown.")
    note = join(Markup(f'<p class="note">{e(n)}</p>') for n in notes)
    added, removed = changed["add"], changed["del"]
    summary = f"{added} line{'' if added == 1 else 's'} added, {removed} removed"
    return Markup(
        f'{note}<p class="count">{e(summary)}</p><div class="scroll">'
        f'<table class="linediff" id="linediff"><thead><tr><th scope="col">Old</th>'
        f'<th scope="col">New</th><th scope="col">Line</th></tr></thead>'
        f"<tbody>{join(rows)}</tbody></table></div>"
    )


def _rows(
    tag: str, a: list[str], b: list[str], i1: int, i2: int, j1: int, j2: int
) -> list[tuple[str, str, int | str, int | str, str]]:
    if tag == "equal":
        return [("same", " ", i1 + k + 1, j1 + k + 1, a[i1 + k]) for k in range(i2 - i1)]
    removed = [("del", "-", i + 1, "", a[i]) for i in range(i1, i2)]
    added = [("add", "+", "", j + 1, b[j]) for j in range(j1, j2)]
    return [*removed, *added]
