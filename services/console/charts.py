"""Small pure renderings: a histogram of datum durations (SVG) and a spec diff."""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence

from services.console.markup import Markup, e, join

BINS = 10
BAR_W = 36
CHART_H = 80


def histogram(seconds: Sequence[float]) -> Markup:
    """Datum durations in ``BINS`` equal buckets from 0 to the longest."""
    if not seconds:
        return Markup('<p class="empty">No finished datums yet.</p>')
    top = max(seconds) or 1.0
    counts = [0] * BINS
    for s in seconds:
        counts[min(BINS - 1, math.floor(s / top * BINS))] += 1
    peak = max(counts)
    bars = []
    for i, n in enumerate(counts):
        h = round(n / peak * CHART_H)
        low, high = top * i / BINS, top * (i + 1) / BINS
        bars.append(
            Markup(
                f'<rect x="{i * BAR_W + 2}" y="{CHART_H - h}" width="{BAR_W - 4}" height="{h}">'
                f"<title>{e(n)} datums took {low:.2f}–{high:.2f} s</title></rect>"
            )
        )
    width = BINS * BAR_W
    label = f"Datum durations: {len(seconds)} datums, longest {top:.2f} s"
    return Markup(
        f'<svg class="histogram" role="img" aria-label="{e(label)}" width="{width}" '
        f'height="{CHART_H + 18}" viewBox="0 0 {width} {CHART_H + 18}" '
        f'xmlns="http://www.w3.org/2000/svg">{join(bars)}'
        f'<line x1="0" y1="{CHART_H}" x2="{width}" y2="{CHART_H}" class="axis"/>'
        f'<text x="0" y="{CHART_H + 14}">0 s</text>'
        f'<text x="{width}" y="{CHART_H + 14}" text-anchor="end">{top:.2f} s</text></svg>'
    )


def text_diff(old: str, new: str, old_name: str, new_name: str) -> Markup:
    """A unified diff, each line marked added or removed for colour (and by its sign)."""
    lines = list(
        difflib.unified_diff(old.splitlines(), new.splitlines(), old_name, new_name, lineterm="")
    )
    if not lines:
        return Markup('<p class="empty">No differences.</p>')
    out = []
    for line in lines:
        cls = "add" if line.startswith("+") else "del" if line.startswith("-") else ""
        out.append(Markup(f'<span class="{cls}">{e(line)}</span>\n'))
    return Markup(f'<pre class="diff">{join(out)}</pre>')
