"""``tusk config set context|active-context``, ``config list context``, ``config delete context``.

pachctl's grammar for switching between clusters; the store is ``tusk.contexts``.
"""

from __future__ import annotations

import click

from tusk.cli.output import echo, echo_json, format_table, output_option


@click.group("config")
def config() -> None:
    """Name the clusters this CLI talks to (contexts) and choose the active one."""


@config.group("set")
def config_set() -> None:
    """Create or change a context; choose the active one."""


@config.group("list")
def config_list() -> None:
    """List contexts."""


@config.group("delete")
def config_delete() -> None:
    """Delete a context."""


@config_set.command("context")
@click.argument("name")
@click.option("--url", default=None, help="One base URL for both PFS and PPS (an ingress).")
@click.option("--pfs", "pfs_url", default=None, metavar="URL", help="The PFS URL.")
@click.option("--pps", "pps_url", default=None, metavar="URL", help="The PPS URL.")
@click.option(
    "--cluster-id",
    default=None,
    help="The cluster's id, checked on every response (tusk up's clusters have one).",
)
def set_context(
    name: str,
    url: str | None,
    pfs_url: str | None,
    pps_url: str | None,
    cluster_id: str | None,
) -> None:
    """Create a context, or change the URLs of an existing one."""
    from tusk import contexts  # config.toml and TOML parsing: not for --help

    contexts.set_context(name, url=url, pfs_url=pfs_url, pps_url=pps_url, cluster_id=cluster_id)


@config_set.command("active-context")
@click.argument("name")
def set_active_context(name: str) -> None:
    """Send every following command to this context's cluster."""
    from tusk import contexts  # config.toml and TOML parsing: not for --help

    contexts.set_active(name)


@config_list.command("context")
@output_option
def list_context(output: str) -> None:
    """List contexts; the active one is marked with '*'."""
    from tusk import contexts  # config.toml and TOML parsing: not for --help

    found = contexts.load_contexts()
    if output == "json":
        echo_json(
            [
                {**c.to_json(), "active": name == found.active}
                for name, c in sorted(found.contexts.items())
            ]
        )
        return
    rows = [
        ("*" if name == found.active else "", name, c.pfs_url, c.pps_url)
        for name, c in sorted(found.contexts.items())
    ]
    echo(format_table(("ACTIVE", "NAME", "PFS", "PPS"), rows))


@config_delete.command("context")
@click.argument("name")
def delete_context(name: str) -> None:
    """Forget a context (the active one too: commands then use config.toml)."""
    from tusk import contexts  # config.toml and TOML parsing: not for --help

    contexts.delete_context(name)


COMMANDS: list[click.Command] = [config]
