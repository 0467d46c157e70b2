"""``tusk``: pachctl's grammar (verb, then noun) over the PFS HTTP SDK.

    tusk create repo images
    tusk put file images@master:/cats/ -r -f ./cats
    tusk list commit images@master -o json

Every command is a thin adapter: parse, call ``PfsClient``, print. Failures are
reported in exactly one place (``tusk.cli.errors``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import click

from tusk.cli.command_index import TOP_LEVEL, VERB_NOUNS, LazyGroup
from tusk.cli.errors import EXIT_ERROR, EXIT_INTERRUPTED, report

# Verb groups, in the order ``tusk --help`` lists them.
VERBS: dict[str, str] = {
    "create": "Create a repo, a branch, pipelines or a secret.",
    "update": "Update pipelines or a secret.",
    "list": "List repos, branches, commits, files, pipelines, jobs, datums or secrets.",
    "inspect": "Show one repo, branch, commit, file, pipeline, job, datum or secret.",
    "delete": "Delete a repo, branch, commit, file, pipeline or secret.",
    "start": "Start a commit or a stopped pipeline.",
    "stop": "Stop a pipeline.",
    "finish": "Finish a commit.",
    "wait": "Wait for a commit or a job to finish.",
    "restart": "Run a datum again.",
    "subscribe": "Follow a branch's new commits.",
    "squash": "Squash a commit into its child.",
    "put": "Upload files.",
    "get": "Download files.",
    "glob": "Find files by glob pattern.",
    "diff": "Compare two commits' files.",
    "copy": "Copy files between commits and branches.",
    "merge": "Merge one branch into another.",
    "revert": "Undo a commit with a new commit.",
}


@dataclass
class Invocation:
    """Per-run state the root callback fills in and ``main`` reads after a failure."""

    debug: bool = False


class TuskCli(LazyGroup):
    """The root group: reports every failure as one line (see ``tusk.cli.errors``).

    Commands are imported when run (``tusk.cli.command_index``): start-up stays small.
    """

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        state = Invocation()
        extra.setdefault("obj", state)
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except BrokenPipeError:
            # The reader went away (``tusk get file … | head``): stop quietly.
            _silence_stdout()
            sys.exit(EXIT_ERROR)
        except (click.Abort, KeyboardInterrupt):
            sys.exit(EXIT_INTERRUPTED)
        except Exception as exc:
            sys.exit(report(exc, debug=state.debug or _debug_requested(args)))
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)


def _debug_requested(args: Sequence[str] | None) -> bool:
    """``--debug`` when the failure came before the root callback could record it."""
    argv = sys.argv[1:] if args is None else list(args)
    return "--debug" in argv


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


@click.group(
    "tusk",
    cls=TuskCli,
    lazy=TOP_LEVEL,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option("--debug", is_flag=True, help="Show the full traceback when something fails.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Tusk: version control for data, with pachctl's commands."""
    if isinstance(ctx.obj, Invocation):
        ctx.obj.debug = debug


def _build() -> None:
    for verb, text in VERBS.items():
        cli.add_command(LazyGroup(verb, help=text, lazy=VERB_NOUNS[verb], verb=verb))


_build()


def main() -> None:
    """Console-script entry point."""
    cli.main(prog_name="tusk")
