"""The one place where a failure becomes what the user sees: one stderr line and an exit code.

``TuskError`` → ``error: <message>``, exit 1. A usage mistake (unknown option,
missing argument) → ``error: <click's message> (see 'tusk … --help')``, exit 2.
Ctrl-C → exit 130. Anything else is a bug: one line saying so, exit 1. With
``--debug`` the traceback follows the line.
"""

from __future__ import annotations

import sys
from typing import TextIO

import click

from shared.platform.errors import TuskError

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def error_line(exc: BaseException) -> tuple[str, int]:
    """The single line and the exit code for a failure (pure: no printing)."""
    if isinstance(exc, TuskError):
        return f"error: {exc.message}", EXIT_ERROR
    if isinstance(exc, click.UsageError):
        hint = ""
        if exc.ctx is not None:
            hint = f" (see '{exc.ctx.command_path} --help')"
        return f"error: {_one_line(exc.format_message())}{hint}", exc.exit_code
    if isinstance(exc, click.ClickException):
        return f"error: {_one_line(exc.format_message())}", exc.exit_code
    if isinstance(exc, (KeyboardInterrupt, click.Abort)):
        return "error: interrupted", EXIT_INTERRUPTED
    # aiohttp is looked up, not imported: a command that never loaded it cannot have
    # raised its errors, and importing it here would slow every command's start-up.
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is not None and isinstance(exc, aiohttp.ClientError):
        # The SDK maps refused connections; this is a connection lost half-way through.
        return f"error: connection to the cluster failed: {_describe(exc)}", EXIT_ERROR
    if isinstance(exc, TimeoutError):  # asyncio.TimeoutError is TimeoutError since 3.11
        return "error: timed out waiting for the cluster", EXIT_ERROR
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"error: {exc.filename}: {exc.strerror or _describe(exc)}", EXIT_ERROR
    return (
        f"error: internal error: {_describe(exc)} (rerun with --debug for the traceback)",
        EXIT_ERROR,
    )


def report(exc: BaseException, *, debug: bool = False, stream: TextIO | None = None) -> int:
    """Print the failure (traceback first when debugging) and return the exit code."""
    stream = stream or sys.stderr
    if debug and not isinstance(exc, (click.UsageError, KeyboardInterrupt, click.Abort)):
        import traceback  # only with --debug

        traceback.print_exception(exc, file=stream)
    line, code = error_line(exc)
    print(line, file=stream)
    stream.flush()
    return code


def _describe(exc: BaseException) -> str:
    text = _one_line(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _one_line(text: str) -> str:
    return " ".join(text.split())
