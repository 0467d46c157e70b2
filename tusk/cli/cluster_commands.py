"""``tusk up [--detach]``, ``tusk down``, ``tusk status`` (embedded mode) and ``tusk version``."""

from __future__ import annotations

import click

from tusk.cli.output import echo, echo_json, output_option


@click.command("up")
@click.option("-d", "--detach", is_flag=True, help="Start in the background and return.")
def up(detach: bool) -> None:
    """Start a local cluster under $TUSK_HOME (runs until Ctrl-C unless --detach)."""
    from tusk import embedded  # imported here: only these commands need it

    embedded.up(detach=detach, echo=click.echo)


@click.command("down")
def down() -> None:
    """Stop the local cluster started by tusk up (its data stays)."""
    from tusk import embedded

    embedded.down(echo=click.echo)


@click.command("status")
@output_option
def status(output: str) -> None:
    """Show whether the local cluster runs, and each component's state and address."""
    from tusk import embedded

    result = embedded.status()
    if output == "json":
        echo_json(result.to_json())
    else:
        echo(result.to_text())


def tusk_version() -> str:
    """The installed package's version."""
    import importlib.metadata  # slow to import, and only `tusk version` needs it

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
