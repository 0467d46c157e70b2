"""``tusk up [--detach]``, ``tusk down``, ``tusk status`` (embedded mode) and ``tusk version``."""

from __future__ import annotations

import importlib
import importlib.metadata
from types import ModuleType
from typing import Any

import click

from shared.cli.output import echo, echo_json, format_fields, output_option
from shared.errors import FailedPrecondition


def _embedded() -> ModuleType:
    """``shared.embedded``, imported only by the commands that need it (it is heavy)."""
    try:
        return importlib.import_module("shared.embedded")
    except ModuleNotFoundError as exc:
        if exc.name != "shared.embedded":
            raise
        raise FailedPrecondition("embedded mode is not available in this installation") from None


def _call(name: str, *args: Any, **kwargs: Any) -> Any:
    function = getattr(_embedded(), name, None)
    if function is None:
        raise FailedPrecondition(f"embedded mode has no {name}() in this installation")
    return function(*args, **kwargs)


@click.command("up")
@click.option("-d", "--detach", is_flag=True, help="Start in the background and return.")
def up(detach: bool) -> None:
    """Start a local cluster under $TUSK_HOME (databases, services, workers)."""
    _call("up", detach=detach)


@click.command("down")
def down() -> None:
    """Stop the local cluster started by tusk up."""
    _call("down")


@click.command("status")
@output_option
def status(output: str) -> None:
    """Show whether the local cluster runs, and where."""
    result = _call("status")
    data = result.to_json() if hasattr(result, "to_json") else result
    if output == "json":
        echo_json(data)
    elif isinstance(data, dict):
        echo(format_fields([(str(k), _plain(v)) for k, v in data.items()]))
    else:
        echo(str(data))


def _plain(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_plain(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_plain(v) for v in value)
    return "-" if value is None else str(value)


def tusk_version() -> str:
    """The installed package's version."""
    try:
        return importlib.metadata.version("tusk")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@click.command("version")
@output_option
def version(output: str) -> None:
    """Print the version of this tusk."""
    if output == "json":
        echo_json({"version": tusk_version()})
    else:
        echo(f"tusk {tusk_version()}")


COMMANDS: list[click.Command] = [up, down, status, version]
