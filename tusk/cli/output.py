"""What the CLI prints: aligned tables like pachctl's, ``-o json``, human sizes and times.

Pure formatting; the commands decide what to print, this module decides how.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

OUTPUT_FORMATS = ("table", "json")
_SIZE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def output_option(func: F) -> F:
    """Add ``-o/--output [table|json]`` to a listing or inspection command."""
    return click.option(
        "-o",
        "--output",
        "output",
        type=click.Choice(OUTPUT_FORMATS),
        default="table",
        show_default=True,
        help="Output format: an aligned table for people, JSON for programs.",
    )(func)


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


def echo_json(value: Any, *, compact: bool = False) -> None:
    """Print a JSON value to stdout (flushed: ``subscribe`` output is read live by pipes)."""
    click.echo(to_json_text(value, compact=compact))
    sys.stdout.flush()
