"""How a file is previewed, decided from its name and first bytes. Pure."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import posixpath

from services.console.markup import Markup, e, table

# Bytes read for a preview; the rest is a download away.
PREVIEW_BYTES = 256 * 1024
TABLE_ROWS = 50
# Images shown inline, by extension. SVG is left out: it can carry script.
IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
}


def image_type(path: str) -> str | None:
    return IMAGE_TYPES.get(posixpath.splitext(path)[1].lower())


def _text(data: bytes, truncated: bool) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A preview cut mid-character is still text.
        if truncated and exc.start >= len(data) - 3:
            return data[: exc.start].decode("utf-8")
        return None


def render(path: str, data: bytes, truncated: bool, raw_href: str) -> Markup:
    """The preview of ``path`` whose first bytes are ``data``."""
    if image_type(path):
        return Markup(
            f'<img class="preview" src="{e(raw_href)}" alt="{e(posixpath.basename(path))}">'
        )
    text = _text(data, truncated)
    if text is None:
        return Markup('<p class="empty">Binary file: no preview. Download it instead.</p>')
    note = (
        Markup('<p class="note">Showing the first part of the file.</p>')
        if truncated
        else Markup("")
    )
    ext = posixpath.splitext(path)[1].lower()
    if ext in (".csv", ".tsv"):
        rows = list(csv.reader(io.StringIO(text), delimiter="\t" if ext == ".tsv" else ","))
        if truncated and rows:
            rows.pop()  # the last row may be cut short
        if rows:
            shown = rows[1 : TABLE_ROWS + 1]
            width = max(len(r) for r in [rows[0], *shown])
            cells = [r + [""] * (width - len(r)) for r in shown]
            more = len(rows) - 1 > TABLE_ROWS or truncated
            caption = f"first {len(shown)} rows" + (" (more in the file)" if more else "")
            return Markup(
                f'<p class="note">{e(caption)}</p><div class="scroll">'
                f"{table(rows[0] + [''] * (width - len(rows[0])), cells)}</div>"
            )
    if ext == ".json" and not truncated:
        with contextlib.suppress(ValueError):
            text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    return Markup(f'{note}<pre class="preview">{e(text)}</pre>')
