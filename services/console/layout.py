"""The page frame every console page shares, and the headers that make it safe to serve."""

from __future__ import annotations

from aiohttp import web

from services.console.markup import Markup, e

# Scripts, styles and images come only from the console itself; no inline script or style,
# nothing framed, no plugins: a file name or preview that slipped through escaping still
# could not run.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SAFE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


def crumbs(*parts: Markup) -> Markup:
    sep = Markup(' <span aria-hidden="true">/</span> ')
    return Markup(f'<nav aria-label="Breadcrumb" class="crumbs">{sep.join(parts)}</nav>')


def page(title: str, body: Markup, *, status: int = 200, poll: bool = False) -> web.Response:
    """A whole HTML page; ``poll``: the page shows something running, refresh it on a timer
    too (progress counters move without an event per datum)."""
    live = ' data-poll="2000"' if poll else ""
    document = Markup(
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)} · Tusk console</title>"
        '<link rel="stylesheet" href="/static/console.css">'
        '<script src="/static/console.js" defer></script></head><body>'
        '<header><a class="brand" href="/">Tusk console</a>'
        '<span id="live" class="live" role="status" aria-live="polite"></span></header>'
        f'<main id="main"{live}>{body}</main></body></html>'
    )
    return web.Response(
        text=document, status=status, content_type="text/html", headers=SAFE_HEADERS
    )
