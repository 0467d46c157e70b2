"""``tusk up [--detach] [--port NAME=PORT] [--any-ports]``, ``tusk down``, ``tusk status`` (embedded mode) and ``tusk version``."""

from __future__ import annotations

import click

from tusk.cli.output import echo, echo_json, output_option


@click.command("up")
@click.option("-d", "--detach", is_flag=True, help="Start in the background and return.")
@click.option(
    "--port",
    "ports",
    multiple=True,
    metavar="NAME=PORT",
    help="Listen on PORT for component NAME (postgres, nats, pfs, pps, scheduler, s3gateway, "
    "console); 0 for any free port. Repeatable.",
)
@click.option(
    "--any-ports",
    is_flag=True,
    help="Put every component not named by --port on a free port the system picks, never "
    "on the defaults (7640-7656): for clusters side by side.",
)
def up(detach: bool, ports: tuple[str, ...], any_ports: bool) -> None:
    """Start a local cluster under $TUSK_HOME (runs until Ctrl-C unless --detach)."""
    from shared.platform.errors import InvalidArgument
    from tusk import embedded  # imported here: only these commands need it
    from tusk.embedded.ports import parse_port_request

    try:
        requested = dict(parse_port_request(text) for text in ports)
    except InvalidArgument as exc:
        raise click.BadParameter(exc.message, param_hint="--port") from None
    embedded.up(detach=detach, echo=click.echo, ports=requested, any_ports=any_ports)


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
