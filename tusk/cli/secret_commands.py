"""Secrets, in pachctl's grammar: ``create|update secret -f FILE``, ``list secret``,
``inspect secret NAME`` and ``delete secret NAME``.

FILE is a Kubernetes Secret manifest (JSON or YAML, ``data`` in base64 and/or
``stringData`` in plain text), checked here before anything is sent. Nothing here
prints a value: listings show names, types, keys and times.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from shared.api.pps_models import SecretInfo
from tusk.cli.output import (
    echo,
    echo_json,
    format_fields,
    format_table,
    output_option,
    relative_time,
)
from tusk.cli.pipeline_commands import read_spec_text, run_pps


class SecretNameType(click.ParamType):
    name = "SECRET"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from shared.api.secrets import check_secret_name

        return check_secret_name(str(value))


SECRET = SecretNameType()


def read_manifest(source: str) -> dict[str, Any]:
    """The manifest in ``-f FILE`` (``-`` reads stdin), checked; as the object to send."""
    # Imported here: YAML is only needed by these commands.
    from shared.api.secrets import load_secret_document, parse_secret_manifest

    document = load_secret_document(read_spec_text(source, "a secret manifest"))
    parse_secret_manifest(document)
    return document


def secret_table(secrets: Sequence[SecretInfo]) -> str:
    """NAME TYPE KEYS CREATED."""
    rows = [(s.name, s.type, ", ".join(s.keys), relative_time(s.created)) for s in secrets]
    return format_table(("NAME", "TYPE", "KEYS", "CREATED"), rows)


def secret_fields(info: SecretInfo) -> str:
    """``inspect secret``'s readable form."""
    pairs = [
        ("Name", info.name),
        ("Type", info.type),
        ("Keys", ", ".join(info.keys)),
        ("Created", relative_time(info.created)),
        ("Updated", relative_time(info.updated or info.created)),
    ]
    return format_fields(pairs)


_MANIFEST_FILE = click.option(
    "-f",
    "--file",
    "source",
    required=True,
    metavar="FILE",
    help="A Kubernetes Secret manifest, JSON or YAML ('-' reads stdin).",
)


@click.command("secret")
@_MANIFEST_FILE
def create_secret(source: str) -> None:
    """Store a secret for pipelines (transform.secrets) from a Kubernetes Secret manifest."""
    manifest = read_manifest(source)
    run_pps(lambda pps: pps.create_secret(manifest))


@click.command("secret")
@_MANIFEST_FILE
def update_secret(source: str) -> None:
    """Replace an existing secret's values (pipelines read them from their next datum on)."""
    manifest = read_manifest(source)
    run_pps(lambda pps: pps.create_secret(manifest, update=True))


@click.command("secret")
@output_option
def list_secret(output: str) -> None:
    """List secrets: names, types and keys, never values."""
    secrets = run_pps(lambda pps: pps.list_secrets())
    if output == "json":
        echo_json([s.to_json() for s in secrets])
        return
    echo(secret_table(secrets))


@click.command("secret")
@click.argument("name", type=SECRET)
@output_option
def inspect_secret(name: str, output: str) -> None:
    """Show a secret's type, keys and times (never its values)."""
    info = run_pps(lambda pps: pps.inspect_secret(name))
    if output == "json":
        echo_json(info.to_json())
    else:
        echo(secret_fields(info))


@click.command("secret")
@click.argument("name", type=SECRET)
def delete_secret(name: str) -> None:
    """Delete a secret that no pipeline uses."""
    run_pps(lambda pps: pps.delete_secret(name))


COMMANDS: list[tuple[str, click.Command]] = [
    ("create", create_secret),
    ("update", update_secret),
    ("list", list_secret),
    ("inspect", inspect_secret),
    ("delete", delete_secret),
]
