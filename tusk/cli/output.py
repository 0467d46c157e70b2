"""What the CLI prints: aligned tables like pachctl's, ``-o json|yaml``, ``--raw``, sizes, times.

Pure formatting; the commands decide what to print, this module decides how. A command
asks for ``output == "json"`` and prints its document with ``echo_json``; the document's
rendering (indented JSON, YAML, or ``--raw``: one compact JSON document per line) is chosen
here once, from the options ``output_option`` adds, so every listing and inspect has all three.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import click

F = TypeVar("F", bound=Callable[..., Any])

OUTPUT_FORMATS = ("table", "json", "yaml")
# How a document is rendered: "json" (indented), "yaml", or "raw" (compact, one per line).
DOCUMENT_STYLES = ("json", "yaml", "raw")
_SIZE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")

_document_style: ContextVar[str] = ContextVar("document_style", default="json")


def output_option(func: F) -> F:
    """Add ``-o/--output [table|json|yaml]`` and ``--raw`` to a listing or inspection command.

    The command itself only sees ``table`` or ``json``: yaml and raw are renderings of the
    JSON document, applied by ``echo_json``.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, output: str, raw: bool, **kwargs: Any) -> Any:
        style = "raw" if raw else output
        if style in DOCUMENT_STYLES:
            _document_style.set(style)
            output = "json"
        return func(*args, output=output, **kwargs)

    with_raw = click.option(
        "--raw",
        is_flag=True,
        help="Print the JSON documents as they are, one per line (overrides -o).",
    )(wrapper)
    return cast(
        F,
        click.option(
            "-o",
            "--output",
            "output",
            type=click.Choice(OUTPUT_FORMATS),
            default="table",
            show_default=True,
            help="Output format: an aligned table for people, JSON or YAML for programs.",
        )(with_raw),
    )


def document_style() -> str:
    """How ``echo_json`` renders documents now: json, yaml or raw."""
    return _document_style.get()


def set_document_style(style: str) -> None:
    """Choose how ``echo_json`` renders documents (``output_option`` does this per command)."""
    if style not in DOCUMENT_STYLES:
        raise ValueError(f"unknown document style {style!r}")
    _document_style.set(style)


def human_size(size: int) -> str:
    """``0 B``, ``512 B``, ``1.2 KiB``, ``3.0 GiB`` (powers of 1024, as pachctl prints them)."""
    value = float(size)
    for unit in _SIZE_UNITS:
        if abs(value) < 1024 or unit == _SIZE_UNITS[-1]:
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def parse_time(text: str) -> datetime:
    """Parse a service timestamp (ISO 8601); a naive one is taken as UTC."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def human_duration(seconds: float) -> str:
    """``Less than a second``, ``3 seconds``, ``About a minute``, ``2 hours``… (as Docker says)."""
    if seconds < 1:
        return "Less than a second"
    if seconds < 60:
        n = int(seconds)
        return "1 second" if n == 1 else f"{n} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    days = int(hours / 24)
    if days < 14:
        return f"{days} days"
    if days < 60:
        return f"{days // 7} weeks"
    if days < 365 * 2:
        return f"{days // 30} months"
    return f"{days // 365} years"


def relative_time(text: str | None, now: datetime | None = None) -> str:
    """``3 seconds ago`` for a timestamp, ``-`` for none (e.g. an open commit's finish time)."""
    if not text:
        return "-"
    moment = parse_time(text)
    now = now or datetime.now(UTC)
    seconds = (now - moment).total_seconds()
    if seconds < 0:
        return "in " + human_duration(-seconds).lower()
    return human_duration(seconds) + " ago"


def elapsed(start: str | None, end: str | None, now: datetime | None = None) -> str:
    """How long something ran: ``3 seconds``; ``-`` before it starts; so far while it runs."""
    if not start:
        return "-"
    finish = parse_time(end) if end else (now or datetime.now(UTC))
    return human_duration(max(0.0, (finish - parse_time(start)).total_seconds()))


def format_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns separated by at least three spaces; header first."""
    all_rows = [list(headers), *([str(cell) for cell in row] for row in rows)]
    widths = [max(len(row[i]) for row in all_rows) for i in range(len(headers))]
    lines = []
    for row in all_rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines)


def format_fields(pairs: Sequence[tuple[str, str]]) -> str:
    """``Key: value`` lines, as ``inspect`` prints one record."""
    return "\n".join(f"{key}: {value}".rstrip() for key, value in pairs)


def to_json_text(value: Any, *, compact: bool = False) -> str:
    """JSON as the CLI prints it: indented for ``-o json``, one line for streams."""
    if compact:
        return json.dumps(value, separators=(",", ":"), sort_keys=False)
    return json.dumps(value, indent=2)


def echo(text: str) -> None:
    """Print one result block to stdout."""
    click.echo(text)


def render_document(value: Any, style: str, *, compact: bool = False) -> str:
    """One document as ``style`` prints it.

    ``raw`` prints a listing as one compact document per line (``jq -c`` style, so
    ``while read`` loops work); ``yaml`` streams (``compact``) carry ``---`` between documents.
    """
    if style == "raw":
        if isinstance(value, list):
            return "\n".join(to_json_text(item, compact=True) for item in value)
        return to_json_text(value, compact=True)
    if style == "yaml":
        import yaml  # ~15 ms to import; only -o yaml needs it

        text = yaml.safe_dump(value, sort_keys=False, allow_unicode=True, explicit_start=compact)
        return text.rstrip("\n")
    return to_json_text(value, compact=compact)


def echo_json(value: Any, *, compact: bool = False) -> None:
    """Print a document to stdout (flushed: ``subscribe`` output is read live by pipes)."""
    text = render_document(value, _document_style.get(), compact=compact)
    if text:
        click.echo(text)
    sys.stdout.flush()
