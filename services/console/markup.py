"""Escaping for server-rendered HTML: every value reaches a page through ``e`` (or is
``Markup`` built from escaped parts), so nothing in a repo, file name or file content can
become markup. No template engine: the pages are small and this keeps the rule in one place."""

from __future__ import annotations

import html
from collections.abc import Iterable
from urllib.parse import quote, urlencode


class Markup(str):
    """HTML that is already safe: built only from literals and escaped values."""


def e(value: object) -> Markup:
    """``value`` as HTML text (Markup passes through unchanged)."""
    if isinstance(value, Markup):
        return value
    return Markup(html.escape("" if value is None else str(value), quote=True))


def join(parts: Iterable[Markup]) -> Markup:
    return Markup("".join(parts))


def seg(part: str) -> str:
    """One URL path segment (a repo, commit, pipeline, job or datum name)."""
    return quote(part, safe="")


def url(*segments: str, **query: object) -> str:
    """``/a/b?x=1`` from raw segments (quoted here) and query values (None left out)."""
    path = "/" + "/".join(seg(s) for s in segments)
    params = {k: str(v) for k, v in query.items() if v is not None and v != ""}
    return path + ("?" + urlencode(params) if params else "")


def link(href: str, text: object, *, cls: str = "") -> Markup:
    attr = f' class="{e(cls)}"' if cls else ""
    return Markup(f'<a href="{e(href)}"{attr}>{e(text)}</a>')


def table(
    headers: Iterable[str], rows: Iterable[Iterable[Markup | str | int]], *, id: str = ""
) -> Markup:
    headers = list(headers)
    head = join(Markup(f'<th scope="col">{e(h)}</th>') for h in headers)
    body = join(
        Markup("<tr>" + "".join(f"<td>{e(cell)}</td>" for cell in row) + "</tr>") for row in rows
    )
    if not body:
        body = Markup(f'<tr><td colspan="{len(headers)}" class="empty">none</td></tr>')
    ident = f' id="{e(id)}"' if id else ""
    return Markup(f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
