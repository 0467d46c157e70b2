"""Which module defines each command, so that a command imports only what it needs.

``tusk version`` must not pay for aiohttp, asyncpg or the storage code (they cost
0.1-0.4 s of start-up here), and ``tusk put file`` must not pay for the pipeline
commands. So the root and the verb groups know their commands by name only and import
a command's module when that command is run or its help is shown.

The index is written out by hand; ``tests/test_cli_startup.py`` checks it against the
modules' own ``COMMANDS`` / ``VERB_COMMANDS`` / ``TOP_LEVEL`` lists, so a command added
to a module and not here (or the reverse) fails the tests rather than vanishing.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

# verb -> {noun -> module under tusk.cli}
VERB_NOUNS: dict[str, dict[str, str]] = {
    "create": {
        "repo": "repo_commands",
        "branch": "repo_commands",
        "pipeline": "pipeline_commands",
        "secret": "secret_commands",
    },
    "update": {"pipeline": "pipeline_commands", "secret": "secret_commands"},
    "list": {
        "repo": "repo_commands",
        "branch": "repo_commands",
        "commit": "commit_commands",
        "file": "file_commands",
        "pipeline": "pipeline_commands",
        "job": "pipeline_commands",
        "datum": "pipeline_commands",
        "secret": "secret_commands",
    },
    "inspect": {
        "repo": "repo_commands",
        "branch": "repo_commands",
        "commit": "commit_commands",
        "file": "file_commands",
        "pipeline": "pipeline_commands",
        "job": "pipeline_commands",
        "datum": "pipeline_commands",
        "secret": "secret_commands",
    },
    "delete": {
        "repo": "repo_commands",
        "branch": "repo_commands",
        "commit": "commit_commands",
        "file": "file_commands",
        "pipeline": "pipeline_commands",
        "job": "pipeline_commands",
        "secret": "secret_commands",
    },
    "start": {"commit": "commit_commands", "pipeline": "pipeline_commands"},
    "stop": {"pipeline": "pipeline_commands", "job": "pipeline_commands"},
    "finish": {"commit": "commit_commands"},
    "wait": {"commit": "commit_commands", "job": "pipeline_commands"},
    "restart": {"datum": "pipeline_commands"},
    "subscribe": {"commit": "commit_commands"},
    "squash": {"commit": "commit_commands"},
    "put": {"file": "file_commands"},
    "get": {"file": "file_commands"},
    "glob": {"file": "file_commands"},
    "diff": {"file": "file_commands"},
    "copy": {"file": "file_commands"},
    "merge": {"branch": "lifecycle_commands"},
    "revert": {"commit": "lifecycle_commands"},
}

# command -> module under tusk.cli, for commands without a verb (``tusk logs``, ``tusk up``…)
TOP_LEVEL: dict[str, str] = {
    "logs": "pipeline_commands",
    "mount": "mount_commands",
    "unmount": "mount_commands",
    "up": "cluster_commands",
    "down": "cluster_commands",
    "status": "cluster_commands",
    "version": "cluster_commands",
    "config": "context_commands",
    "image": "image_commands",
    "fsck": "lifecycle_commands",
    "garbage-collect": "lifecycle_commands",
    "gc": "lifecycle_commands",
}


def module_commands(
    module_name: str,
) -> tuple[list[tuple[str, click.Command]], list[click.Command]]:
    """A command module's (verb, noun command) pairs and its top-level commands."""
    module: Any = importlib.import_module(f"tusk.cli.{module_name}")
    pairs: list[tuple[str, click.Command]] = []
    top: list[click.Command] = []
    for attribute in ("COMMANDS", "VERB_COMMANDS", "TOP_LEVEL"):
        for item in getattr(module, attribute, ()):
            if isinstance(item, tuple):
                pairs.append(item)
            else:
                top.append(item)
    return pairs, top


class LazyGroup(click.Group):
    """A group whose commands are named up front and imported when first asked for.

    ``verb`` is None for the root (its lazy commands are a module's top-level ones) and
    the verb's name for a verb group (its lazy commands are that verb's nouns).
    """

    def __init__(
        self, *args: Any, lazy: dict[str, str] | None = None, verb: str | None = None, **kw: Any
    ) -> None:
        super().__init__(*args, **kw)
        self.lazy = dict(lazy or {})
        self.verb = verb

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = self.commands.get(cmd_name)
        if found is not None or cmd_name not in self.lazy:
            return found
        pairs, top = module_commands(self.lazy[cmd_name])
        if self.verb is None:
            candidates = top
        else:
            candidates = [command for verb, command in pairs if verb == self.verb]
        for command in candidates:
            if command.name == cmd_name:
                self.add_command(command)
                return command
        raise LookupError(
            f"tusk.cli.{self.lazy[cmd_name]} defines no command "
            f"{' '.join(filter(None, [self.verb, cmd_name]))!r} (see tusk/cli/command_index.py)"
        )
