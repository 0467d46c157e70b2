"""``tusk mount DIR [R@REF …]`` and ``tusk unmount DIR|--all`` (pachctl's mount).

The mount runs in the foreground in ``python -m services.mountd`` (the FUSE code
lives with mountd); the CLI hands the terminal to it, so Ctrl-C reaches it
directly and it finishes open commits and unmounts cleanly.
"""

from __future__ import annotations

import os
import sys

import click

from shared.api.names import check_name
from shared.platform.errors import InvalidArgument


def _exec_mountd(*args: str) -> None:
    argv = [sys.executable, "-m", "services.mountd", *args]
    os.execv(sys.executable, argv)


@click.command("mount")
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("positional", nargs=-1)
@click.option(
    "-r",
    "--repos",
    "flagged",
    multiple=True,
    metavar="REPO[@REF][+w]",
    help="A repo to mount (pachctl's form; repeatable, and mixes with the positional form).",
)
def mount(directory: str, positional: tuple[str, ...], flagged: tuple[str, ...]) -> None:
    """Mount repos at DIRECTORY until Ctrl-C: REPO[@REF] read-only, REPO[@BRANCH]+w read-write.

    Without specs every repo's master is mounted read-only. Each appears as DIRECTORY/REPO.
    """
    from shared.api.mount_client import MountSpec  # its HTTP client imports aiohttp

    specs = (*positional, *flagged)
    for text in specs:
        # A bad spec is one line here, before anything is mounted.
        spec = MountSpec.parse(text)
        check_name("repo", spec.repo)
        check_name("mount", spec.name)
    _exec_mountd("mount", directory, *specs)


@click.command("unmount")
@click.argument("directory", required=False, type=click.Path(file_okay=False))
@click.option("--all", "all_", is_flag=True, help="Unmount every Tusk mount.")
def unmount(directory: str | None, all_: bool) -> None:
    """Unmount a Tusk mount (finishing its open commits), or all of them."""
    if not directory and not all_:
        raise InvalidArgument("say which mount: tusk unmount DIR, or tusk unmount --all")
    _exec_mountd("unmount", *([directory] if directory else []), *(["--all"] if all_ else []))


COMMANDS: list[click.Command] = [mount, unmount]
